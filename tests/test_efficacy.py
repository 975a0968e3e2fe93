"""Efficacy benchmark: the pure parts (success definition, rows, goal check, table, chart) and one reduced end-to-end
run on the shipped toy model (slow: cloak -> purify -> LoRA fine-tune -> classifier), with the host unchanged."""
from __future__ import annotations

import json

import pytest
import torch

from protect_core.toy import efficacy as eff
from protect_core.toy import efficacy_report as rep


# --- pure parts -------------------------------------------------------------------------------------------------
def test_success_is_top_class_not_the_artist():
    probs = torch.tensor([[0.1, 0.9], [0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])
    flags = eff.protection_success(probs, artist_index=1)
    assert flags.tolist() == [False, True, True, False]  # a tie goes to the first class (not the artist here)
    r = eff.rate(flags)
    assert r["rate"] == 0.5 and r["n"] == 4 and r["se"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        eff.protection_success(probs, artist_index=2)
    with pytest.raises(ValueError):
        eff.rate(torch.zeros(0, dtype=torch.bool))


def test_effect_and_sanity():
    assert eff.protection_effect(0.9, 0.9, 0.1) == 0.0
    assert eff.protection_effect(0.1, 0.9, 0.1) == 1.0
    assert eff.protection_effect(0.5, 0.9, 0.1) == pytest.approx(0.5)
    assert eff.protection_effect(0.5, 0.1, 0.1) is None  # nothing learned: no effect can be measured
    assert eff.sanity({"mean": 0.0, "se": 0.01}, {"mean": 0.8, "se": 0.05})["passed"]
    assert not eff.sanity({"mean": 0.0, "se": 0.01}, {"mean": 0.1, "se": 0.01})["passed"]   # below the margin
    assert not eff.sanity({"mean": 0.0, "se": 0.2}, {"mean": 0.3, "se": 0.2})["passed"]     # within the noise


def test_parse_steps_and_config_validation():
    assert eff.parse_steps("cloak=20, lora=5") == {"cloak": 20, "lora": 5}
    assert eff.parse_steps(None) == {}
    for bad in ("cloak", "cloak=0", "epochs=3", "lora=x"):
        with pytest.raises(ValueError):
            eff.parse_steps(bad)
    with pytest.raises(ValueError, match="unknown method"):
        eff.EfficacyConfig(methods=["nope"]).validate()
    with pytest.raises(ValueError, match="purifier"):
        eff.EfficacyConfig(methods=["pag"], purifiers=["sharpen"]).validate()
    with pytest.raises(ValueError, match="learning-rate"):
        eff.EfficacyConfig(methods=["pag"], lr={"lora": -1}).validate()
    assert eff.split_name("glaze@default+robust|jpeg75") == ("glaze@default+robust", "jpeg75")
    assert eff.split_name("clean") == ("clean", "none")


def _scores(p_style: float, success: float, n: int = 16) -> dict:
    return {"success": {"rate": success, "se": 0.1, "n": n}, "p_style": {"mean": p_style, "se": 0.02, "n": n},
            "final_loss": 0.2, "seconds": 1.0}


def fake_results() -> dict:
    """A results dict as run_efficacy returns it, with made-up scores (LoRA only; jpeg75 and impress)."""
    cfg = eff.EfficacyConfig(methods=["pag"], robust=["pag"], purifiers=["jpeg75", "impress"], finetunes=["lora"],
                             samples=16)
    metas = {"clean": {"method": "clean", "intensity": "-", "robust": False},
             "pag@default": {"method": "pag", "intensity": "default", "robust": False, "eps_255": 8.0,
                             "psnr": 36.2, "ssim": 0.95},
             "pag@default+robust": {"method": "pag", "intensity": "default", "robust": True, "eps_255": 8.0,
                                    "psnr": 34.0, "ssim": 0.93}}
    for name in list(metas):
        for pur in cfg.purifiers:
            metas[f"{name}|{pur}"] = {**metas[name], "purifier": pur, "after_purifier": {"psnr": 30.0}}
    values = {"clean": (0.8, 0.1), "pag@default": (0.05, 0.95), "pag@default+robust": (0.1, 0.9),
              "clean|jpeg75": (0.7, 0.2), "pag@default|jpeg75": (0.5, 0.5), "pag@default+robust|jpeg75": (0.1, 0.85),
              "clean|impress": (0.6, 0.3), "pag@default|impress": (0.6, 0.3),
              "pag@default+robust|impress": (0.3, 0.7)}
    scores = {n: _scores(*v) for n, v in values.items()}
    scores["__base__"] = _scores(0.0, 1.0)
    rows = eff.build_rows(metas, scores, "lora")
    finetunes = {"lora": {"settings": {"method": "lora", "lr": 1e-3, "steps": 300}, "base": scores["__base__"],
                          "sanity": eff.sanity(scores["__base__"]["p_style"], scores["clean"]["p_style"])}}
    return {"config": cfg.to_dict(), "held_out": "blobs", "size": 32, "sets": metas, "finetunes": finetunes,
            "rows": rows, "goal": eff.goal_check(rows, finetunes),
            "seconds": {"cloak": 1, "purify": 1, "mimicry": 1, "total": 3}}


def test_rows_compare_with_the_clean_set_of_the_same_purifier():
    res = fake_results()
    by = {r["set"]: r for r in res["rows"]}
    assert len(res["rows"]) == 9
    assert by["pag@default"]["reference"] == "clean"
    assert by["pag@default"]["style_drop"] == pytest.approx(0.75)
    assert by["pag@default|jpeg75"]["reference"] == "clean|jpeg75"
    assert by["pag@default|jpeg75"]["style_drop"] == pytest.approx(0.2)
    assert by["pag@default|impress"]["effect"] == pytest.approx(0.0)
    assert by["clean"]["effect"] == pytest.approx(0.0)
    g = res["goal"]["lora"]
    assert g["sanity_passed"] and g["meets_90_at_35db"] == ["pag@default"]
    assert g["robust_after"] == {"pag@default+robust": {"jpeg75": 0.85, "impress": 0.7}}
    assert g["robust_meets_80"] == []  # 70% after IMPRESS misses the 80% goal


def test_seed_runs_merge_into_means_with_their_standard_error():
    import copy

    from protect_core.toy.efficacy_seeds import merge_seed_runs

    a, b = fake_results(), fake_results()
    b["config"]["seed"] = 1
    for row in b["rows"]:  # seed 1: pag@default protects less (0.85 instead of 0.95)
        if row["set"] == "pag@default":
            row["success"], row["p_style"] = 0.85, 0.15
    assert merge_seed_runs([a]) is a
    m = merge_seed_runs([a, b])
    by = {r["set"]: r for r in m["rows"]}
    assert m["config"]["seeds"] == [0, 1] and by["pag@default"]["seeds"] == 2
    assert by["pag@default"]["success"] == pytest.approx(0.9)
    assert by["pag@default"]["success_se"] == pytest.approx(0.05)      # sd 0.0707 / sqrt(2)
    assert by["pag@default"]["per_seed_success"] == [0.95, 0.85]
    assert by["clean"]["success_se"] == 0 and by["clean"]["samples"] == 32
    assert m["goal"]["lora"]["meets_90_at_35db"] == ["pag@default"]    # recomputed on the means
    assert m["finetunes"]["lora"]["sanity"]["passed"]
    assert "±5" in rep.markdown_table(m) and "seeds 0, 1" in rep.markdown_report(m)
    c = copy.deepcopy(b)
    c["config"]["samples"] = 99
    with pytest.raises(ValueError, match="samples"):
        merge_seed_runs([a, c])
    with pytest.raises(ValueError, match="own seed"):
        merge_seed_runs([a, copy.deepcopy(a)])


def test_markdown_table_and_goal_text():
    res = fake_results()
    table = rep.markdown_table(res)
    lines = table.splitlines()
    assert lines[0].startswith("| cloak |") and "after jpeg75" in lines[0] and "after impress" in lines[0]
    assert len({line.count("|") for line in lines}) == 1  # every row has the header's column count
    assert len(lines) == 2 + 1 + 3  # header, rule, base model, clean + 2 cloaks
    assert "| pag@default | 8.0 | 36.2 | 0.950 | lora | 95% (+0.75) | 50% (+0.20) | 30% (+0.00) |" in table
    assert "| clean (no cloak) | 0 | inf | 1 | lora | 10% (p 0.80) |" in table
    text = rep.goal_text(res)
    assert "MET" in text and "robust goal" in text and "NOT met" in text
    md = rep.markdown_report(res, "cmd --x")
    assert "`cmd --x`" in md and rep.caption(res)[:22] in md


def test_chart_writes_a_png(tmp_path):
    from PIL import Image

    res = fake_results()
    rep.draw_chart(res, tmp_path / "chart.png")
    with Image.open(tmp_path / "chart.png") as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 150
        px = im.convert("RGB")
        colours = {px.getpixel((x, y)) for x in range(0, im.width, 3) for y in range(0, im.height, 3)}
    assert rep.COLOURS[1] in colours and rep.COLOURS[2] in colours  # the purifier bars were drawn


# --- end to end on the toy model ------------------------------------------------------------------------------
toy = pytest.importorskip("protect_core.toy.model")


@pytest.mark.slow
@pytest.mark.skipif(not toy.toy_available(), reason="no trained toy model in protect_core/assets/toy")
def test_reduced_benchmark_end_to_end(integrity):
    host, clf, world = toy.build_toy_host(), toy.load_style_classifier(), toy.toy_world()
    chk = integrity(host)
    cfg = eff.EfficacyConfig(methods=["pag"], purifiers=["jpeg75"], finetunes=["lora"], images=4, samples=16,
                             placebo=False, steps={"cloak": 10, "lora": 40, "sample": 10}, lr={"lora": 1e-2})
    res = eff.run_efficacy(host, clf, cfg, world["held_out"], int(world["size"]), log=lambda _: None)
    chk.assert_unchanged()
    json.dumps(res)  # JSON-able
    assert {r["set"] for r in res["rows"]} == {"clean", "pag@default", "clean|jpeg75", "pag@default|jpeg75"}
    for r in res["rows"]:
        assert 0 <= r["success"] <= 1 and 0 <= r["p_style"] <= 1 and r["samples"] == 16
    cloak = res["sets"]["pag@default"]
    assert 20 < cloak["psnr"] < 60 and 0 < cloak["ssim"] <= 1 and cloak["linf_255"] <= cloak["eps_255"] + 0.5
    base = res["finetunes"]["lora"]["base"]["p_style"]["mean"]
    clean = next(r for r in res["rows"] if r["set"] == "clean")
    assert clean["p_style"] > base + 0.1  # the mimic learned the style from the clean art
    table = rep.markdown_table(res)
    assert "| pag@default |" in table and "after jpeg75" in table
