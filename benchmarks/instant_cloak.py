"""One-pass cloak (method ``instant``) against the iterative default (glaze), side by side: time and objective.

    PYTHONPATH=. python benchmarks/instant_cloak.py --world atelier --images 8 --pairs 3 --stem instant_atelier
    PYTHONPATH=. python benchmarks/instant_cloak.py --world toy --big 512 --big-pairs 1 --stem instant_toy

Speed: the same images are cloaked by ``instant`` (the world's shipped generator, found by its probe) and by glaze
at the default intensity (100 Adam steps + its 25-step img2img target), through the same runner, alternating
(A B, B A, ...) in one process; "ratio" is the median of per-pair ratios (glaze / instant). ``--big N`` adds one
N x N image (examples/artwork.png resized) timed the same way (``--big-pairs`` pairs; the iterative run at 512 px
takes minutes on a CPU). Model loading and process start-up are not included (both pay them alike).

Protection proxy, on the world's held-out and dev artists (never trained on by the generator): the objective the
generator was trained against (its method's own loss, prepared on each clean image alone, seed 0) for the clean
image, for random sign noise of the same L-inf budget (finalised like a cloak: 8-bit levels, the same perceptual
budget), for the one-pass cloak and for that method's own iterative loop at the same budgets (the generator's eps
and the instant method's perceptual budget, 0.07 by default). "kept" = the one-pass
cloak's drop of the objective as a share of the iterative loop's drop. Whether the mimic is stopped is measured by
``benchmarks/world_fidelity.py --methods glaze,instant`` (protection success by both judges); this table is only
the optimiser's view.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", default="atelier")
    ap.add_argument("--images", type=int, default=8, help="images per unseen artist (objective table; 0: none)")
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs of the native-size timing (0: no timing)")
    ap.add_argument("--big", type=int, default=0, help="also time one BIG x BIG image (0: no)")
    ap.add_argument("--big-pairs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generator", default="auto", help="generator file (default: the one found for the world's "
                    "model)")
    ap.add_argument("--stem", default=None, help="write benchmarks/results/STEM.md and .json")
    return ap.parse_args(argv)


def _settings(name, generator):
    from protect_core.cloak.base import get_method
    from protect_core.cloak.presets import settings_for

    opts = {"generator": generator} if name == "instant" else {}
    return settings_for(get_method(name), "default", options=opts)


def _timed(host, images, settings) -> float:
    from protect_core.cloak.runner import cloak_images

    t = time.perf_counter()
    cloak_images(host, images, settings)
    return time.perf_counter() - t


def ab(host, images, gen, pairs):
    """Per-image seconds of instant and glaze, alternating; (instant median, glaze median, ratio median)."""
    a_s, b_s, ratios = [], [], []
    for k in range(pairs):
        order = ("instant", "glaze") if k % 2 == 0 else ("glaze", "instant")
        got = {n: _timed(host, images, _settings(n, gen)) / len(images) for n in order}
        a_s.append(got["instant"])
        b_s.append(got["glaze"])
        ratios.append(got["glaze"] / got["instant"])
    return statistics.median(a_s), statistics.median(b_s), statistics.median(ratios)


def objective_table(host, world, n, gen):
    """Per unseen artist: the generator's objective (its method's own loss, prepared on each clean image alone with
    seed 0) for clean, noise, instant and the iterative method at the same eps; PSNR, SSIM, perceptual distance."""
    from protect_core.cloak.base import get_method
    from protect_core.cloak.optimize import finalize
    from protect_core.cloak.presets import settings_for
    from protect_core.cloak.runner import cloak_images
    from protect_core.generator.store import read_meta
    from protect_core.metrics import image_stats, perceptual_distance

    meta = read_meta(gen)
    name, eps = meta["objective"], float(meta["eps"])
    st = world.styles()
    size = int(world.config()["size"])
    unseen = list(getattr(st, "UNSEEN", None) or [st.HELD_OUT])
    # both at the instant method's budgets: the generator's eps and the instant default's perceptual budget
    s_inst = settings_for(get_method("instant"), "default", options={"generator": gen}, eps=eps)
    s_iter = settings_for(get_method(name), "default", eps=eps, perceptual_budget=s_inst.perceptual_budget)
    rows = []
    for artist in unseen:
        clean = st.render(artist, n, size, seed=77)
        g = torch.Generator().manual_seed(5)
        noise = eps * (torch.randint(0, 2, clean.shape, generator=g).float() * 2 - 1)
        versions = {"clean": clean, "noise": finalize(clean, noise, eps, s_inst.perceptual_budget)[0]}
        for key, s in (("instant", s_inst), (name, s_iter)):
            versions[key] = torch.stack([r.image for r in cloak_images(host, list(clean), s)])
        values = {k: [] for k in versions}
        with host.borrowed(), torch.no_grad():
            for i in range(n):
                m = get_method(name)
                m.prepare(host, clean[i:i + 1], s_iter, torch.Generator().manual_seed(0))
                for k, v in versions.items():
                    values[k].append(float(m.loss(host, v[i:i + 1], 0, torch.Generator().manual_seed(1))))
        base = torch.tensor(values["clean"])
        row = {"artist": artist, "objective": name}
        for k in ("noise", "instant", name):
            st_ = image_stats(clean, versions[k])
            drop = (base - torch.tensor(values[k])) / base.abs()
            row["iterative" if k == name else k] = {
                "drop": float(drop.mean()), "psnr": statistics.mean(r["psnr"] for r in st_),
                "ssim": statistics.mean(r["ssim"] for r in st_),
                "perceptual": float(perceptual_distance(versions[k], clean).mean())}
        it = row["iterative"]["drop"]
        row["kept"] = row["instant"]["drop"] / it if it > 0 else float("nan")
        rows.append(row)
    return rows


def markdown(res) -> str:
    L = [f"World `{res['world']}`, {res['threads']} threads, {res['machine']}; generator `{res['generator']}`.", ""]
    sp = res["speed"]
    if sp:
        L += ["| image | instant (s/image) | glaze default (s/image) | glaze / instant |", "|---|---|---|---|"]
    for row in sp:
        L.append(f"| {row['what']} | {row['instant']:.3f} | {row['glaze']:.2f} | {row['ratio']:.0f}x |")
    if not res["objective"]:
        return "\n".join(L) + "\n"
    name = res["objective"][0]["objective"]
    L += ["", f"The generator's objective ({name}'s own loss; drop = share of the clean image's loss removed, higher "
          "= stronger), PSNR (dB) and perceptual distance; iterative = the method's own loop at the same budget:", "",
          "| artist | noise: drop / PSNR | instant: drop / PSNR / perc. | iterative: drop / PSNR / perc. | kept |",
          "|---|---|---|---|---|"]
    for r in res["objective"]:
        L.append(f"| {r['artist']} | {r['noise']['drop']:.3f} / {r['noise']['psnr']:.1f} | "
                 f"{r['instant']['drop']:.3f} / {r['instant']['psnr']:.1f} / {r['instant']['perceptual']:.3f} | "
                 f"{r['iterative']['drop']:.3f} / {r['iterative']['psnr']:.1f} / "
                 f"{r['iterative']['perceptual']:.3f} | "
                 f"{100 * r['kept']:.0f}% |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    import platform

    from protect_core.worlds import get_world

    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    world = get_world(a.world)
    host = world.build_host()
    gen = a.generator
    if gen == "auto":
        from protect_core.generator.store import find_for_host

        with host.borrowed():
            gen = str(find_for_host(host))
    st, size = world.styles(), int(world.config()["size"])
    native = list(torch.cat([st.render(x, 2, size, seed=91) for x in st.TRAINED[:2]]))
    speed = []
    if a.pairs:
        i, g, r = ab(host, native, gen, a.pairs)
        speed.append({"what": f"{len(native)} x {size} px", "instant": i, "glaze": g, "ratio": r})
        print(speed[-1], flush=True)
    if a.big:
        from PIL import Image
        import numpy as np

        img = Image.open(ROOT / "examples" / "artwork.png").convert("RGB").resize((a.big, a.big), Image.BICUBIC)
        big = [torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()]
        i, g, r = ab(host, big, gen, a.big_pairs)
        speed.append({"what": f"1 x {a.big} px (examples/artwork.png resized)", "instant": i, "glaze": g, "ratio": r})
        print(speed[-1], flush=True)
    rows = objective_table(host, world, a.images, gen) if a.images else []
    shown = str(Path(gen).resolve().relative_to(ROOT)) if Path(gen).resolve().is_relative_to(ROOT) else gen
    res = {"world": a.world, "threads": a.threads, "machine": f"{platform.machine()}, {torch.get_num_threads()} "
           "threads (the 2-core development machine unless said otherwise)", "generator": shown,
           "speed": speed, "objective": rows}
    text = markdown(res)
    print(text)
    if a.stem:
        out = ROOT / "benchmarks" / "results"
        (out / f"{a.stem}.md").write_text(text)
        (out / f"{a.stem}.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
