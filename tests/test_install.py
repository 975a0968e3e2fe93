"""install.py installs only what is missing, never torch, and pins the host's torch while doing it."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("stylecloak_install", ROOT / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_requirements_never_list_torch():
    inst = _load()
    names = [r.split(">=")[0].split("==")[0].strip().lower() for r in inst.requirements()]
    assert names and "torch" not in names and "torchvision" not in names


def test_only_missing_or_old_packages_are_installed(monkeypatch):
    inst = _load()
    versions = {"diffusers": "0.42.1", "transformers": "4.30.0"}

    def fake_version(name):
        if name in versions:
            return versions[name]
        raise inst.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(inst.metadata, "version", fake_version)
    todo = inst.missing(["diffusers>=0.30", "transformers>=4.40", "pillow>=10.0"])
    assert todo == ["transformers>=4.40", "pillow>=10.0"]


def test_pip_gets_torch_pinned(monkeypatch):
    inst = _load()
    calls = []
    monkeypatch.setattr(inst.subprocess, "check_call", lambda cmd: calls.append(
        (cmd, Path(cmd[cmd.index("-c") + 1]).read_text())))
    monkeypatch.setattr(inst, "_torch_constraint", lambda: ["torch==9.9.9"])
    inst.install(["pillow>=10.0"])
    cmd, constraints = calls[0]
    assert "pillow>=10.0" in cmd and "torch==9.9.9" in constraints
    inst.install([])
    assert len(calls) == 1
