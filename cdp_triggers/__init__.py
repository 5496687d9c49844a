"""cdp-triggers: trigger and service communications engine of a retail CDP.

Core shared modules live here (event model, clock, ids, settings, CLI); the product's
layout puts dataflows in ``flows``, logic in ``operators``, keyed state and the profile
store in ``state``, outputs in ``sinks`` and trigger configs in ``config``.
"""

from cdp_triggers.compiled import install as _install_compiled

__version__ = "0.1.0"

_install_compiled()  # the hot modules from their Cython build when it matches the source
