"""``stylecloak purify``: folder in / folder out, alpha kept, chains and parameters, JSON summary, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from protect_core.cli import main


@pytest.fixture
def art(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    g = np.random.default_rng(0)
    rgba = np.concatenate([g.integers(0, 256, (36, 40, 3)), np.full((36, 40, 1), 128)], -1).astype(np.uint8)
    rgba[:5, :5, 3] = 0
    Image.fromarray(rgba, "RGBA").save(src / "a.png")
    Image.fromarray(g.integers(0, 256, (32, 32, 3)).astype(np.uint8)).save(src / "b.jpg", quality=95)
    return src


def run_cli(args, capsys):
    code = main(["purify", *args, "--model", "tiny", "--quiet"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if code == 0 else None), cap.err


def test_filter_chain_over_a_folder_keeps_alpha_and_reports(art, tmp_path, capsys):
    out = tmp_path / "out"
    code, summary, _ = run_cli([str(art), "-o", str(out), "--chain", "jpeg,gaussian_blur",
                                "--param", "jpeg.quality=40", "--param", "kernel=5",
                                "--summary", str(tmp_path / "s.json")], capsys)
    assert code == 0 and summary["written"] == 2 and summary["failed"] == 0
    assert summary["chain"][0]["params"]["quality"] == 40 and summary["chain"][1]["params"]["kernel"] == 5
    for row in summary["images"]:
        assert row["psnr_to_input"] > 10 and row["seconds"] >= 0 and row["stages"][0]["name"] == "jpeg"
    a_out = Image.open(out / "a.png")
    assert a_out.mode == "RGBA" and a_out.size == (40, 36)
    assert np.array_equal(np.asarray(a_out)[..., 3], np.asarray(Image.open(art / "a.png"))[..., 3])
    assert (out / "b.png").exists()
    assert json.loads((tmp_path / "s.json").read_text())["written"] == 2


def test_diffusion_method_with_shortcuts(art, tmp_path, capsys):
    out = tmp_path / "o"
    code, summary, _ = run_cli([str(art / "b.jpg"), "-o", str(out), "--method", "diffpure", "--strength", "0.04",
                                "--param", "steps=50", "--format", "same"], capsys)
    assert code == 0 and summary["chain"][0]["params"]["strength"] == 0.04
    assert summary["images"][0]["stages"][0]["denoise_steps"] == 2 and (out / "b.jpg").exists()


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "unknown purifier"),
    (["--method", "jpeg", "--strength", "0.1"], "no purifier in the chain"),
    (["--method", "jpeg", "--param", "quality"], "KEY=VALUE"),
    (["--method", "jpeg", "--param", "quality=0"], "quality must be"),
    (["--method", "jpeg", "--chain", "resize"], "either --method or --chain"),
    ([], "no purifier chosen"),
])
def test_bad_requests_exit_2_with_a_message(art, tmp_path, capsys, args, message):
    code, _, err = run_cli([str(art), "-o", str(tmp_path / "x"), *args], capsys)
    assert code == 2 and message in err


def test_list_methods(capsys):
    code, summary, _ = run_cli(["--list-methods"], capsys)
    names = {p["name"] for p in summary["purifiers"]}
    assert code == 0 and {"impress", "gridpure", "bilateral_guided"} <= names


def test_presets_then_params_then_shortcuts():
    from argparse import Namespace

    from protect_core.purify.cli import build_chain

    def ns(**kw):
        base = dict(method=None, chain=None, param=[], strength=None, iterations=None, preset="default")
        return Namespace(**{**base, **kw})

    assert build_chain(ns(chain="impress,gridpure", preset="quick")) == [
        ("impress", {"iterations": 300}), ("gridpure", {"iterations": 5})]
    chain = build_chain(ns(chain="impress,gridpure", preset="quick", param=["gridpure.iterations=7"],
                           iterations=None))
    assert chain[1][1]["iterations"] == 7 and chain[0][1]["iterations"] == 300
    assert build_chain(ns(method="gridpure", param=["gamma=0.2", "prompt=a cat"], iterations=3)) == [
        ("gridpure", {"gamma": 0.2, "prompt": "a cat", "iterations": 3})]
