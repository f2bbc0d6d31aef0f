"""Deployment tooling: the Helm chart's values schema (generated from the service config) and its offline checks."""
