"""Bytewax dataflow definitions: sources, the shared pipeline, and runnable flows."""

from cdp_triggers.compiled import install as _install_compiled

_install_compiled()  # the hot modules from their Cython build when it matches the source
