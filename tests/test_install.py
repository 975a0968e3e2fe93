"""install.py installs only what is missing, never torch, and pins the host's torch while doing it; under
Automatic1111/Forge it installs only absent pillow/numpy/tqdm/safetensors and never names the web UI's packages."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest

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


# ---- Automatic1111 / Forge: only absent pillow/numpy/tqdm/safetensors, never the web UI's own packages ------------
HOST_OWNED = {"torch", "torchvision", "diffusers", "transformers", "huggingface_hub", "huggingface-hub"}


class FakeLaunch:
    """Stands in for A1111/Forge's ``launch`` module (``run_pip(command, desc)``)."""

    def __init__(self):
        self.commands = []

    def run_pip(self, command, desc=None):
        self.commands.append(command)


def _a1111(monkeypatch, installed):
    inst = _load()
    launch = FakeLaunch()
    monkeypatch.setitem(sys.modules, "launch", launch)

    def fake_version(name):
        key = name.lower().replace("-", "_")
        if key in installed:
            return installed[key]
        raise inst.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(inst.metadata, "version", fake_version)
    monkeypatch.setattr(inst.subprocess, "check_call", lambda *a, **k: pytest.fail(f"plain pip used under A1111: {a}"))
    return inst, launch


def _named(commands):
    return {inst_name for c in commands for inst_name in re.findall(r"[A-Za-z_][A-Za-z0-9_.-]*", c)}


@pytest.mark.parametrize("installed", [
    {},  # nothing at all: still never torch/diffusers/transformers/huggingface_hub
    {"diffusers": "0.10.0", "transformers": "4.1.0", "huggingface_hub": "0.1.0", "torch": "1.13.0"},  # all too old
    {"pillow": "9.5.0", "numpy": "1.23.5", "tqdm": "4.0.0"},  # old but present: left alone
])
def test_a1111_never_names_host_packages_to_pip(monkeypatch, capsys, installed):
    inst, launch = _a1111(monkeypatch, installed)
    reqs = inst.requirements() + ["huggingface_hub>=0.20", "torch>=2.0"]  # even if the list ever named them
    monkeypatch.setattr(inst, "requirements", lambda: reqs)
    assert inst.main() == 0
    named = {n.lower() for n in _named(launch.commands)}
    assert not named & HOST_OWNED, launch.commands
    expected = {n for n in ("pillow", "numpy", "tqdm", "safetensors") if n not in installed}
    assert {inst.package_name(c.split('"')[1]) for c in launch.commands} == expected
    out = capsys.readouterr().out
    if "pillow" in installed:
        assert "left as the web UI installed it" in out  # an older numpy/pillow is reported, not upgraded


def test_a1111_with_everything_present_runs_no_pip(monkeypatch, capsys):
    inst, launch = _a1111(monkeypatch, {n: "99.0" for n in ("pillow", "numpy", "tqdm", "safetensors", "diffusers",
                                                             "transformers")})
    assert inst.main() == 0 and launch.commands == []
    assert "nothing to install" in capsys.readouterr().out


def test_a1111_installer_drops_host_owned_requirements_even_if_asked(monkeypatch):
    inst, launch = _a1111(monkeypatch, {})
    handed = inst.install_a1111(["diffusers>=0.30", "torch", "transformers>=4.40", "huggingface-hub",
                                 "tqdm>=4.60"], launch)
    assert handed == ["tqdm>=4.60"] and launch.commands == ['install "tqdm>=4.60"']


def test_without_launch_the_pip_path_is_used(monkeypatch):
    inst = _load()
    monkeypatch.setitem(sys.modules, "launch", None)  # import launch -> ImportError
    assert inst._a1111_launch() is None
    calls = []
    monkeypatch.setattr(inst, "missing", lambda reqs: ["diffusers>=0.30"])
    monkeypatch.setattr(inst, "install", lambda todo: calls.append(todo))
    assert inst.main() == 0 and calls == [["diffusers>=0.30"]]


def test_package_name_normalises():
    inst = _load()
    assert [inst.package_name(r) for r in ("Pillow>=10.0", "huggingface-hub", "numpy", "tqdm ; python_version>'3'")] \
        == ["pillow", "huggingface_hub", "numpy", "tqdm"]
