"""The command line under hostile input: every case ends in one line naming the flag or file (no traceback), a
true exit code (2: bad request, nothing done; 1: not everything written), inputs untouched, no temporary file
left, outputs complete or absent, existing outputs kept without --overwrite, and a resumed run writing the bytes
of an uninterrupted one (in-process here; with real SIGINT/SIGTERM/SIGKILL in the slow subprocess test)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile_corpus import make_corpus, png_bytes
from protect_core import cli
from protect_core.backends import loading
from protect_core.errors import ModelError

CLOAK_FAST = ["--method", "photoguard", "--steps", "2", "--quiet"]


@pytest.fixture
def model(monkeypatch, tiny_host):
    calls = []
    monkeypatch.setattr(loading, "load_host", lambda *a, **k: calls.append(a) or tiny_host)
    return calls


@pytest.fixture
def no_model(monkeypatch):
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise ModelError("TEST: the model loader was called")
    monkeypatch.setattr(loading, "load_host", refuse)
    return calls


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(argv, capsys):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:   # argparse
        code = e.code
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err, cap.err
    return code, cap.out, cap.err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _no_temps(root: Path):
    assert not [p for p in root.rglob("*.part")], list(root.rglob("*.part"))


def _images(folder: Path, n: int, size: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"img{i}.png").write_bytes(png_bytes(size, size, i))
    return folder


# ---- usage errors: one line, exit 2, nothing done ------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "xpu", "bogus"])
def test_unavailable_devices_are_one_line_before_loading(no_model, tmp_path, capsys, device):
    art = _images(tmp_path / "in", 1)
    for argv in (["cloak", art, "-o", tmp_path / "o"], ["purify", art, "-o", tmp_path / "p", "--method", "diffpure"],
                 ["layers", art, "-o", tmp_path / "s.json"], ["info"],
                 ["mimicry", "--clean", art, "--train", art, "-o", tmp_path / "r"]):
        code, _, err = _run(argv + ["--device", device], capsys)
        assert code == 2 and "device" in _one_line(err) and device in err, (argv, err)
    assert no_model == [] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,needle", [
    (["cloak", "{in}", "-o", "{in}/img0.png"], "is a file"),
    (["cloak", "{in}", "-o", "{out}", "--summary", "{in}"], "--summary"),
    (["cloak", "{in}", "-o", "{out}", "--eps", "nan"], "--eps"),
    (["cloak", "{in}", "-o", "{out}", "--eps", "inf"], "--eps"),
    (["cloak", "{in}", "-o", "{out}", "--eps", "-1"], "--eps"),
    (["cloak", "{in}", "-o", "{out}", "--steps", "0"], "--steps"),
    (["cloak", "{in}", "-o", "{out}", "--robust-samples", "0"], "--robust-samples"),
    (["cloak", "{in}", "-o", "{out}", "--batch-size", "0"], "--batch-size"),
    (["cloak", "{in}", "-o", "{out}", "--seed", str(2 ** 70)], "--seed"),
    (["cloak", "{in}", "-o", "{out}", "--seed", "-1"], "--seed"),
    (["cloak", "{in}", "-o", "{out}", "--option", "no_such_option=1"], "no option"),
    (["cloak", "{in}", "-o", "{out}", "--method", "nope"], "unknown cloak method"),
    (["cloak", "{in}", "-o", "{out}", "--layers", "{in}/img0.png"], "layer selection"),
    (["purify", "{in}", "-o", "{out}", "--method", "diffpure", "--strength", "nan"], "--strength"),
    (["purify", "{in}", "-o", "{out}", "--method", "diffpure", "--param", "strength=NaN"], "finite"),
    (["purify", "{in}", "-o", "{out}", "--method", "jpeg", "--param", "quality=abc"], "quality"),
    (["purify", "{in}", "-o", "{out}", "--method", "jpeg", "--param", "quality=500"], "quality"),
    (["layers", "{in}", "-o", "{in}"], "is a folder"),
    (["layers", "{in}", "-o", "{out}.json", "--plot", "{in}"], "--plot"),
    (["layers", "{in}", "-o", "{out}.json", "--timesteps", "a,b"], "--timesteps"),
    (["mimicry", "--clean", "{in}", "--train", "{in}", "-o", "{out}", "--guidance", "nan"], "--guidance"),
    (["mimicry", "--clean", "{in}", "--train", "{in}", "-o", "{out}", "--lr", "-1"], "--lr"),
    (["mimicry", "--clean", "{in}/none", "--train", "{in}", "-o", "{out}"], "does not exist"),
    (["nosuchcommand"], "invalid choice"),
])
def test_bad_requests_are_one_line_and_do_nothing(no_model, tmp_path, capsys, argv, needle):
    art = _images(tmp_path / "in", 2)
    before = _tree(tmp_path)
    argv = [a.format(**{"in": art, "out": tmp_path / "out"}) for a in argv]
    code, _, err = _run(argv, capsys)
    assert code == 2 and needle in _one_line(err), err
    assert no_model == [] and _tree(tmp_path) == before and not (tmp_path / "out").exists()


def test_no_command_is_a_usage_error(capsys):
    assert _run([], capsys)[0] == 2


# ---- paths ---------------------------------------------------------------------------------------------------------
def test_two_inputs_for_one_output_are_refused_and_recursive_keeps_the_layout(model, tmp_path, capsys):
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    (tmp_path / "x" / "pic.png").write_bytes(png_bytes(32, 32, 1))
    (tmp_path / "y" / "pic.png").write_bytes(png_bytes(32, 32, 2))
    for cmd in (["cloak", *CLOAK_FAST], ["purify", "--method", "jpeg", "--quiet"]):
        code, _, err = _run([cmd[0], tmp_path / "x" / "pic.png", tmp_path / "y" / "pic.png", "-o", tmp_path / "o",
                             *cmd[1:]], capsys)
        assert code == 2 and "would both be written" in _one_line(err) and not (tmp_path / "o").exists()
    top = tmp_path / "top"
    top.mkdir()
    for sub in ("x", "y"):
        (tmp_path / sub).rename(top / sub)
    code, out, err = _run(["cloak", top, "-o", tmp_path / "o", "--recursive", *CLOAK_FAST], capsys)
    assert code == 0, err
    assert (tmp_path / "o" / "x" / "pic.png").exists() and (tmp_path / "o" / "y" / "pic.png").exists()


def test_folder_of_subfolders_hints_at_recursive(no_model, tmp_path, capsys):
    _images(tmp_path / "top" / "sub", 1)
    code, _, err = _run(["purify", tmp_path / "top", "-o", tmp_path / "o", "--method", "jpeg"], capsys)
    assert code == 2 and "--recursive" in _one_line(err)
    code, out, err = _run(["purify", tmp_path / "top", "-o", tmp_path / "o", "--method", "jpeg", "--recursive",
                           "--quiet"], capsys)
    assert code == 0 and (tmp_path / "o" / "sub" / "img0.png").exists(), err


def test_output_onto_the_input_is_refused_before_work(no_model, tmp_path, capsys):
    art = _images(tmp_path / "in", 1)
    before = _tree(tmp_path)
    code, _, err = _run(["purify", art, "-o", art, "--method", "jpeg"], capsys)
    assert code == 2 and "overwrite the input" in _one_line(err) and _tree(tmp_path) == before


def test_all_bad_inputs_exit_1_and_create_nothing(model, tmp_path, capsys):
    made = make_corpus(tmp_path / "corpus")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in made["bad"]:
        f.rename(bad / f.name)
    for argv in (["cloak", bad, "-o", tmp_path / "o1", *CLOAK_FAST],
                 ["purify", bad, "-o", tmp_path / "o2", "--method", "jpeg", "--quiet"]):
        code, out, err = _run(argv, capsys)
        summary = json.loads(out)
        assert code == 1 and summary["written"] == 0 and summary["failed"] == len(made["bad"])
        for f in made["bad"]:   # every file named in the summary with its own reason
            row = next(r for r in summary["images"] if r["input"] == str(bad / f.name))
            assert row["status"] == "failed" and f.name in row["error"]
        assert not Path(argv[3]).exists()


def test_corpus_good_names_are_written_and_bad_ones_named(model, tmp_path, capsys):
    made = make_corpus(tmp_path / "corpus")
    before = _tree(tmp_path / "corpus")
    code, out, err = _run(["purify", tmp_path / "corpus", "-o", tmp_path / "o", "--method", "jpeg", "--quiet"],
                          capsys)
    summary = json.loads(out)
    assert code == 1 and summary["written"] == len(made["good"]) and summary["failed"] == len(made["bad"])
    assert all((tmp_path / "o" / f.name).exists() for f in made["good"])   # 244-byte name included
    code, out, err = _run(["cloak", *made["good"], "-o", tmp_path / "c", *CLOAK_FAST], capsys)
    assert code == 0 and all((tmp_path / "c" / f.name).exists() for f in made["good"]), err
    assert _tree(tmp_path / "corpus") == before
    _no_temps(tmp_path)


def test_a_name_over_255_bytes_is_refused_up_front(no_model, tmp_path, capsys):
    stem = "b" * 250
    (tmp_path / "in").mkdir()
    for suffix in (".jpg", ".png"):   # same stem: both keep their suffix, a.jpg.png is 258 bytes
        (tmp_path / "in" / (stem + suffix)).write_bytes(png_bytes())
    code, _, err = _run(["purify", tmp_path / "in", "-o", tmp_path / "o", "--method", "jpeg"], capsys)
    assert code == 2 and "255-byte" in _one_line(err)


# ---- overwrite: identical rule in every subcommand ----------------------------------------------------------------
def test_existing_outputs_are_kept_without_overwrite(model, tmp_path, capsys):
    art = _images(tmp_path / "in", 2)
    out = tmp_path / "o"
    out.mkdir()
    (out / "img0.png").write_bytes(b"keep me")
    sel = tmp_path / "sel.json"
    sel.write_text("keep me too")
    report = tmp_path / "r"
    report.mkdir()
    (report / "report.json").write_text("old")
    (report / "report.png").write_text("old")
    for argv in (["purify", art, "-o", out, "--method", "jpeg", "--quiet"],
                 ["layers", art, "-o", sel, "--quiet"],
                 ["mimicry", "--clean", art, "--train", art, "-o", report, "--quiet"]):
        code, text, err = _run(argv, capsys)
        assert code == 0 and "skipped" in text, (argv, err)
    assert (out / "img0.png").read_bytes() == b"keep me" and (out / "img1.png").exists()
    assert sel.read_text() == "keep me too" and (report / "report.json").read_text() == "old"
    code, _, err = _run(["purify", art, "-o", out, "--method", "jpeg", "--quiet", "--overwrite"], capsys)
    assert code == 0 and (out / "img0.png").read_bytes() != b"keep me"


# ---- resume gives the same bytes; seeds from the image's identity -------------------------------------------------
def test_resumed_cloak_writes_the_bytes_of_an_uninterrupted_run(model, tmp_path, capsys):
    art = _images(tmp_path / "in", 5)
    args = ["--batch-size", "2", *CLOAK_FAST]
    assert _run(["cloak", art, "-o", tmp_path / "full", *args], capsys)[0] == 0
    full = _tree(tmp_path / "full")
    assert _run(["cloak", art, "-o", tmp_path / "part", *args], capsys)[0] == 0
    for name in ("img1.png", "img4.png"):   # as if the run had been stopped before these
        (tmp_path / "part" / name).unlink()
    code, out, err = _run(["cloak", art, "-o", tmp_path / "part", *args], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["written"] == 2 and summary["skipped"] == 3
    assert _tree(tmp_path / "part") == full
    alone = _run(["cloak", art / "img3.png", "-o", tmp_path / "alone", "--batch-size", "1", *CLOAK_FAST], capsys)
    assert alone[0] == 0
    again = _run(["cloak", art / "img3.png", "-o", tmp_path / "alone2", "--batch-size", "1", *CLOAK_FAST], capsys)
    assert again[0] == 0 and _tree(tmp_path / "alone") == _tree(tmp_path / "alone2")


def test_purify_seeds_come_from_the_name_not_the_position(no_model, tmp_path, capsys):
    art = _images(tmp_path / "in", 3)
    noise = ["--method", "gaussian_noise", "--quiet"]
    assert _run(["purify", art, "-o", tmp_path / "a", *noise], capsys)[0] == 0
    assert _run(["purify", art / "img2.png", "-o", tmp_path / "b", *noise], capsys)[0] == 0
    assert (tmp_path / "a" / "img2.png").read_bytes() == (tmp_path / "b" / "img2.png").read_bytes()


def test_stale_temporaries_are_removed_at_the_start(no_model, tmp_path, capsys):
    art = _images(tmp_path / "in", 1)
    out = tmp_path / "o"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [out / f".sc-{dead.pid}-abcd1234.part", out / ".img0.png.k3j4h5g6.part"]
    for f in stale:
        f.write_bytes(b"x" * 100)
    code, _, err = _run(["purify", art, "-o", out, "--method", "jpeg", "--quiet"], capsys)
    assert code == 0 and not any(f.exists() for f in stale), err


def test_list_methods_uses_the_flags_units(no_model, capsys):
    from protect_core.cloak.base import available_methods
    from protect_core.cloak.cli import INTENSITIES
    from protect_core.cloak.presets import PRESETS

    code, out, _ = _run(["cloak", "--list-methods"], capsys)
    rows = {r["name"]: r for r in json.loads(out)["methods"]}
    for name, cls in available_methods().items():
        assert rows[name]["defaults"]["eps_255"] == pytest.approx(cls.defaults["eps"] * 255, abs=1e-3)
        assert "eps" not in rows[name]["defaults"]
    assert tuple(PRESETS) == INTENSITIES


# ---- disk full and read-only folders (real tmpfs mounts where the machine allows them) ----------------------------
def _mount(path: Path, opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def mounts():
    made = []
    yield made
    for m in made:
        subprocess.run(["umount", str(m)], capture_output=True)


def test_full_disk_is_one_line_exit_1_and_leaves_complete_files(no_model, tmp_path, capsys, mounts, monkeypatch):
    art = _images(tmp_path / "in", 3, size=96)   # ~28 kB each
    disk = tmp_path / "disk"
    if _mount(disk, "size=48k"):
        mounts.append(disk)
    else:   # no mount permission: the same failure, raised where the file system would raise it
        import errno

        from protect_core import atomic
        real, count = atomic.os.fsync, []

        def fsync(fd):
            count.append(fd)
            if len(count) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd)
        monkeypatch.setattr(atomic.os, "fsync", fsync)
    code, out, err = _run(["purify", art, "-o", disk / "o", "--method", "jpeg", "--param", "quality=100",
                           "--format", "png", "--quiet"], capsys)
    assert code == 1 and "No space left" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("stylecloak: error")] != []
    from protect_core.images import load_image
    for f in (disk / "o").glob("*.png"):
        load_image(f)   # what is there is complete
    _no_temps(disk)
    assert json.loads(out)["written"] < 3


def test_read_only_output_is_refused_before_work(no_model, tmp_path, capsys, mounts, monkeypatch):
    art = _images(tmp_path / "in", 1)
    ro = tmp_path / "ro"
    if _mount(ro, "ro,size=64k"):
        mounts.append(ro)
    else:
        ro.mkdir(exist_ok=True)
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == ro else real(p, m, **k))
    for argv in (["cloak", art, "-o", ro / "o", *CLOAK_FAST], ["purify", art, "-o", ro / "o", "--method", "jpeg"],
                 ["layers", art, "-o", ro / "s.json"], ["mimicry", "--clean", art, "--train", art, "-o", ro / "r"],
                 ["cloak", art, "-o", tmp_path / "ok", "--summary", ro / "s.json"]):
        code, _, err = _run(argv, capsys)
        assert code == 2 and "cannot write" in _one_line(err), (argv, err)
    assert no_model == [] and not (tmp_path / "ok").exists()


# ---- the parser imports no torch -----------------------------------------------------------------------------------
def test_help_imports_no_torch():
    code = ("import sys\nfrom protect_core import cli\n"
            "for a in (['--help'], ['cloak', '--help'], ['purify', '-h'], ['layers', '-h'], ['mimicry', '-h'],"
            " ['info', '-h']):\n    cli.build_parser(a).format_help()\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    from protect_core.cli import DEFAULT_MAX_PIXELS
    from protect_core.images import DEFAULT_MAX_PIXELS as REAL
    assert DEFAULT_MAX_PIXELS == REAL


# ---- real signals (subprocess) -------------------------------------------------------------------------------------
SIGNAL_CMD = [sys.executable, "-m", "protect_core", "cloak", "--model", "tiny", "--method", "photoguard",
              "--steps", "15", "--batch-size", "1", "--quiet"]
SIGNAL_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Six images and the outputs of one uninterrupted run (shared by the three signals)."""
    root = tmp_path_factory.mktemp("signals")
    art = _images(root / "in", 6)
    run = subprocess.run(SIGNAL_CMD + [str(art), "-o", str(root / "full")], env=SIGNAL_ENV, capture_output=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr.decode()
    return art, _tree(root / "full")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal_then_resume_gives_the_uninterrupted_bytes(tmp_path, sig, uninterrupted):
    art, full = uninterrupted
    cmd = SIGNAL_CMD + [str(art)]
    part = tmp_path / "part"
    # SIGINT at its default in the child, as in a terminal (a suite started with `cmd &` passes it on ignored)
    proc = subprocess.Popen(cmd + ["-o", str(part)], env=SIGNAL_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not (part.exists() and any(part.glob("*.png"))) and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig]
    if proc.returncode != 0:   # it may have finished just before the signal
        assert proc.returncode == expected and b"Traceback" not in err, err.decode()
    if sig != signal.SIGKILL:
        _no_temps(part)
    done = len(list(part.glob("*.png")))
    rerun = subprocess.run(cmd + ["-o", str(part)], env=SIGNAL_ENV, capture_output=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert json.loads(rerun.stdout)["skipped"] == done
    _no_temps(part)
    assert _tree(part) == full
