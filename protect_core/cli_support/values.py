"""Argparse value types that refuse what cannot work (NaN, inf, out-of-range numbers, bad device names) at parse
time, with one line that names the flag; and the device check made before a model is loaded.

Nothing here imports torch at module level: building the parser must stay fast (``stylecloak --help``).
"""
from __future__ import annotations

import argparse
import math
import re

from ..errors import StyleCloakError

SEED_MAX = 2 ** 63 - 1
_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")


def _bound_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}"


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False):
    """An argparse ``type``: a finite float, optionally within bounds (NaN and inf are always refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (lo is not None and (value < lo or (lo_open and value == lo))) or \
                (hi is not None and (value > hi or (hi_open and value == hi))):
            raise argparse.ArgumentTypeError(f"must be {_bound_text(lo, hi, lo_open, hi_open)}, got {text!r}")
        return value
    parse.__name__ = "number"
    return parse


def int_range(lo: int | None = None, hi: int | None = None, what: str = "a whole number"):
    """An argparse ``type``: an integer within ``[lo, hi]`` (``1e3`` and ``2.0`` are refused: say 1000, 2)."""
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                bound = f">= {lo}"
            elif lo is None:
                bound = f"<= {hi}"
            else:
                bound = f"from {lo} to {hi}"
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, got {text!r}")
        return value
    parse.__name__ = "integer"
    return parse


positive_int = int_range(1)
seed_int = int_range(0, SEED_MAX)


def device_name(text: str) -> str:
    """An argparse ``type``: a device name torch understands (availability is checked by :func:`check_device`)."""
    name = str(text).strip().lower()
    if not _DEVICE.match(name):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N, mps or xpu")
    return name


def check_device(name: str) -> None:
    """Refuse a device this machine does not have, with what to use instead (before any model work)."""
    import torch

    kind, _, index = name.partition(":")
    if kind == "cpu":
        return
    if kind == "cuda":
        if torch.version.cuda is None:
            raise StyleCloakError(f"--device {name}: this torch build ({torch.__version__}) has no CUDA support; "
                                  "use --device cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise StyleCloakError(f"--device {name}: no CUDA GPU is visible on this machine; use --device cpu")
        if index and int(index) >= count:
            raise StyleCloakError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                                  f"cuda:{count - 1}")
        return
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise StyleCloakError(f"--device {name}: Apple's MPS is not available on this machine; use --device cpu")
        return
    xpu = getattr(torch, "xpu", None)
    if xpu is None or not xpu.is_available():
        raise StyleCloakError(f"--device {name}: no Intel XPU is available on this machine; use --device cpu")
    if index and int(index) >= xpu.device_count():
        raise StyleCloakError(f"--device {name}: this machine has {xpu.device_count()} XPU device(s)")
