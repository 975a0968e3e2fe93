"""What ``protect_core.cli`` shares between subcommands: the model is loaded only when a block's ``needs_host``
says so, ``--max-pixels`` reaches the image loader on every command that reads images, and the help names the
shipped toy model as the default."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from protect_core import cli
from protect_core.backends import loading
from protect_core.errors import ModelError


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a model fails loudly (and is counted)."""
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise ModelError("TEST: the model loader was called")

    monkeypatch.setattr(loading, "load_host", refuse)
    return calls


@pytest.fixture
def with_model(monkeypatch, tiny_host):
    calls = []
    monkeypatch.setattr(loading, "load_host", lambda *a, **k: calls.append(a) or tiny_host)
    return calls


def _png(path, h=32, w=32, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _run(argv, capsys):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if cap.out.strip() else None), cap.err


# ---- needs_host: no model for listings and filter-only work -------------------------------------------------------
@pytest.mark.parametrize("argv,key", [(["cloak", "--list-methods"], "methods"),
                                      (["purify", "--list-methods"], "purifiers"),
                                      (["layers", "--list-presets"], "presets")])
def test_listings_load_no_model(no_model, capsys, argv, key):
    code, summary, err = _run(argv, capsys)
    assert code == 0, err
    assert summary[key] and "model" not in summary and no_model == []


def test_filter_only_purify_loads_no_model(no_model, tmp_path, capsys):
    src = _png(tmp_path / "in" / "a.png")
    code, summary, err = _run(["purify", str(src), "-o", str(tmp_path / "out"), "--chain", "jpeg,gaussian_blur",
                               "--quiet"], capsys)
    assert code == 0, err
    assert summary["written"] == 1 and (tmp_path / "out" / "a.png").exists() and no_model == []


def test_a_diffusion_purifier_does_load_the_model(no_model, tmp_path, capsys):
    src = _png(tmp_path / "in" / "a.png")
    code, _, err = _run(["purify", str(src), "-o", str(tmp_path / "out"), "--chain", "jpeg,diffpure", "--quiet"],
                        capsys)
    assert code == 2 and "the model loader was called" in err and len(no_model) == 1


def test_bad_requests_fail_before_loading(no_model, tmp_path, capsys):
    for argv, message in [(["cloak", str(tmp_path)], "no output folder"),
                          (["purify", str(tmp_path / "nowhere.png"), "-o", str(tmp_path / "o"), "--method", "jpeg"],
                           "does not exist"),
                          (["purify", str(tmp_path), "-o", str(tmp_path / "o"), "--method", "nope"],
                           "unknown purifier"),
                          (["layers", "--preset", "styleprotect"], "no output file")]:
        code, _, err = _run(argv, capsys)
        assert code == 2 and message in err, (argv, err)
    assert no_model == []


def test_resumed_cloak_with_nothing_left_loads_no_model(no_model, tmp_path, capsys):
    src = _png(tmp_path / "in" / "a.png")
    _png(tmp_path / "out" / "a.png", seed=1)
    code, summary, err = _run(["cloak", str(src), "-o", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0 and summary["skipped"] == 1 and no_model == [], err
    code, _, err = _run(["cloak", str(src), "-o", str(tmp_path / "out"), "--overwrite", "--quiet"], capsys)
    assert code == 2 and len(no_model) == 1  # --overwrite has work to do: the model is needed


def test_commands_without_a_hook_load_the_model(no_model, capsys):
    code, _, err = _run(["info"], capsys)
    assert code == 2 and "the model loader was called" in err and len(no_model) == 1


# ---- --max-pixels --------------------------------------------------------------------------------------------------
def test_purify_max_pixels_refuses_then_lets_through(no_model, tmp_path, capsys):
    src = _png(tmp_path / "in" / "a.png", 40, 48)  # 1920 px
    out = tmp_path / "out"
    code, summary, _ = _run(["purify", str(src), "-o", str(out), "--method", "jpeg", "--max-pixels", "1000",
                             "--quiet"], capsys)
    assert code == 1 and summary["failed"] == 1 and not (out / "a.png").exists()   # nothing written: not 0
    error = summary["images"][0]["error"]
    assert "48x40 pixels" in error and "max_pixels=1000" in error and "--max-pixels" in error
    code, summary, _ = _run(["purify", str(src), "-o", str(out), "--method", "jpeg", "--max-pixels", "48x40",
                             "--quiet"], capsys)
    assert code == 0 and summary["written"] == 1 and (out / "a.png").exists()


def test_cloak_max_pixels_refuses_then_lets_through(with_model, tmp_path, capsys):
    src = _png(tmp_path / "in" / "a.png", 32, 40)
    out = tmp_path / "out"
    base = ["cloak", str(src), "-o", str(out), "--method", "photoguard", "--steps", "1", "--quiet"]
    code, summary, _ = _run(base + ["--max-pixels", "1000"], capsys)
    assert code == 1 and summary["failed"] == 1 and summary["written"] == 0
    assert "max_pixels=1000" in summary["images"][0]["error"] and not (out / "a.png").exists()
    code, summary, _ = _run(base + ["--max-pixels", "1280"], capsys)
    assert code == 0 and summary["written"] == 1 and (out / "a.png").exists()


def test_layers_max_pixels_is_a_clear_error(with_model, tmp_path, capsys):
    src = _png(tmp_path / "in" / "a.png", 32, 32)
    code, _, err = _run(["layers", str(src), "-o", str(tmp_path / "sel.json"), "--max-pixels", "500", "--quiet"],
                        capsys)
    assert code == 2 and "max_pixels=500" in err and "--max-pixels" in err


@pytest.mark.parametrize("text,value", [("1000", 1000), ("8192x8192", 8192 * 8192), ("64e6", 64_000_000),
                                        (" 100 X 20 ", 2000)])
def test_parse_max_pixels(text, value):
    assert cli.parse_max_pixels(text) == value


@pytest.mark.parametrize("text", ["", "big", "0", "10x", "-5"])
def test_parse_max_pixels_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError, match="pixel"):
        cli.parse_max_pixels(text)


def test_bad_max_pixels_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["purify", "--list-methods", "--max-pixels", "lots"])
    assert e.value.code == 2 and "--max-pixels" in capsys.readouterr().err


# ---- help ----------------------------------------------------------------------------------------------------------
def test_help_names_the_toy_default_and_max_pixels(capsys):
    parser = cli.build_parser()
    assert "shipped toy model" in parser.format_help()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in subs.items():
        text = " ".join(sub.format_help().split())
        assert "default: the shipped toy model" in text, name
        assert ("--max-pixels" in text) == (name != "info"), name


def test_a_reader_that_stops_early_gets_no_traceback():
    """``stylecloak ... | head`` : the reader closes the pipe before the JSON summary is written."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "protect_core.cli", "purify", "--list-methods"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err
