"""Keyed state models (per customer) and the Redis customer profile store."""

from cdp_triggers.compiled import install as _install_compiled

_install_compiled()  # the hot modules from their Cython build when it matches the source
