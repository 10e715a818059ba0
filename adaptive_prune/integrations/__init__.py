"""Integrations with serving engines; each one imports its engine lazily."""
