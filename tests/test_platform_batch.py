"""``stylecloak batch`` on a real local Ray: manifest, resume, determinism, a killed worker, a killed driver.

The manifest and planning tests need no Ray; the rest start real Ray (no mocks) with the shipped 32 px toy model
and are marked slow. One reference run (2 workers) gives the bytes every other run must reproduce."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylecloak_platform.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--steps", "8", "--batch-size", "1", "--quiet"]


def make_gallery(folder: Path, n: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(folder / f"art{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def lines(manifest: Path) -> list[dict]:
    return [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]


def digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


# ------------------------------------------------------------------------------------------- no Ray needed
def test_manifest_last_record_wins_and_compacts_to_one_line_per_input(tmp_path):
    m = Manifest(tmp_path / "m.jsonl")
    m.add({"input": "a.png", "status": "error", "error": "x"})
    m.add({"input": "b.png", "status": "done"})
    m.add({"input": "a.png", "status": "done"})
    m.close()
    again = Manifest(tmp_path / "m.jsonl")
    assert again.get("a.png")["status"] == "done" and again.lines == 3
    assert again.compact() and [r["input"] for r in lines(tmp_path / "m.jsonl")] == ["a.png", "b.png"]
    assert not Manifest(tmp_path / "m.jsonl").compact()   # already one line per input: untouched


def test_manifest_ignores_a_torn_last_line_and_refuses_a_foreign_file(tmp_path):
    from protect_core.errors import StyleCloakError

    f = tmp_path / "m.jsonl"
    f.write_text('{"input": "a.png", "status": "done"}\n{"input": "b.pn')
    m = Manifest(f)
    assert m.torn and list(m.records) == ["a.png"]
    m.add({"input": "b.png", "status": "done"})   # the torn line is dropped before appending
    m.close()
    assert [r["input"] for r in lines(f)] == ["a.png", "b.png"]
    f.write_text("hello\n{}\n")
    with pytest.raises(StyleCloakError, match="not a StyleCloak record"):
        Manifest(f)


def _job(tmp_path, **kw):
    from protect_core.cloak.base import CloakSettings
    from stylecloak_platform.batch import Job

    src = make_gallery(tmp_path / "src", 3)
    items = [(p, p.name) for p in sorted(src.iterdir())]
    dst = tmp_path / "dst"
    outs = [dst / k for _, k in items]
    settings = CloakSettings(method="glaze", seed=0, steps=kw.pop("steps", 3))
    return Job(items=items, outputs=outs, dst=dst, settings=settings, run={"batch_size": 2},
               manifest=dst / "m.jsonl", **kw)


def test_plan_skips_finished_unchanged_images_and_redoes_changed_ones(tmp_path):
    from stylecloak_platform.batch import _stat, plan
    from stylecloak_platform.work import settings_record, sha256

    job = _job(tmp_path)
    man = Manifest(job.manifest)
    for (src, key), out in zip(job.items[:2], job.outputs[:2]):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"cloaked")
        size, mtime = _stat(src)
        man.add({"input": key, "status": "done", "size": size, "mtime_ns": mtime, "sha256": sha256(src.read_bytes()),
                 "settings": settings_record(job.settings), "output_sha256": "x"})
    groups = plan(job, man, man.add)
    assert job.finished == [True, True, False, False] and groups == [[2, 3]]   # group [0, 1] is done
    art = job.items[1][0]
    art.write_bytes(art.read_bytes() + b"")         # same bytes, new mtime: still finished (content compared)
    os.utime(art, ns=(1, 1))
    assert plan(job, man, man.add) == [[2, 3]]
    Image.new("RGB", (40, 48), "red").save(art)      # new content: redone
    assert plan(job, man, man.add) == [[0, 1], [2, 3]] and job.finished == [True, False, False, False]


def test_plan_refuses_other_settings_and_records_outputs_that_existed(tmp_path):
    from protect_core.errors import StyleCloakError
    from stylecloak_platform.batch import plan
    from stylecloak_platform.work import settings_record

    job = _job(tmp_path)
    man = Manifest(job.manifest)
    job.outputs[2].parent.mkdir(parents=True, exist_ok=True)
    job.outputs[2].write_bytes(b"made by someone else")
    plan(job, man, man.add)
    assert man.get(job.items[2][1])["status"] == "skipped" and job.finished[2]
    other = _job(tmp_path / "b", steps=4)
    man2 = Manifest(other.manifest)
    man2.add({"input": other.items[0][1], "status": "done", "settings": settings_record(job.settings)})
    with pytest.raises(StyleCloakError, match="steps differ"):
        plan(other, man2, man2.add)


def test_bad_requests_are_refused_before_ray_starts(tmp_path):
    src = make_gallery(tmp_path / "src", 1)
    for extra, words in ((["--save-perturbation"], "not available in batch"), (["--retries", "-1"], "--retries"),
                         (["--model", str(tmp_path / "nope")], "no such model"),
                         (["--method", "nonesuch"], "nonesuch")):
        r = subprocess.run([sys.executable, "-m", "protect_core", "batch", str(src), "-o", str(tmp_path / "o"),
                            *extra], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 2, r.stderr
        assert words in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_protect_core_never_imports_ray():
    code = ("import sys, protect_core.cli as c; c.build_parser(); import protect_core.cloak.runner, "
            "protect_core.backends.loading; print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.stdout.strip() == "False", r.stderr


# ----------------------------------------------------------------------------------------------- real Ray
def batch(src, dst, *extra, wait=True):
    cmd = [sys.executable, "-m", "protect_core", "batch", str(src), "-o", str(dst), *FLAGS, *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def wait_for_done(manifest: Path, n: int, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if manifest.is_file() and sum(1 for r in lines(manifest) if r["status"] == "done") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("no progress")


def check_finished(dst: Path, reference: dict, names: list[str]) -> list[dict]:
    recs = lines(dst / "stylecloak-manifest.jsonl")
    assert Counter(r["input"] for r in recs) == Counter(names)    # every input exactly once
    assert digests(dst) == reference                               # complete outputs, the reference's bytes
    assert not [p for p in dst.iterdir() if p.name.startswith(".sc-")]
    return recs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("batch")
    src = make_gallery(root / "src")
    r = batch(src, root / "ref", "--workers", "2")
    assert r.returncode == 1, r.stderr      # the broken file fails; everything else is written
    summary = json.loads(r.stdout)
    assert summary["written"] == 8 and summary["failed"] == 1 and "broken.png" in summary["errors"][0]
    return src, digests(root / "ref"), sorted(p.name for p in src.iterdir()), root


@pytest.mark.slow
def test_batch_job_writes_every_image_within_budget_and_a_rerun_redoes_nothing(reference):
    src, ref, names, root = reference
    recs = check_finished(root / "ref", ref, names)
    done = [r for r in recs if r["status"] == "done"]
    assert len(done) == 8 and all(r["linf_255"] <= 16.01 and r["psnr"] > 25 for r in done)
    assert {r["worker"] for r in done} and all(r["sha256"] and r["output_sha256"] for r in done)
    bad = next(r for r in recs if r["input"] == "broken.png")
    assert bad["status"] == "error" and "broken.png" in bad["error"]
    before = (root / "ref" / "art00.png").stat().st_mtime_ns
    t0 = time.time()
    r = batch(src, root / "ref", "--skip-errors")
    summary = json.loads(r.stdout)
    assert r.returncode == 1 and summary["to_do"] == 0 and summary["written"] == 0
    assert time.time() - t0 < 60 and (root / "ref" / "art00.png").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_killed_worker_does_not_lose_or_duplicate_anything(reference):
    src, ref, names, root = reference
    dst = root / "killed_worker"
    proc = batch(src, dst, "--workers", "2", wait=False)
    wait_for_done(dst / "stylecloak-manifest.jsonl", 1, proc)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    pids = [int(line.split()[0]) for line in ps.splitlines() if "ray::CloakWorker" in line]
    assert pids, ps
    os.kill(pids[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    check_finished(dst, ref, names)


@pytest.mark.slow
def test_a_stopped_or_killed_driver_resumes_from_the_manifest_with_the_same_bytes(reference):
    src, ref, names, root = reference
    dst = root / "killed_driver"
    manifest = dst / "stylecloak-manifest.jsonl"
    proc = batch(src, dst, "--workers", "2", wait=False)       # SIGTERM: a clean stop, exit 143
    wait_for_done(manifest, 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and not [p for p in dst.iterdir() if p.name.startswith(".sc-")]
    first = {r["input"] for r in lines(manifest) if r["status"] == "done"}
    proc = batch(src, dst, "--workers", "2", wait=False)       # SIGKILL: nothing runs on the driver's side
    wait_for_done(manifest, len(first) + 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done_before = {r["input"] for r in lines(manifest) if r["status"] == "done"}
    assert first < done_before and len(done_before) < 8
    r = batch(src, dst, "--workers", "1")     # one worker this time: the bytes do not depend on it
    summary = json.loads(r.stdout)
    assert r.returncode == 1 and summary["already_done"] >= len(done_before)
    assert summary["written"] == 8 - len(done_before)
    check_finished(dst, ref, names)
