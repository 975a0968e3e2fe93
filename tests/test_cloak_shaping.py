"""Perceptual shaping of the budget (protect_core/cloak/shaping.py, option ``shaping=texture``): the map follows
local contrast, the optimiser keeps every pixel inside its own box (after 8-bit quantisation), flat areas get less
change than textured ones, runs are seeded, and bad options fail before any model work."""
from __future__ import annotations

import pytest
import torch

from protect_core.cloak.base import get_method
from protect_core.cloak.optimize import optimize
from protect_core.cloak.presets import settings_for
from protect_core.cloak.shaping import eps_map, texture_map
from protect_core.metrics import psnr

PG = get_method("photoguard")


@pytest.fixture(scope="module")
def host():
    from protect_core.tiny_models import build_tiny_host

    return build_tiny_host("tiny", seed=0)


def half_flat(b=1, size=32):
    """Left half flat grey, right half a fine random texture."""
    g = torch.Generator().manual_seed(0)
    x = torch.full((b, 3, size, size), 0.5)
    x[..., size // 2:] = torch.rand(b, 3, size, size - size // 2, generator=g)
    return x


def test_texture_map_follows_local_contrast():
    x = half_flat()
    m = texture_map(x, floor=0.25)
    assert m.shape == (1, 1, 32, 32) and float(m.min()) >= 0.25 - 1e-6 and float(m.max()) <= 1 + 1e-6
    assert float(m[..., :10].max()) == pytest.approx(0.25)      # flat, away from the seam: the floor
    assert float(m[..., 22:].mean()) > 0.8                     # textured: near the full budget
    assert torch.equal(texture_map(torch.full((1, 3, 8, 8), 0.3)), torch.full((1, 1, 8, 8), 0.25))
    assert eps_map(x, 0.1, {}) == 0.1 and eps_map(x, 0.1, {"shaping": "none"}) == 0.1
    assert torch.allclose(eps_map(x, 0.1, {"shaping": "texture", "shaping_floor": 0.5}), 0.1 * texture_map(x, 0.5))


def test_shaped_cloak_keeps_each_pixel_in_its_box_and_spares_flat_areas(host, integrity):
    chk = integrity(host)
    x = half_flat()
    s_plain = settings_for(PG, "default", steps=6, eps=16 / 255, step_size=4 / 255)
    s_shaped = settings_for(PG, "default", steps=6, eps=16 / 255, step_size=4 / 255,
                            options={"shaping": "texture"})
    plain, _ = optimize(host, PG, x, s_plain)
    shaped, _ = optimize(host, get_method("photoguard"), x, s_shaped)
    again, _ = optimize(host, get_method("photoguard"), x, s_shaped)
    chk.assert_unchanged()
    assert torch.equal(shaped, again)
    assert torch.equal(torch.round(shaped * 255) / 255, shaped)
    box = eps_map(x, 16 / 255, {"shaping": "texture"})
    d = (shaped - x).abs()
    assert bool((d <= box + 1e-6).all()), "a pixel left its own box"
    assert float(d[..., :10].max()) <= 0.25 * 16 / 255 + 1e-6 < float(d[..., 22:].max())
    assert float((plain - x).abs()[..., :10].max()) > 8 / 255          # unshaped: the flat half takes the full box
    assert float(psnr(x, shaped)) > float(psnr(x, plain))


@pytest.mark.parametrize("options,match", [({"shaping": "edges"}, "shaping"), ({"shaping": "texture",
                                                                                 "shaping_floor": 0}, "shaping_floor"),
                                           ({"shaping_floor": "x"}, "shaping_floor")])
def test_bad_shaping_options_fail_before_model_work(options, match, host, integrity):
    chk = integrity(host)
    with pytest.raises(ValueError, match=match):
        optimize(host, PG, half_flat(), settings_for(PG, "default", steps=1, options=options))
    chk.assert_unchanged()
