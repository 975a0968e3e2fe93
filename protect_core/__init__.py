"""StyleCloak's host-agnostic engine: protect artwork from style mimicry, purify, and test mimicry.

Public entry points: :class:`protect_core.host.HostModel` (the one host seam), the blocks under
:mod:`protect_core.cloak`, and the command line in :mod:`protect_core.cli`.
"""
__version__ = "0.1.0"
