"""End to end in a real Automatic1111 checkout (skipped unless ``A1111_PATH`` is set).

Set ``A1111_PATH`` to a working A1111 folder (its ``repositories/`` installed and a checkpoint in
``models/Stable-diffusion``; ``A1111_CKPT`` picks one, ``A1111_PYTHON`` the interpreter, default its ``venv``).
The test links this extension into ``extensions/`` (removed afterwards), starts A1111's initialisation on the CPU in
a subprocess, which loads the extension's scripts like the web UI does, builds every extension tab, then runs a
one-step cloak through the StyleCloak tab's handler and the web UI's own GPU queue, and checks the written PNG and
that the loaded model's fingerprint is unchanged.

The subprocess inherits this environment, ``HF_HUB_OFFLINE=1`` (tests/conftest.py) and ``HF_HOME`` included: A1111
reads the ``openai/clip-vit-large-patch14`` tokenizer and text config from the Hugging Face cache, which holds them
once the web UI has started with network access; offline, ``tools/a1111_offline_cache.py`` writes them. A random
SD 1.5 checkpoint for ``models/Stable-diffusion`` comes from ``tools/make_random_checkpoint.py --kind sd15``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
A1111 = os.environ.get("A1111_PATH")

pytestmark = [pytest.mark.host, pytest.mark.slow, pytest.mark.skipif(not A1111, reason="set A1111_PATH to a real A1111 checkout")]

SCRIPT = r"""
import json, os, sys
sys.argv = ["webui.py", "--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--no-half-vae",
            "--precision", "full", "--skip-version-check", "--no-download-sd-model"] + ARGS
sys.path.insert(0, os.getcwd())
from modules import initialize
initialize.imports()
initialize.initialize()
from modules import script_callbacks, shared
names = [t[1] for t in script_callbacks.ui_tabs_callback()]
import sdwebui.ui as ui
from sdwebui.bridge import current_host, gpu_call
from protect_core.integrity import diff_fingerprints, fingerprint
shared.opts.data["stylecloak_outdir"] = OUT
host = current_host()
before = fingerprint(host.host_modules())
click = gpu_call(ui.cloak_click, 4)
gallery, files, report, status = click("task(stylecloak-test)", [IMAGE], "", "mist", "low", "", False, 1, 4, 0, "")
print("STYLECLOAK-RESULT " + json.dumps({
    "tabs": names, "status": status, "files": files, "family": host.family,
    "changed": diff_fingerprints(before, fingerprint(host.host_modules()))}))
"""


def _python(root: Path) -> str:
    if os.environ.get("A1111_PYTHON"):
        return os.environ["A1111_PYTHON"]
    for cand in (root / "venv" / "bin" / "python", root / "venv" / "Scripts" / "python.exe"):
        if cand.exists():
            return str(cand)
    return sys.executable


def test_cloak_in_a_real_a1111(tmp_path):
    import numpy as np
    from PIL import Image

    root = Path(A1111).expanduser().resolve()
    if not (root / "modules" / "script_callbacks.py").exists():
        pytest.fail(f"A1111_PATH={root} is not an Automatic1111 checkout (no modules/script_callbacks.py)")
    image = tmp_path / "art.png"
    Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(image)
    ext = root / "extensions"
    linked = any(p.resolve() == ROOT for p in ext.iterdir()) if ext.is_dir() else False
    link = ext / "_stylecloak_test"
    args = ["--ckpt", os.environ["A1111_CKPT"]] if os.environ.get("A1111_CKPT") else []
    script = (SCRIPT.replace("ARGS", repr(args)).replace("OUT", repr(str(tmp_path / "out")))
              .replace("IMAGE", repr(str(image))))
    if not linked:
        ext.mkdir(exist_ok=True)
        link.symlink_to(ROOT, target_is_directory=True)
    try:
        env = {**os.environ, "IGNORE_CMD_ARGS_ERRORS": "1", "PYTHONPATH": ""}
        run = subprocess.run([_python(root), "-c", script], cwd=root, env=env, capture_output=True, text=True,
                             timeout=1500)
    finally:
        if not linked:
            link.unlink()
    lines = [l for l in run.stdout.splitlines() if l.startswith("STYLECLOAK-RESULT ")]
    assert run.returncode == 0 and lines, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(lines[-1].split(" ", 1)[1])
    assert "StyleCloak" in result["tabs"]
    assert "Cloaked 1 image(s)" in result["status"], result["status"]
    pngs = [Path(f) for f in result["files"] if f.endswith(".png")]
    assert len(pngs) == 1 and Image.open(pngs[0]).size == (64, 64)
    # The cloak changed the pixels, within the L-inf budget asked for (4 levels), on the web UI's model.
    shift = np.abs(np.asarray(Image.open(pngs[0]).convert("RGB"), dtype=np.int16)
                   - np.asarray(Image.open(image), dtype=np.int16))
    assert 0 < shift.max() <= 4
    report = json.loads(next(Path(f) for f in result["files"] if f.endswith("report.json")).read_text())
    assert report["model"]["host"] == "automatic1111"
    assert result["changed"] == []
