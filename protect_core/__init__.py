"""StyleCloak's host-agnostic engine: protect artwork from style mimicry, purify, and test mimicry.

Public entry points: :class:`protect_core.host.HostModel` (the one host seam), the blocks under
:mod:`protect_core.cloak`, and the command line in :mod:`protect_core.cli`.
"""
__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` for ``package`` that imports each name of ``exports`` (name -> submodule) on first
    use, so importing a block's package (e.g. for its ``cli``) does not import torch."""
    import importlib

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
