"""Our loop against a peer's own public code, side by side: seconds per image step, same model, images and budget.

    PYTHONPATH=. python benchmarks/peer_side_by_side.py --peer caat --checkout ~/CAAT --python ~/peers/bin/python
    PYTHONPATH=. python benchmarks/peer_side_by_side.py --peer aspl --checkout ~/Anti-DreamBooth --steps 2,6
    PYTHONPATH=. python benchmarks/peer_side_by_side.py --list

The user points the script at a checkout of the peer's repository (nothing of it is shipped, copied or imported
here): the peer's script runs as its README says, as a separate process in the interpreter ``--python`` (which
needs what the peer's requirements.txt lists: accelerate, torchvision, ...), on a diffusers copy of the world's
model (``--world``, default toy) and PNGs of that world's held-out art written to a temporary folder. Ours runs as
``stylecloak cloak`` on the same folder with the method's defaults, which were converted from the peer's
(``[-1, 1]`` budgets halved), at the same number of image steps. A script that hard-codes a CUDA device
(Anti-DreamBooth's ASPL) runs from a copy in the temporary folder with only that device string set to the CPU
(the table counts the replacements); nothing else of the peer's code is touched.

Per-step cost = (T(n2) - T(n1)) / (image steps of n2 - image steps of n1), T = the wall time of the whole command,
so start-up, model loading, one-time preparation and saving cancel out; ``n1,n2`` come from ``--steps`` in the
peer's own unit (CAAT, FSMG: image steps; ASPL: rounds of 3 surrogate + 6 image steps, so 6 image steps each).
The four runs of a pair alternate (peer n1, ours n1, ours n2, peer n2; the next pair reversed); the table gives
medians over ``--pairs`` pairs and "ours / peer" is the median of per-pair ratios (< 1: we are faster). Both get
``--threads`` threads (OMP/MKL variables and torch's own); the peer runs on CPU in float32 (no mixed precision),
as ours does.

What each step does is the peer's business: e.g. Anti-DreamBooth's ASPL fine-tunes the whole UNet and text
encoder in its surrogate steps where ours trains the attention layers (``option subset``); the table compares the
loops as each project ships them, on the same inputs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a painting in sks style"


@dataclass
class Peer:
    """How to run one peer's public script: its path in the checkout, its arguments, its step unit, our method."""

    script: str
    args: Callable[[dict, int], list[str]]   # (paths: model/data/out/size, n in the peer's unit) -> arguments
    image_steps: Callable[[int], int]         # image steps n of the peer's unit make
    method: str                               # our method with the same loop
    source: str
    cpu_fixups: tuple = ()                    # (text, replacement) for a device the script hard-codes


def _caat(p, n):
    return ["--pretrained_model_name_or_path", p["model"], "--instance_data_dir", p["data"], "--output_dir", p["out"],
            "--instance_prompt", PROMPT, "--resolution", str(p["size"]), "--learning_rate", "1e-5",
            "--lr_warmup_steps", "0", "--max_train_steps", str(n), "--checkpointing_steps", str(n), "--hflip",
            "--alpha", "5e-3", "--eps", "0.1", "--dataloader_num_workers", "0", "--seed", "0"]


def _aspl(p, n):
    return ["--pretrained_model_name_or_path", p["model"], "--instance_data_dir_for_train", p["data"],
            "--instance_data_dir_for_adversarial", p["data"], "--instance_prompt", PROMPT,
            "--with_prior_preservation", "--class_data_dir", p["class_data"], "--class_prompt", "a painting",
            "--num_class_images", str(p["class_images"]), "--prior_loss_weight", "1.0",
            "--output_dir", p["out"], "--center_crop", "--resolution", str(p["size"]), "--train_text_encoder",
            "--train_batch_size", "1", "--max_train_steps", str(n), "--max_f_train_steps", "3",
            "--max_adv_train_steps", "6", "--checkpointing_iterations", str(n), "--learning_rate", "5e-7",
            "--pgd_alpha", "5e-3", "--pgd_eps", "5e-2", "--seed", "0"]


