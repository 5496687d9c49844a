"""Trigger and policy configs (YAML) and the one schema that validates them."""
