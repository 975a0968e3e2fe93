"""Helpers of the real-host tests (A1111 and Forge): the web UI's interpreter, the extension linked into its
``extensions/`` for the length of a test, a random SD 1.5 checkpoint when none is given, and a run of
``tests/webui_driver.py`` or of the web UI's own ``launch.py`` in a subprocess. Nothing here downloads."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: CPU, full precision, no start-up downloads or version checks (A1111 flags; Forge's are added by forge_args)
A1111_ARGS = ["--skip-torch-cuda-test", "--use-cpu", "all", "--no-half", "--no-half-vae", "--precision", "full",
              "--skip-version-check", "--no-download-sd-model"]
FORGE_ARGS = ["--skip-torch-cuda-test", "--always-cpu", "--all-in-fp32", "--skip-version-check",
              "--no-download-sd-model"]


def webui_python(root: Path, env_name: str) -> str:
    """``$env_name`` (e.g. FORGE_PYTHON), else the checkout's ``venv``, else this interpreter."""
    if os.environ.get(env_name):
        return os.environ[env_name]
    for cand in (root / "venv" / "bin" / "python", root / "venv" / "Scripts" / "python.exe"):
        if cand.exists():
            return str(cand)
    return sys.executable


@contextlib.contextmanager
def linked_extension(root: Path):
    """This repository as ``extensions/_stylecloak_test`` of the web UI (unless it is linked there already)."""
    ext = root / "extensions"
    linked = ext.is_dir() and any(p.resolve() == ROOT for p in ext.iterdir())
    link = ext / "_stylecloak_test"
    if not linked:
        ext.mkdir(exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(ROOT, target_is_directory=True)
    try:
        yield
    finally:
        if not linked and link.is_symlink():
            link.unlink()


def random_sd15(folder: Path) -> Path:
    """An SD 1.5-shaped random checkpoint (tools/make_random_checkpoint.py), made with this interpreter."""
    path = folder / "sd15_random.safetensors"
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_random_checkpoint.py"), "--kind", "sd15",
                        str(path)], check=True, capture_output=True, timeout=900)
    return path


def child_env(**extra) -> dict:
    """The web UI's environment: offline (HF_HUB_OFFLINE from tests/conftest.py), two threads, no PYTHONPATH."""
    env = {**os.environ, "IGNORE_CMD_ARGS_ERRORS": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "2",
           "MKL_NUM_THREADS": "2", **extra}
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def run_driver(root: Path, python: str, args: list[str], tmp: Path, image: Path, jobs: list[str],
               timeout: int = 2400) -> tuple[dict, str]:
    """Run tests/webui_driver.py in the web UI; (its result, the output tail for failure messages)."""
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"args": args, "out": str(tmp / "out"), "image": str(image), "jobs": jobs}))
    with linked_extension(root):
        run = subprocess.run([python, str(ROOT / "tests" / "webui_driver.py"), str(spec)], cwd=root, env=child_env(),
                             capture_output=True, text=True, timeout=timeout)
    tail = run.stdout[-4000:] + run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("STYLECLOAK-RESULT ")]
    if run.returncode != 0 or not lines:
        raise AssertionError(f"the web UI run failed (exit {run.returncode}):\n{tail}")
    return json.loads(lines[-1].split(" ", 1)[1]), tail


def git_version(root: Path) -> str:
    """'<commit> (<describe>)' of a checkout, for the test log; '?' when git cannot tell."""
    try:
        out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %cs"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        return out or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"
