"""The one-pass cloak (issue 22): its network, its file, its training (learns, leaves the model unchanged, resumes to
the same bytes) and the ``instant`` method (budgets, quantisation, tiles, greyscale, refinement, the wrong model's
generator refused), on the 32 px toy world."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from protect_core.cloak.base import get_method
from protect_core.cloak.presets import settings_for
from protect_core.cloak.runner import cloak_images
from protect_core.errors import Cancelled, StyleCloakError
from protect_core.generator.network import CloakNet
from protect_core.generator.store import (find_for_host, load_generator, model_probe, read_meta, save_generator)
from protect_core.generator.train import TrainSettings, train_generator
from protect_core.progress import Progress

@pytest.fixture
def no_model(monkeypatch):
    """Bad requests are refused before any model loads."""
    from protect_core.backends import loading
    from protect_core.errors import ModelError

    def refuse(*a, **k):
        raise ModelError("TEST: the model loader was called")

    monkeypatch.setattr(loading, "load_host", refuse)


QUICK = dict(steps=24, batch_size=4, width=8, depth=1, lr=2e-3)


@pytest.fixture(scope="module")
def toy():
    from protect_core.worlds import get_world

    return get_world("toy").build_host()


@pytest.fixture(scope="module")
def pool():
    from protect_core.toy import styles

    return torch.cat([styles.render(a, 2, size=32, seed=5) for a in styles.TRAINED[:4]])


@pytest.fixture(scope="module")
def generator_file(toy, pool, tmp_path_factory):
    """A quickly trained toy generator (24 steps), saved as a file."""
    ts = TrainSettings(**QUICK)
    net, history, _ = train_generator(toy, pool, ts)
    with toy.borrowed():
        probe = model_probe(toy)
    path = tmp_path_factory.mktemp("gen") / "toy_generator.safetensors"
    save_generator(path, net, probe, {"eps": ts.eps, "objective": ts.objective, "history": history})
    return path


def test_network_any_size_bounded_and_per_image():
    net = CloakNet(8, 1).eval()
    for p in net.head.parameters():   # a head that is not zero, so the output says something
        torch.nn.init.normal_(p, std=0.5)
    x = torch.rand(3, 3, 17, 23, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(x)
        alone = net(x[1:2])
    assert out.shape == x.shape and out.abs().max() <= 1 and out.abs().max() > 0
    assert torch.allclose(out[1:2], alone, atol=1e-6), "an image's cloak depends on the rest of its batch"


def test_training_lowers_the_objective_and_leaves_the_model_unchanged(toy, pool, integrity):
    chk = integrity(toy)
    rng = torch.get_rng_state()
    ts = TrainSettings(**{**QUICK, "steps": 40, "perceptual_budget": None})
    net, history, _ = train_generator(toy, pool, ts, log_every=8)
    chk.assert_unchanged()
    assert torch.equal(torch.get_rng_state(), rng), "training moved the caller's global RNG"
    assert history[-1]["loss"] < history[0]["loss"], history
    assert not any(p.requires_grad for p in net.parameters())


def test_interrupted_training_resumes_to_the_same_bytes(toy, pool, tmp_path, integrity):
    chk = integrity(toy)
    ts = TrainSettings(**{**QUICK, "steps": 12})
    ckpt = tmp_path / "g.ckpt"

    def stop_at(n):
        def on_step(done, total, info):
            if info.get("phase") is None and done - 2 >= n:   # 2 prepare units, then steps
                raise Cancelled("stop")
        return Progress(on_step=on_step)

    with pytest.raises(Cancelled):
        train_generator(toy, pool, ts, stop_at(7), checkpoint=ckpt, checkpoint_every=5)
    chk.assert_unchanged()   # cancelled mid-training: the model comes back as it was
    assert ckpt.is_file()
    resumed, h1, _ = train_generator(toy, pool, ts, checkpoint=ckpt, checkpoint_every=5)
    whole, h2, _ = train_generator(toy, pool, ts)
    for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()):
        assert torch.equal(a, b)
    assert h1 == h2


def test_file_round_trip_and_refusals(generator_file, tmp_path):
    net, probe, meta = load_generator(generator_file)
    assert meta["objective"] == "photoguard" and meta["width"] == QUICK["width"] and probe.ndim == 4
    from safetensors.torch import save_file

    other = tmp_path / "classifier.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    for bad in (other, junk, tmp_path / "missing.safetensors"):
        with pytest.raises(StyleCloakError) as e:
            read_meta(bad)
        assert "\n" not in str(e.value)


def test_instant_cloak_holds_every_budget_and_is_deterministic(toy, generator_file, integrity, rng_images):
    chk = integrity(toy)
    s = settings_for(get_method("instant"), "default", options={"generator": str(generator_file)})
    assert s.steps == 0 and settings_for(get_method("instant"), "low").steps == 0
    images = [rng_images(1, 40, 56, seed=1)[0], rng_images(1, 32, 32, seed=2)[0]]
    out = cloak_images(toy, images, s)
    chk.assert_unchanged()
    again = cloak_images(toy, images, s)
    for img, r, r2 in zip(images, out, again):
        d = (r.image - img).abs().max()
        assert d <= s.eps + 1e-6 and d > 0
        assert torch.equal(torch.round(r.image * 255) / 255, r.image)
        assert r.stats["perceptual"] <= s.perceptual_budget
        assert torch.equal(r.image, r2.image)
        assert r.stats["objective_before"] is None   # objective_samples=0 by default: nothing else is paid


def test_instant_tiles_large_images_and_ties_grey_channels(toy, generator_file, rng_images):
    s = settings_for(get_method("instant"), "default", options={"generator": str(generator_file)})
    big = rng_images(1, 72, 200, seed=3)[0]
    grey = rng_images(1, 32, 48, seed=4)[0].mean(0, keepdim=True).expand(3, -1, -1).clone()
    big_r, grey_r = cloak_images(toy, [big, grey], s, tile_size=64, channel_tied=[False, True])
    assert big_r.stats["tiles"] > 1 and (big_r.image - big).abs().max() <= s.eps + 1e-6
    assert torch.equal(grey_r.image[0], grey_r.image[1]) and torch.equal(grey_r.image[1], grey_r.image[2])


def test_refinement_lowers_the_objective_below_the_one_pass(toy, generator_file, rng_images):
    x = [rng_images(1, 32, 32, seed=6)[0]]
    opts = {"generator": str(generator_file), "objective_samples": 1}
    base = settings_for(get_method("instant"), "default", steps=6, options=opts)
    r = cloak_images(toy, x, base)[0]
    assert r.stats["objective_after"] < r.stats["objective_before"]


def test_auto_finds_the_generator_of_its_model_only(toy, generator_file, monkeypatch, tiny_host, integrity):
    from protect_core.generator import store

    chk = integrity(tiny_host)

    monkeypatch.setenv(store.ENV_PATH, str(generator_file.parent))
    with toy.borrowed():
        assert find_for_host(toy) == generator_file
    with tiny_host.borrowed(), pytest.raises(StyleCloakError, match="train-generator"):
        find_for_host(tiny_host)
    s = settings_for(get_method("instant"), "default", options={"generator": str(generator_file)})
    with pytest.raises(StyleCloakError, match="another model"):
        cloak_images(tiny_host, [torch.rand(3, 32, 32)], s)
    chk.assert_unchanged()   # refused after the borrow began: the model comes back as it was


def test_train_generator_command_end_to_end(tmp_path, capsys):
    from protect_core import cli

    out = tmp_path / "g.safetensors"
    argv = ["train-generator", "-o", out, "--steps", "6", "--per-artist", "1", "--width", "8", "--depth", "1",
            "--batch-size", "3", "--quiet"]
    assert cli.main([str(a) for a in argv]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pool"] == 9 and summary["objective"] == "photoguard" and out.is_file()
    assert not Path(str(out) + ".ckpt").exists()
    first = out.read_bytes()
    assert cli.main([str(a) for a in argv]) == 2          # exists: kept
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1 and out.read_bytes() == first
    assert cli.main([str(a) for a in argv + ["--overwrite"]]) == 0
    capsys.readouterr()
    assert out.read_bytes() == first                       # seeded: the same bytes
    art = tmp_path / "art"
    art.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 36), (200, 120, 40)).save(art / "a.png")
    cloaked = tmp_path / "cloaked"
    assert cli.main(["cloak", str(art), "-o", str(cloaked), "--method", "instant", "--option",
                     f"generator={out}", "--quiet"]) == 0
    row = json.loads(capsys.readouterr().out)["images"][0]
    assert row["status"] == "written" and row["stats"]["linf_255"] <= 16 + 1e-3


@pytest.mark.parametrize("argv, needle", [
    (["--model", "tiny"], "--images"),
    (["--objective", "aspl"], "per-image"),
    (["--objective", "nosuch"], "nosuch"),
    (["--eps", "0"], "--eps"),
    (["-o", "x.pt"], ".safetensors"),
])
def test_train_generator_bad_requests_are_one_line(no_model, tmp_path, capsys, argv, needle):
    from protect_core import cli

    base = ["train-generator", "-o", str(tmp_path / "g.safetensors"), "--steps", "2"]
    if "-o" in argv:
        base = base[:1] + ["--steps", "2"]
        argv = [argv[0], str(tmp_path / argv[1])]
    try:
        code = cli.main(base + argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option, needle", [("generator=/no/such/generator.safetensors", "no such file"),
                                            ("objective=aspl", "per-image")])
def test_instant_bad_options_are_one_line_before_the_model_loads(no_model, tmp_path, capsys, option, needle):
    from PIL import Image

    from protect_core import cli

    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "a.png")
    code = cli.main(["cloak", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--method", "instant",
                     "--steps", "2", "--option", option])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