def _fsmg(p, n):
    return ["--pretrained_model_name_or_path", p["model"], "--instance_data_dir", p["data"], "--output_dir", p["out"],
            "--instance_prompt", PROMPT, "--resolution", str(p["size"]), "--max_train_steps", str(n),
            "--checkpointing_steps", str(n), "--center_crop", "--pgd_alpha", "5e-3", "--pgd_eps", "5e-2",
            "--train_text_encoder", "--seed", "0"]


PEERS = {
    "caat": Peer("CAAT.py", _caat, lambda n: n, "caat", "CO2-cityao/CAAT (scripts/train_CAAT.sh)"),
    "aspl": Peer("attacks/aspl.py", _aspl, lambda n: 6 * n, "aspl",
                 "VinAIResearch/Anti-DreamBooth (scripts/attack_with_aspl.sh)",
                 cpu_fixups=(('torch.device("cuda")', 'torch.device("cpu")'),
                             ('revision=args.revision\n    ).cuda()', 'revision=args.revision\n    ).cpu()'))),
    "fsmg": Peer("attacks/fsmg.py", _fsmg, lambda n: n, "fsmg",
                 "VinAIResearch/Anti-DreamBooth (scripts/attack_with_fsmg.sh, on the world's model itself)"),
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer", choices=sorted(PEERS))
    ap.add_argument("--checkout", type=Path, help="the peer's repository, checked out by the user")
    ap.add_argument("--python", default=sys.executable, help="interpreter with the peer's requirements")
    ap.add_argument("--world", default="toy")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", default=None, help="n1,n2 in the peer's unit (default 4,12; aspl 1,3)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    ap.add_argument("--stem", default=None, help="write benchmarks/results/STEM.md and .json")
    ap.add_argument("--list", action="store_true", help="list the peers this script knows and exit")
    return ap.parse_args(argv)


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               PYTHONPATH=str(ROOT))
    return env


