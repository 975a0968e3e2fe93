"""Install StyleCloak's missing dependencies into the host's Python, never touching torch.

Run by ComfyUI-Manager and by Automatic1111/Forge when the extension loads. Only packages from requirements.txt
that are missing (or too old) are installed, with the host's installed torch pinned as a constraint so pip can never
replace it. In A1111/Forge the host's own ``launch.run_pip`` is used.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]


def _version_tuple(v: str) -> tuple:
    out = []
    for part in v.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def missing(reqs: list[str]) -> list[str]:
    todo = []
    for req in reqs:
        name, _, minimum = req.partition(">=")
        try:
            have = metadata.version(name.strip())
        except metadata.PackageNotFoundError:
            todo.append(req)
            continue
        if minimum and _version_tuple(have) < _version_tuple(minimum):
            todo.append(req)
    return todo


def _torch_constraint() -> list[str]:
    try:
        return [f"torch=={metadata.version('torch')}"]
    except metadata.PackageNotFoundError:
        return []


def install(todo: list[str]) -> None:
    if not todo:
        return
    try:  # Automatic1111 / Forge
        import launch  # type: ignore

        for req in todo:
            launch.run_pip(f'install "{req}"', f"StyleCloak requirement: {req}")
        return
    except ImportError:
        pass
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(_torch_constraint()) + "\n")
        constraints = f.name
    try:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-c", constraints, *todo])
    finally:
        os.unlink(constraints)


def main() -> int:
    todo = missing(requirements())
    print("StyleCloak: all requirements present" if not todo else f"StyleCloak: installing {', '.join(todo)}")
    install(todo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
