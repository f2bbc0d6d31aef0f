"""Tests of the guard backends; a package so that its conftest never shares the module name ``conftest``."""
