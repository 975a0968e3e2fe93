"""Purify block (the attacker's toolbox): IMPRESS, DiffPure, GrIDPure, noisy upscaling and classic filters.

``purify(host, images01, chain, seed, progress, memory="auto")`` runs any chain of registered purifiers as one
step; see :mod:`protect_core.purify.base` for the contract, :mod:`protect_core.purify.methods` for the purifiers
and :mod:`protect_core.memory_job` for memory modes (shared with the mimicry test).
"""
from .. import lazy_exports

_EXPORTS = {
    "Purifier": ".base",
    "available_purifiers": ".base",
    "describe_purifiers": ".base",
    "get_purifier": ".base",
    "purify": ".base",
    "register": ".base",
}
__all__ = ["Purifier", "available_purifiers", "describe_purifiers", "get_purifier", "purify", "register"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
