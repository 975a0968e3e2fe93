"""``stylecloak mimicry`` on image folders with the tiny model: report files, summary, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from protect_core.cli import main
from protect_core.mimicry.cli import read_layer_selection

FAST = ["--model", "tiny", "--quiet", "--steps", "2", "--samples", "2", "--sample-steps", "2",
        "--sample-batch", "2", "--reference-samples", "2", "--batch-size", "2"]



def _write_set(folder, n, seed, shift=0, size=40):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size, size, 3)).astype(np.int16)
    for i in range(n):
        Image.fromarray(np.clip(base[i] + shift, 0, 255).astype(np.uint8)).save(folder / f"art{i}.png")
    return folder


def test_cli_writes_report(tmp_path, capsys):
    clean = _write_set(tmp_path / "clean", 3, 0)
    cloaked = _write_set(tmp_path / "cloaked", 3, 0, shift=3)
    out = tmp_path / "report"
    rc = main(["mimicry", "--clean", str(clean), "--train", str(cloaked), "-o", str(out), "--max-pixels", "40x40",
               *FAST])  # exactly at the limit: accepted
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["conditions"]) == {"base", "clean", "cloaked"}
    data = json.loads((out / "report.json").read_text())
    assert data["settings"]["resolution"] == 40 and data["settings"]["steps"] == 2
    imp = data["conditions"]["cloaked"]["imperceptibility"]
    assert imp["paired"] and imp["linf_255"]["mean"] == pytest.approx(3, abs=0.01)
    assert (out / "report.png").stat().st_size > 0


def test_cli_names_layers_and_errors(tmp_path, capsys, tiny_host):
    clean = _write_set(tmp_path / "clean", 2, 0)
    a = _write_set(tmp_path / "a", 2, 1)
    layer = tiny_host.cross_attention_layers()[1].name
    sel = tmp_path / "sel.json"
    sel.write_text(json.dumps({"selected": [{"name": layer, "score": 1.0}]}))
    out = tmp_path / "r"
    rc = main(["mimicry", "--clean", str(clean), "--train", str(a), "--name", "cloaked", "--layers", str(sel),
               "--resolution", "32", "-o", str(out), *FAST])
    assert rc == 0
    data = json.loads((out / "report.json").read_text())
    assert data["settings"]["layers"] == [layer] and "cloaked" in data["conditions"]
    capsys.readouterr()
    rc = main(["mimicry", "--clean", str(clean), "--train", str(a), "--name", "cloaked", "-o", str(out), *FAST])
    assert rc == 0 and json.loads(capsys.readouterr().out)["status"] == "skipped (exists)"   # kept, not redone
    assert json.loads((out / "report.json").read_text()) == data
    out = tmp_path / "r2"
    rc = main(["mimicry", "--clean", str(clean), "--train", str(a), "--name", "x", "--name", "y",
               "-o", str(out), *FAST])
    assert rc == 2 and "one name per set" in capsys.readouterr().err
    rc = main(["mimicry", "--clean", str(tmp_path / "nowhere"), "--train", str(a), "-o", str(out), *FAST])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["mimicry", "--clean", str(clean), "--train", str(a), "-o", str(out), "--max-pixels", "1599", *FAST])
    err = capsys.readouterr().err  # 40x40 = 1600 px, one over the limit: refused with the flag named
    assert rc == 2 and "over the limit of max_pixels=1599" in err and "--max-pixels" in err


def test_read_layer_selection_formats(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps(["a", "b"]))
    assert read_layer_selection(f) == ["a", "b"]
    f.write_text(json.dumps({"layers": ["c"]}))
    assert read_layer_selection(f) == ["c"]
    f.write_text(json.dumps({"nothing": 1}))
    with pytest.raises(Exception, match="list of canonical"):
        read_layer_selection(f)
