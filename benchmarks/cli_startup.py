"""Start-up time of the command line: ``stylecloak --help``, ``stylecloak cloak --help`` and ``stylecloak info``
as whole processes, alternated (A, B, C, A, B, C, ...) so that machine load hits each alike; prints min / median /
max seconds per command.

    python benchmarks/cli_startup.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {"stylecloak --help": ["--help"], "stylecloak cloak --help": ["cloak", "--help"],
            "stylecloak info": ["info"], "python -c 'import torch' (reference)": None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.repeats):
        for name, argv in COMMANDS.items():
            cmd = [sys.executable, "-c", "import torch"] if argv is None else [sys.executable, "-m", "protect_core",
                                                                               *argv]
            t0 = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    print(f"| command | min s | median s | max s |  ({args.repeats} runs each, alternated)")
    print("|---|---|---|---|")
    for name, ts in times.items():
        print(f"| `{name}` | {min(ts):.2f} | {statistics.median(ts):.2f} | {max(ts):.2f} |")


if __name__ == "__main__":
    main()
