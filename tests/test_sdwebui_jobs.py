"""The tab's jobs on an A1111-shaped tiny model: files written (lossless PNG), progress and previews through a
``shared.state`` stand-in, the Interrupt button, and the borrowed model unchanged after success, error and cancel."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ldm_tiny import a1111_model  # noqa: F401 (fixtures)
from protect_core.errors import Cancelled, StyleCloakError
from sdwebui import jobs
from sdwebui.a1111_host import A1111Host
from sdwebui.bridge import show_preview, state_progress

_host = {}


def tiny_host():
    if "h" not in _host:
        _host["h"] = A1111Host(a1111_model("tiny")[0])
    return _host["h"]


class FakeState:
    """The fields of A1111's shared.state a job touches."""

    def __init__(self, interrupt_at: int | None = None):
        self.interrupted, self.interrupt_at, self.images, self.steps = False, interrupt_at, [], []

    def assign_current_image(self, image):
        self.images.append(image)

    def __setattr__(self, key, value):
        super().__setattr__(key, value)
        if key == "sampling_step":
            self.steps.append(value)
            if self.interrupt_at is not None and value >= self.interrupt_at:
                super().__setattr__("interrupted", True)  # the user presses Interrupt during step `value`


@pytest.fixture
def art(tmp_path):
    """Two small artworks (one RGBA, one 40x56 so it needs padding) in an input folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    g = np.random.default_rng(0)
    Image.fromarray(g.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA").save(folder / "a.png")
    Image.fromarray(g.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / "b.png")
    return folder


def _cloak(art, out, state=None, **kw):
    progress = state_progress(state, "cloak") if state is not None else None
    on_image = (lambda i, r: show_preview(state, r.image)) if state is not None else None
    return jobs.cloak_job(tiny_host, jobs.gather_inputs([], str(art)), out_root=out, method="mist", steps=3,
                          seed=1, progress=progress, on_image=on_image, **kw)


def test_cloak_writes_lossless_pngs_and_reports_progress(art, tmp_path, integrity):
    check = integrity(tiny_host())
    state = FakeState()
    result = _cloak(art, tmp_path / "out", state)
    check.assert_unchanged()
    assert result.folder.parent == tmp_path / "out" and result.folder.is_dir()
    assert sorted(p.name for p in result.files) == ["a.png", "b.png", "report.json"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == [result.folder.name]  # no staging folder left
    report = json.loads((result.folder / "report.json").read_text())
    assert [r["output"] for r in report["images"]] == ["a.png", "b.png"]
    a = Image.open(result.folder / "a.png")
    assert a.mode == "RGBA" and a.size == (64, 64)  # alpha kept
    b = Image.open(result.folder / "b.png")
    assert b.size == (56, 40)
    cloaked, _ = result.gallery[2]  # gallery: (cloaked, change) per image
    assert np.array_equal(np.asarray(b.convert("RGB")), np.asarray(cloaked))  # PNG holds exactly the result
    clean = np.asarray(Image.open(art / "b.png")).astype(int)
    eps = report["settings"]["eps"]
    assert np.abs(np.asarray(b).astype(int) - clean).max() <= round(eps * 255) + 1
    assert not np.array_equal(np.asarray(b), clean)
    assert state.steps[-1] == state.sampling_steps > 0 and state.steps == sorted(state.steps)
    assert len(state.images) == 2  # one live preview per finished image
    assert "StyleCloak" in state.textinfo


def test_interrupt_leaves_no_files_and_the_model_unchanged(art, tmp_path, integrity):
    check = integrity(tiny_host())
    state = FakeState(interrupt_at=2)
    with pytest.raises(Cancelled):
        _cloak(art, tmp_path / "out", state)
    check.assert_unchanged()
    assert state.steps[-1] == 2  # stopped within one step of the button
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_error_midway_leaves_no_files_and_the_model_unchanged(art, tmp_path, integrity):
    check = integrity(tiny_host())

    def boom(i, result):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        jobs.cloak_job(tiny_host, jobs.gather_inputs([], str(art)), out_root=tmp_path / "out", method="mist",
                       steps=2, on_image=boom)
    check.assert_unchanged()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_write_failure_removes_the_staging_folder(tmp_path):
    def write(folder):
        (folder / "half.png").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        jobs.write_job(tmp_path, "cloak", write)
    assert list(tmp_path.iterdir()) == []


def test_layer_selection_feeds_the_cloak(art, tmp_path, integrity):
    check = integrity(tiny_host())
    res = jobs.layers_job(tiny_host, jobs.gather_inputs([], str(art)), out_root=tmp_path / "out", top_k=2,
                          timesteps="300,700", noise_seeds=1, size=64)
    assert res.report["settings"]["score"] == "causal"  # the engine's default
    path = res.report["selection_path"]
    assert sorted(p.name for p in res.files) == ["heatmap.png", "layers.json"]
    chosen = json.loads(open(path).read())["layers"]
    assert len(chosen) == 2 and all(n in {l.name for l in tiny_host().cross_attention_layers()} for n in chosen)
    out = jobs.cloak_job(tiny_host, jobs.gather_inputs([], str(art)), out_root=tmp_path / "out",
                         method="styleprotect", steps=2, layers=path)
    assert out.report["settings"]["layers"] == chosen
    check.assert_unchanged()


def test_layer_job_uses_the_chosen_score(art, tmp_path):
    res = jobs.layers_job(tiny_host, jobs.gather_inputs([], str(art)), out_root=tmp_path / "out", top_k=2,
                          timesteps="300", noise_seeds=1, size=64, score="activation")
    assert res.report["settings"]["score"] == "activation"
    assert json.loads(open(res.report["selection_path"]).read())["settings"]["score"] == "activation"


def test_filter_purify_never_asks_for_a_model(art, tmp_path):
    def no_model():
        raise AssertionError("a filter chain must not borrow the model")

    res = jobs.purify_job(no_model, jobs.gather_inputs([], str(art)), out_root=tmp_path, chain="jpeg,gaussian_blur")
    assert sorted(p.name for p in res.files) == ["a.png", "b.png", "report.json"]
    assert Image.open(res.folder / "a.png").mode == "RGBA"
    with pytest.raises(ValueError, match="JSON"):
        jobs.parse_chain("", "jpeg", "{quality: 5}")


def test_inputs_from_gradio3_and_gradio4_uploads(art):
    g3 = [SimpleNamespace(name=str(art / "a.png"))]  # Gradio 3 hands tempfile wrappers
    g4 = [str(art / "b.png")]                       # Gradio 4 hands paths
    assert [p.name for p in jobs.gather_inputs(g3 + g4, "")] == ["a.png", "b.png"]
    with pytest.raises(StyleCloakError, match="no input images"):
        jobs.gather_inputs(None, "  ")


def test_bad_settings_are_clear_errors(art, tmp_path):
    inputs = jobs.gather_inputs([], str(art))
    with pytest.raises(ValueError, match="unknown"):
        jobs.cloak_job(tiny_host, inputs, out_root=tmp_path, method="nope")
    with pytest.raises(StyleCloakError, match="cannot read layer selection"):
        jobs.cloak_job(tiny_host, inputs, out_root=tmp_path, method="mist", steps=1, layers=str(tmp_path / "x.json"))
    assert not any(tmp_path.glob("*cloak*"))


def test_mimicry_job_writes_the_report_card(art, tmp_path, integrity):
    check = integrity(tiny_host())
    inputs = jobs.gather_inputs([], str(art))
    res = jobs.mimicry_job(tiny_host, inputs, {"cloaked": inputs}, out_root=tmp_path, steps=2, samples=1,
                           resolution=64, sample_steps=2, reference_samples=1, batch_size=1, memory="balanced",
                           progress=state_progress(FakeState(), "mimicry"))
    check.assert_unchanged()
    assert sorted(p.name for p in res.files) == ["report.json", "report.png"]
    assert res.report["verdict"] and Image.open(res.folder / "report.png").size[0] > 64
    assert res.report["memory"]["name"] == "balanced" and "[memory: balanced]" in res.summary


# ------------------------------------------------------------------------------------------------------ memory
def test_cloak_job_runs_in_the_chosen_memory_mode(art, tmp_path, integrity):
    from protect_core.memory import MODES

    check = integrity(tiny_host())
    chosen = _cloak(art, tmp_path / "a", memory="balanced")
    default = _cloak(art, tmp_path / "b")
    check.assert_unchanged()
    saved = json.loads((chosen.folder / "report.json").read_text())
    assert saved["memory"] == "balanced" and [r["memory"]["name"] for r in saved["images"]] == ["balanced"] * 2
    assert "[memory: balanced]" in chosen.summary
    assert default.report["memory"] == "auto"
    (used,) = {r["memory"]["name"] for r in default.report["images"]}
    assert used in MODES and f"[memory: {used}]" in default.summary, "auto resolves to a mode, said in the summary"
    with pytest.raises(ValueError, match="unknown memory mode"):
        _cloak(art, tmp_path / "c", memory="huge")


def test_purify_job_runs_in_the_chosen_memory_mode(art, tmp_path, integrity):
    check = integrity(tiny_host())
    inputs = jobs.gather_inputs([], str(art))
    res = jobs.purify_job(tiny_host, inputs, out_root=tmp_path, method="impress", params='{"iterations": 2}',
                          memory="low")
    check.assert_unchanged()
    assert res.report["memory"] == "low" and [r["memory"]["name"] for r in res.report["images"]] == ["low"] * 2
    assert "[memory: low]" in res.summary
    filters = jobs.purify_job(tiny_host, inputs, out_root=tmp_path, chain="jpeg", memory="low")
    assert [r["memory"] for r in filters.report["images"]] == [None, None] and "memory" not in filters.summary


@pytest.mark.parametrize("job, engine", [("cloak_job", "protect_core.cloak.runner.cloak_images"),
                                         ("purify_job", "protect_core.purify.base.purify"),
                                         ("mimicry_job", "protect_core.mimicry.runner.run_mimicry_test")])
def test_jobs_pass_the_memory_mode_to_the_engine(monkeypatch, art, tmp_path, job, engine):
    module, name = engine.rsplit(".", 1)
    seen = []

    class Recorded(Exception):
        pass

    def record(*args, **kwargs):
        seen.append(kwargs.get("memory", "<not given>"))
        raise Recorded

    monkeypatch.setattr(f"{module}.{name}", record)
    inputs = jobs.gather_inputs([], str(art))
    call = {"cloak_job": lambda **kw: jobs.cloak_job(tiny_host, inputs, out_root=tmp_path, method="mist", **kw),
            "purify_job": lambda **kw: jobs.purify_job(tiny_host, inputs, out_root=tmp_path, chain="jpeg", **kw),
            "mimicry_job": lambda **kw: jobs.mimicry_job(tiny_host, inputs, {"cloaked": inputs}, out_root=tmp_path,
                                                         **kw)}[job]
    for kw in ({}, {"memory": "fast"}, {"memory": "low"}):
        with pytest.raises(Recorded):
            call(**kw)
    assert seen == ["auto", "fast", "low"]
    assert not any(tmp_path.glob("*-*")), "nothing written"


def test_memory_used_says_which_mode_ran_and_any_fallback():
    assert jobs.memory_used([None, None]) == ""
    assert jobs.memory_used([{"name": "fast", "fallbacks": []}] * 2) == " [memory: fast]"
    both = [{"name": "fast", "fallbacks": []}, {"name": "low", "fallbacks": ["out of memory in balanced"]}]
    assert jobs.memory_used(both) == " [memory: fast, low, after out-of-memory]"


def test_instant_cloak_from_the_tab_finds_the_generator_of_the_loaded_model(art, tmp_path, integrity, monkeypatch):
    """The one-pass method in the tab: a generator trained for the loaded model, found through
    STYLECLOAK_GENERATOR_PATH by its probe; files within the budget, the model unchanged."""
    import torch

    from protect_core.generator.store import ENV_PATH, model_probe, save_generator
    from protect_core.generator.train import TrainSettings, train_generator

    host = tiny_host()
    check = integrity(host)
    ts = TrainSettings(steps=4, batch_size=2, width=8, depth=1, lr=2e-2, perceptual_budget=None, objective="photoguard")
    pool = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    net, _, _ = train_generator(host, pool, ts)
    with host.borrowed():
        probe = model_probe(host)
    save_generator(tmp_path / "gens" / "generator.safetensors", net, probe, {"eps": ts.eps, "objective": "photoguard"})
    monkeypatch.setenv(ENV_PATH, str(tmp_path / "gens"))
    result = jobs.cloak_job(tiny_host, jobs.gather_inputs([], str(art)), out_root=tmp_path / "out", method="instant",
                            eps255=8)
    check.assert_unchanged()
    report = json.loads((result.folder / "report.json").read_text())
    assert report["method"] == "instant" and len(report["images"]) == 2
    clean = np.asarray(Image.open(art / "b.png")).astype(int)
    cloaked = np.asarray(Image.open(result.folder / "b.png")).astype(int)
    assert 0 < np.abs(cloaked - clean).max() <= 8
