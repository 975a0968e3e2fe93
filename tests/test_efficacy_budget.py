"""Budget sweep (protect_core/toy/budget.py): budget parsing, the swept settings, and a reduced end-to-end sweep on
the shipped toy model (cloak at two budgets -> LoRA fine-tune -> classifier) with the host unchanged."""
from __future__ import annotations

import json

import pytest

from protect_core.cloak.base import get_method
from protect_core.toy import budget as bud


def test_parse_budgets():
    assert bud.parse_budgets("32, 8,8,16") == [8.0, 16.0, 32.0]
    for bad in ("", "x", "0", "-4", "300"):
        with pytest.raises(ValueError):
            bud.parse_budgets(bad)


def test_swept_settings_scale_the_step_with_the_budget():
    aspl = get_method("aspl")
    s = bud.swept_settings("aspl", 16.0, seed=3)
    assert s.eps == pytest.approx(16 / 255)
    assert s.step_size == pytest.approx(aspl.defaults["step_size"] * (16 / 255) / aspl.defaults["eps"])
    assert s.steps == aspl.defaults["steps"] and s.seed == 3
    assert bud.swept_settings("aspl", 16.0, seed=0, steps=5).steps == 5
    glaze = bud.swept_settings("glaze", 32.0, seed=0)  # no documented step size: eps / 10 of the swept eps
    assert glaze.eps == pytest.approx(32 / 255) and glaze.step_size == pytest.approx(32 / 255 / 10)


toy = pytest.importorskip("protect_core.toy.model")


@pytest.mark.slow
@pytest.mark.skipif(not toy.toy_available(), reason="no trained toy model in protect_core/assets/toy")
def test_reduced_sweep_end_to_end(integrity, tmp_path):
    from protect_core.toy.efficacy import EfficacyConfig

    host, clf, world = toy.build_toy_host(), toy.load_style_classifier(), toy.toy_world()
    chk = integrity(host)
    cfg = EfficacyConfig(methods=["mist"], purifiers=[], finetunes=["lora"], images=2, samples=8,
                         steps={"cloak": 3, "lora": 5, "sample": 4})
    res = bud.run_budget_sweep(host, clf, ["mist"], [4.0, 32.0], world["held_out"], int(world["size"]), cfg,
                               log=lambda _: None)
    chk.assert_unchanged()
    json.dumps(res)
    names = {r["set"] for r in res["rows"]}
    assert names == {"clean", "noise@4", "noise@32", "mist@4", "mist@32"}
    by = {r["set"]: r for r in res["rows"]}
    for name, r in by.items():
        assert 0 <= r["lora"]["success"] <= 1 and 0 <= r["lora"]["p_style"] <= 1
        if name != "clean":
            assert r["latent_shift"] > 0
    # a bigger box of the same noise is further from the clean art, in pixels and in the VAE's latent space
    assert by["noise@32"]["psnr"] < by["noise@4"]["psnr"]
    assert by["noise@32"]["latent_shift"] > by["noise@4"]["latent_shift"]
    assert by["mist@32"]["psnr"] < by["mist@4"]["psnr"]
    md = bud.markdown_report(res)
    assert "| mist |" in md and "| noise |" in md and "eps 32/255" in md
    bud.draw_chart(res, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="unknown cloak method"):
        bud.run_budget_sweep(host, clf, ["nope"], [8.0], world["held_out"], int(world["size"]), cfg)
