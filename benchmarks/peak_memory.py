"""Peak-memory measurement shared by the benchmark scripts: reset and read the peak for one row.

On CUDA: ``torch.cuda`` peak allocated memory. On CPU: the process's peak RSS (``VmHWM``), reset per row through
``/proc/self/clear_refs`` when the kernel allows it (``reset_peak`` returns False otherwise: the reading is then the
lifetime peak), falling back to ``getrusage`` where ``/proc`` is missing.
"""
from __future__ import annotations

import resource

import torch


def reset_peak(device: str) -> bool:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib(device: str) -> float:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2 ** 20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
