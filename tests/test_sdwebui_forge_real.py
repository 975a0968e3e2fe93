"""End to end in a real Forge checkout (skipped unless ``FORGE_PATH`` is set).

``FORGE_PATH``: a Forge folder (lllyasviel/stable-diffusion-webui-forge, or a descendant of the same shape such as
Haoming02/sd-webui-forge-classic) with its ``repositories/`` in place and its requirements installed;
``FORGE_PYTHON``: its interpreter (default its ``venv``); ``FORGE_CKPT``: an SD 1.x checkpoint (default: an SD 1.5
-shaped random one made here by ``tools/make_random_checkpoint.py --kind sd15``; nothing is downloaded).

The test links this extension into the checkout's ``extensions/`` (removed afterwards) and runs
``tests/webui_driver.py`` in Forge's interpreter: Forge's own initialisation on the CPU (``--always-cpu
--all-in-fp32``), which loads the extension's scripts; every extension tab is built; then a one-step cloak, a short
purify and a short mimicry test are clicked through the tab's handlers and the web UI's queue (Forge's
``wrap_gradio_gpu_call`` and its main model thread), and a long cloak is stopped with ``shared.state.interrupt()``
(the Interrupt button). The loaded model's fingerprint (weights, flags, hooks, device, dtype), taken after one prompt
through Forge's own ``get_learned_conditioning`` (Forge's text engine converts the CLIP embeddings to float32 on its
first encode, as on a first txt2img), must be unchanged after each job.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui_real import FORGE_ARGS, git_version, random_sd15, run_driver, webui_python

FORGE = os.environ.get("FORGE_PATH")

pytestmark = [pytest.mark.host, pytest.mark.slow,
              pytest.mark.skipif(not FORGE, reason="set FORGE_PATH to a real Forge checkout")]


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def forge_run(tmp_path_factory):
    root = Path(FORGE).expanduser().resolve()
    if not (root / "modules_forge").is_dir() or not (root / "modules" / "script_callbacks.py").exists():
        pytest.fail(f"FORGE_PATH={root} is not a Forge checkout (no modules_forge/ or modules/script_callbacks.py)")
    tmp = tmp_path_factory.mktemp("forge")
    ckpt = Path(os.environ["FORGE_CKPT"]) if os.environ.get("FORGE_CKPT") else random_sd15(tmp)
    image = tmp / "art.png"
    Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(image)
    result, tail = run_driver(root, webui_python(root, "FORGE_PYTHON"), FORGE_ARGS + ["--ckpt", str(ckpt)], tmp,
                              image, ["cloak", "purify", "mimicry", "interrupt"])
    times = {k: result[k]["seconds"] for k in ("cloak", "purify", "mimicry", "interrupt") if k in result}
    print(f"\nForge {git_version(root)}: start-up {result['init_seconds']} s, jobs {times} s, all {result['seconds']} s")
    if not os.environ.get("FORGE_CKPT"):
        ckpt.unlink()
    return result, image, tail


def _report(files) -> dict:
    return json.loads(next(Path(f) for f in files if f.endswith("report.json")).read_text())


def test_tab_is_built_and_sees_the_forge_model(forge_run):
    result, _, tail = forge_run
    assert result["forge"] and "StyleCloak" in result["tabs"], tail
    assert result["family"] == "sd15" and result["describe"]["host"] == "forge"


def test_cloak(forge_run):
    result, image, tail = forge_run
    cloak = result["cloak"]
    assert "Cloaked 1 image(s)" in cloak["status"], cloak["status"] + tail
    pngs = [f for f in cloak["files"] if f.endswith(".png")]
    assert len(pngs) == 1 and Image.open(pngs[0]).size == Image.open(image).size
    shift = np.abs(_pixels(pngs[0]) - _pixels(image))
    assert 0 < shift.max() <= 4  # changed, within the L-inf budget asked for (4 levels)
    report = _report(cloak["files"])
    assert report["method"] == "mist" and report["model"]["host"] == "forge"
    assert result["changed"]["cloak"] == []


def test_purify(forge_run):
    result, _, tail = forge_run
    purify, cloaked = result["purify"], next(f for f in result["cloak"]["files"] if f.endswith(".png"))
    assert "Purified 1 image(s) with impress" in purify["status"], purify["status"] + tail
    png = next(f for f in purify["files"] if f.endswith(".png"))
    assert Image.open(png).size == Image.open(cloaked).size and np.any(_pixels(png) != _pixels(cloaked))
    assert _report(purify["files"])["chain"][0][0] == "impress"
    assert result["changed"]["purify"] == []


def test_mimicry_test(forge_run):
    result, _, tail = forge_run
    mimicry = result["mimicry"]
    assert "Mimicry test verdict" in mimicry["status"], mimicry["status"] + tail
    assert sorted(Path(f).name for f in mimicry["files"]) == ["report.json", "report.png"]
    report = _report(mimicry["files"])
    assert report["verdict"] and "cloaked" in json.dumps(report["conditions"])
    assert result["changed"]["mimicry"] == []


def test_interrupt_stops_a_long_cloak_and_leaves_no_files(forge_run):
    result, _, tail = forge_run
    stop = result["interrupt"]
    assert not stop["alive"] and "Interrupted" in stop["status"], json.dumps(stop) + tail
    assert 2 <= stop["steps_before"] < stop["of"]  # it was running, and stopped before its end
    assert stop["new_entries"] == []  # no job folder, no hidden staging folder
    assert result["changed"]["interrupt"] == []
