"""Keyed state models (per customer) and the Redis customer profile store."""
