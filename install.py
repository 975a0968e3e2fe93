"""Install StyleCloak's missing dependencies into the host's Python, never touching torch.

Run by ComfyUI-Manager and by Automatic1111/Forge when the extension loads. Two policies:

* Automatic1111 / Forge (their ``launch`` module with ``run_pip`` is importable): the web UI ships and pins its own
  torch, diffusers, transformers and huggingface_hub, and upgrading any of them can break it. Only the small
  packages in ``A1111_INSTALLABLE`` (pillow, numpy, tqdm, safetensors) are checked, and only when they are absent
  altogether are they installed, through the web UI's own ``launch.run_pip``. A present-but-older version is left
  alone (with a note): the web UI chose it. The StyleCloak tab works on the web UI's loaded model and does not need
  diffusers; ``HOST_OWNED`` packages are never named to pip on this path, whatever the list says.
* ComfyUI / plain pip: every package of requirements.txt that is missing or older than its minimum is installed
  with ``pip install -c constraints``, the constraints pinning the installed torch so pip can never replace it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: What the A1111/Forge path may install, and only when absent.
A1111_INSTALLABLE = ("pillow", "numpy", "tqdm", "safetensors")
#: What belongs to the web UI: never installed or upgraded on the A1111/Forge path.
HOST_OWNED = ("torch", "torchvision", "torchaudio", "xformers", "diffusers", "transformers", "huggingface_hub",
              "accelerate", "tokenizers")


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]


def package_name(req: str) -> str:
    """The normalised distribution name of a requirement line ("Pillow>=10" -> "pillow", "huggingface-hub" ->
    "huggingface_hub")."""
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower().replace("-", "_").replace(".", "_")


def _version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing(reqs: list[str]) -> list[str]:
    """Requirements that are absent or older than their ``>=`` minimum (the ComfyUI / pip policy)."""
    todo = []
    for req in reqs:
        name, _, minimum = req.partition(">=")
        have = _installed(name.strip())
        if have is None or (minimum and _version_tuple(have) < _version_tuple(minimum)):
            todo.append(req)
    return todo


def a1111_plan(reqs: list[str]) -> tuple[list[str], list[str]]:
    """(requirements to install, notes) under A1111/Forge: only absent ``A1111_INSTALLABLE`` packages."""
    todo, notes = [], []
    for req in reqs:
        name = package_name(req)
        have = _installed(name)
        _, _, minimum = req.partition(">=")
        if name not in A1111_INSTALLABLE:
            if have is None:
                notes.append(f"{name} is not installed and is left to the web UI (StyleCloak never installs it "
                             "here; the StyleCloak tab uses the web UI's loaded model and does not need it)")
            continue
        if have is None:
            todo.append(req)
        elif minimum and _version_tuple(have) < _version_tuple(minimum):
            notes.append(f"{name} {have} is older than the tested {minimum}; left as the web UI installed it")
    return todo, notes


def _torch_constraint() -> list[str]:
    have = _installed("torch")
    return [f"torch=={have}"] if have else []


def _a1111_launch():
    """A1111/Forge's ``launch`` module when this runs as their extension installer, else None."""
    try:
        import launch  # type: ignore
    except ImportError:
        return None
    return launch if callable(getattr(launch, "run_pip", None)) else None


def install_a1111(todo: list[str], launch) -> list[str]:
    """Install through ``launch.run_pip``; anything host-owned or outside ``A1111_INSTALLABLE`` is dropped first.
    Returns what was handed to pip."""
    safe = [r for r in todo if package_name(r) in A1111_INSTALLABLE and package_name(r) not in HOST_OWNED]
    for req in safe:
        launch.run_pip(f'install "{req}"', f"StyleCloak requirement: {req}")
    return safe


def install(todo: list[str]) -> None:
    """Plain pip into this interpreter with the installed torch pinned (the ComfyUI / pip policy)."""
    if not todo:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(_torch_constraint()) + "\n")
        constraints = f.name
    try:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-c", constraints, *todo])
    finally:
        os.unlink(constraints)


def main() -> int:
    launch = _a1111_launch()
    if launch is not None:
        todo, notes = a1111_plan(requirements())
        for note in notes:
            print(f"StyleCloak: {note}")
        print("StyleCloak: nothing to install for the web UI" if not todo
              else f"StyleCloak: installing {', '.join(todo)} (the web UI's torch/diffusers/transformers are left "
                   "alone)")
        install_a1111(todo, launch)
        return 0
    todo = missing(requirements())
    print("StyleCloak: all requirements present" if not todo else f"StyleCloak: installing {', '.join(todo)}")
    install(todo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
