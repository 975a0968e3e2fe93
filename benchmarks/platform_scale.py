"""How `stylecloak batch` scales: images/s per worker measured here, and 100,000 images on 1, 8 and 64 GPUs on paper.

    PYTHONPATH=. python benchmarks/platform_scale.py [--images 8] [--size 32] [--repeats 2] [--method glaze]

Measured on this machine (shipped 32 px toy model, the method at its default intensity, ``--batch-size 1``), three
ways side by side, alternated in every repeat (A, B, C, A, B, C): the same images cloaked in this process without
Ray (:func:`stylecloak_platform.work.cloak_group`, the engine alone), and as a ``stylecloak batch`` job with 1 and
with 2 local workers (one CPU each). Per run: the steady rate (images between the first and the last manifest
record over that time), the start (Ray and the actors: from the call to the first record, minus one image), the
driver's capacity (images it records per second of its own busy time). Ratios: Ray 1 worker / no Ray (the
per-image overhead of scheduling, I/O and the manifest) and 2 workers / 1 worker (scaling on this machine's two
cores: CPU-bound and shared with anything else running, so it says little about GPUs, where workers do not share).

On paper: seconds per image on a GPU from the README's H100 per-step figures (SD 1.5, 512 px, fp32, ``fast``):
glaze = its default steps x (cloak s/step) + its img2img target (25 steps at strength 0.5 = 13 UNet calls at the
DiffPure row's s/step); then 100,000 images at min(GPUs x per-GPU rate x the measured Ray / engine ratio, the
driver's capacity), plus one model load per worker (not measured on a GPU here: an assumption, stated). It is an
estimate, labelled so.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: README, "Speed and memory at real scale (H100 ...)": SD 1.5 fp32 fast, 512 px, seconds per step
H100 = {"glaze": 0.039, "mist": 0.156, "styleprotect": 0.242, "diffpure": 0.041}
SD15_LOAD_S = 10.0   # assumption: loading SD 1.5 from a local safetensors file onto a GPU, per worker


def gallery(folder: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")).save(folder / f"art{i:03d}.png")
    return folder


def steady(manifest: Path, t_call: float) -> tuple[float, float]:
    times = sorted(json.loads(x)["time"] for x in manifest.read_text().splitlines() if '"done"' in x)
    rate = (len(times) - 1) / max(1e-9, times[-1] - times[0])
    return rate, times[0] - t_call - 1 / rate


def run_ray(src: Path, dst: Path, workers: int, method: str) -> dict:
    from stylecloak_platform.batch_cli import cloak_gallery

    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.time()
    s = cloak_gallery(src, dst, method=method, batch_size=1, workers=workers, quiet=True)
    wall = time.time() - t0
    rate, start = steady(dst / "stylecloak-manifest.jsonl", t0)
    assert s["written"] == s["inputs"], s
    return {"wall": wall, "rate": rate, "start": start, "driver_rate": s["written"] / max(1e-9, s["driver_seconds"])}


def run_local(host, src: Path, method: str) -> dict:
    from protect_core.cloak.base import CloakSettings, get_method
    from protect_core.cloak.presets import settings_for
    from stylecloak_platform.work import cloak_group

    settings = settings_for(get_method(method), "default", CloakSettings(method=method, seed=0))
    files = sorted(src.iterdir())
    times, t0 = [], time.time()
    for f in files:
        cloak_group(host, [{"key": f.name, "data": f.read_bytes(), "suffix": ".png"}], settings, batch_size=1)
        times.append(time.time())
    return {"wall": times[-1] - t0, "rate": (len(times) - 1) / (times[-1] - times[0]), "start": 0.0,
            "driver_rate": float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--method", default="glaze")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import ray  # noqa: F401  (the extra must be installed)
    import torch

    from protect_core.backends.loading import load_host
    from protect_core.cloak.base import get_method

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    src = gallery(tmp / "src", a.images, a.size)
    t0 = time.time()
    host = load_host("toy")
    load_s = time.time() - t0
    rows: dict[str, list[dict]] = {"no Ray (engine alone)": [], "Ray, 1 worker": [], "Ray, 2 workers": []}
    for _ in range(a.repeats):
        rows["no Ray (engine alone)"].append(run_local(host, src, a.method))
        rows["Ray, 1 worker"].append(run_ray(src, tmp / "r1", 1, a.method))
        rows["Ray, 2 workers"].append(run_ray(src, tmp / "r2", 2, a.method))
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "rate", "start", "driver_rate")} for k, v in rows.items()}
    over = med["Ray, 1 worker"]["rate"] / med["no Ray (engine alone)"]["rate"]
    scale = med["Ray, 2 workers"]["rate"] / med["Ray, 1 worker"]["rate"]
    pairs_over = [r1["rate"] / r0["rate"] for r0, r1 in zip(rows["no Ray (engine alone)"], rows["Ray, 1 worker"])]
    pairs_scale = [r2["rate"] / r1["rate"] for r1, r2 in zip(rows["Ray, 1 worker"], rows["Ray, 2 workers"])]
    print(f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, ray {ray.__version__}; {a.images} images "
          f"of {a.size}x{a.size} px, method {a.method} (default intensity), toy model load {load_s:.1f} s, "
          f"{a.repeats} alternated repeats (medians)\n")
    print("| run | wall s | steady images/s | start s (Ray + actors + model) | driver capacity, images/s |")
    print("|---|---|---|---|---|")
    for k, m in med.items():
        cap = "" if m["driver_rate"] != m["driver_rate"] else f"{m['driver_rate']:.0f}"
        print(f"| {k} | {m['wall']:.1f} | {m['rate']:.3f} | {m['start']:.1f} | {cap} |")
    print(f"\nRay 1 worker / engine alone, steady rate: {over:.2f} (pairs: {', '.join(f'{x:.2f}' for x in pairs_over)})"
          f"; 2 workers / 1 worker: {scale:.2f} (pairs: {', '.join(f'{x:.2f}' for x in pairs_scale)}; ideal 2.00)")
    m = get_method(a.method)
    steps = int(m.defaults.get("steps", 100))
    per_image = steps * H100.get(a.method, H100["glaze"]) + (13 * H100["diffpure"] if a.method == "glaze" else 0)
    eff = min(1.0, over)
    cap = min(med["Ray, 1 worker"]["driver_rate"], med["Ray, 2 workers"]["driver_rate"])
    print(f"\nOn paper (estimate): {a.method} default = {steps} steps; at the README's H100 SD 1.5 512 px fp32 figures "
          f"that is {per_image:.1f} s per image per GPU; each GPU's worker is independent, so the per-worker "
          f"efficiency is the measured Ray / engine ratio ({eff:.2f}); one driver records at most {cap:.0f} images/s "
          f"here (its own measured time: reading, hashing, writing, manifest); model load {SD15_LOAD_S:.0f} s per "
          "worker (assumed)\n")
    print("| GPUs (1 worker each) | 100,000 images | images/hour | limited by |")
    print("|---|---|---|---|")
    for g in (1, 8, 64):
        rate = min(g * eff / per_image, cap)
        seconds = 100_000 / rate + SD15_LOAD_S
        print(f"| {g} | {seconds / 3600:.1f} h | {3600 * rate:,.0f} | {'the driver' if rate == cap else 'GPU time'} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "medians": med, "overhead": over, "scaling": scale,
                                            "per_image_gpu_s": per_image, "efficiency": eff}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
