"""Outputs of the engine: ClickHouse (schema, backends, Bytewax sink) and the sends topic."""

from cdp_triggers.compiled import install as _install_compiled

_install_compiled()  # the hot modules from their Cython build when it matches the source
