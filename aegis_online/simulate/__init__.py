"""Simulated experts and traffic that show the ensemble adapting. Sits above the engine; nothing imports it."""