def _timed(cmd: list[str], env: dict, cwd: Path, timeout: float, log: Path) -> float:
    t = time.perf_counter()
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        r = subprocess.run(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if r.returncode:
        raise SystemExit(f"run failed (exit {r.returncode}); its output is in {log}")
    return time.perf_counter() - t


def prepare(world_name: str, images: int, work: Path) -> dict:
    """A diffusers copy of the world's model and PNGs of its held-out art; returns the paths and the size."""
    from protect_core.images import save_image
    from protect_core.worlds import get_world

    world = get_world(world_name)
    model = work / "model"
    shutil.copytree(world.asset_dir, model, ignore=shutil.ignore_patterns("classifier.*", "generator.*", "*.json.log",
                                                                       "train_log.json"))
    st, size = world.styles(), int(world.config()["size"])
    artist = (list(getattr(st, "UNSEEN", None) or [st.HELD_OUT]))[0]
    data = work / "art"
    data.mkdir()
    for i, img in enumerate(st.render(artist, images, size, seed=123)):
        save_image(data / f"{artist}_{i:02d}.png", img)
    klass = work / "class"   # ASPL's prior-preservation images: renders of the world's trained artists
    klass.mkdir()
    trained = list(getattr(st, "TRAINED", None) or [a for a in st.STYLES if a != artist])
    for i in range(images):
        save_image(klass / f"class_{i:02d}.png", st.render(trained[i % len(trained)], 1, size, seed=456 + i)[0])
    return {"model": str(model), "data": str(data), "size": size, "artist": artist, "class_data": str(klass),
            "class_images": images}


def run(a) -> dict:
    peer = PEERS[a.peer]
    script = a.checkout / peer.script
    if not script.is_file():
        raise SystemExit(f"{script} not found: --checkout must be a checkout of {peer.source.split()[0]}")
    n1, n2 = (int(v) for v in (a.steps or ("1,3" if a.peer == "aspl" else "4,12")).split(","))
    if not 0 < n1 < n2:
        raise SystemExit(f"--steps needs 0 < n1 < n2, got {n1},{n2}")
    env = _env(a.threads)
    work = Path(tempfile.mkdtemp(prefix="peer_"))
    log = work / "runs.log"
    fixed = 0
    try:
        p = prepare(a.world, a.images, work)
        if peer.cpu_fixups:   # a copy in the temporary folder, only the hard-coded device changed
            text = script.read_text()
            for old, new in peer.cpu_fixups:
                fixed += text.count(old)
                text = text.replace(old, new)
            script = work / "peer_copy" / Path(peer.script).name
            script.parent.mkdir()
            script.write_text(text)

        def peer_cmd(n, out):
            return [a.python, str(script), *peer.args({**p, "out": str(out)}, n)]

        def ours_cmd(n, out):
            return [sys.executable, "-m", "protect_core", "cloak", p["data"], "-o", str(out), "--model", p["model"],
                    "--method", peer.method, "--steps", str(peer.image_steps(n)), "--seed", "0", "--quiet",
                    "--overwrite"]

        per_pair = []
        for k in range(a.pairs):
            order = [("peer", n1), ("ours", n1), ("ours", n2), ("peer", n2)]
            if k % 2:
                order = order[::-1]
            t = {}
            for who, n in order:
                out = work / f"out_{who}_{n}_{k}"
                cmd = peer_cmd(n, out) if who == "peer" else ours_cmd(n, out)
                t[who, n] = _timed(cmd, env, a.checkout if who == "peer" else ROOT, a.timeout, log)
                shutil.rmtree(out, ignore_errors=True)
                print(f"pair {k + 1}: {who} n={n}: {t[who, n]:.1f} s", flush=True)
            steps = peer.image_steps(n2) - peer.image_steps(n1)
            row = {w: (t[w, n2] - t[w, n1]) / steps for w in ("peer", "ours")}
            row["fixed_peer"], row["fixed_ours"] = t["peer", n1], t["ours", n1]
            per_pair.append(row)
        res = {"peer": a.peer, "source": peer.source, "method": peer.method, "world": a.world, "images": a.images,
               "size": p["size"], "steps": [n1, n2], "image_steps": [peer.image_steps(n1), peer.image_steps(n2)],
               "threads": a.threads, "pairs": per_pair, "cpu_fixups": fixed,
               "peer_s": statistics.median(r["peer"] for r in per_pair),
               "ours_s": statistics.median(r["ours"] for r in per_pair),
               "ratio": statistics.median(r["ours"] / r["peer"] for r in per_pair),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores (the 2-core development machine unless "
                          "said otherwise)"}
        return res
    finally:
        keep = Path(os.environ.get("PEER_LOG_DIR", tempfile.gettempdir())) / f"peer_{a.peer}_runs.log"
        if log.exists():
            shutil.copyfile(log, keep)
            print(f"(the runs' output: {keep})")
        shutil.rmtree(work, ignore_errors=True)


def markdown(rows: list[dict]) -> str:
    L = ["| peer (public code) | our method | world, images | image steps n1 / n2 | peer s/step | ours s/step | "
         "ours / peer | first run, peer / ours (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fp = statistics.median(x["fixed_peer"] for x in r["pairs"])
        fo = statistics.median(x["fixed_ours"] for x in r["pairs"])
        L.append(f"| {r['source']} | {r['method']} | {r['world']}, {r['images']} x {r['size']} px | "
                 f"{r['image_steps'][0]} / {r['image_steps'][1]} | {r['peer_s']:.3f} | {r['ours_s']:.3f} | "
                 f"**{r['ratio']:.2f}** | {fp:.1f} / {fo:.1f} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.list:
        for name, p in sorted(PEERS.items()):
            print(f"{name:6s} {p.script:18s} ours: {p.method:8s} {p.source}")
        return 0
    if not a.peer or not a.checkout:
        raise SystemExit("--peer and --checkout are needed (see --list)")
    res = run(a)
    text = markdown([res])
    print(text)
    if a.stem:
        out = ROOT / "benchmarks" / "results"
        (out / f"{a.stem}.md").write_text(text)
        (out / f"{a.stem}.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
