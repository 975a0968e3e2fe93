"""The protection benchmark (protect_core/toy/protection.py, benchmarks/protection.py): seeds merged cell by cell,
the table's rows and columns, and a reduced end-to-end run on the shipped toy world (cloak -> purify -> LoRA ->
both judges) that leaves the host unchanged and writes a JSON another run can --merge."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from protect_core.toy import protection as prot


def _run(seed, rates):
    """A run with given (classifier, centroid) success rates per set name."""
    scores = {n: {"success": {"rate": c}, "second": {"success": {"rate": d}}} for n, (c, d) in rates.items()}
    return {"artist": "blobs", "seed": seed, "budget_255": 16.0, "intensity": "default", "robust": False,
            "purifiers": ["jpeg75"], "scores": {"lora": scores},
            "sets": {"clean": {"psnr": None}, "noise@16": {"psnr": 28.0, "ssim": 0.7, "dssim": 0.08},
                     "mist@16": {"psnr": 24.0}, "mist@16|jpeg75": {"after_purifier": {"psnr": 23.0}}}}


def test_merge_runs_means_and_standard_errors_across_seeds():
    a = _run(0, {"clean": (0.1, 0.0), "mist@16": (0.5, 0.2), "mist@16|jpeg75": (0.3, 0.1), "__base__": (1, 1)})
    b = _run(1, {"clean": (0.3, 0.2), "mist@16": (0.7, 0.4), "mist@16|jpeg75": (0.5, 0.3), "__base__": (1, 1)})
    m = prot.merge_runs([a, b])
    cls_mean, cls_se = m["scores"]["lora"]["mist@16"]["classifier"]
    assert cls_mean == pytest.approx(0.6) and cls_se == pytest.approx(0.1)   # sd 0.1414 / sqrt(2)
    assert m["scores"]["lora"]["clean"]["centroid"][0] == pytest.approx(0.1)
    assert m["scores"]["lora"]["mist@16"]["n"] == 2
    assert m["quality"]["mist@16|jpeg75"]["psnr"] == pytest.approx(23.0)
    text = prot.markdown([a, b])
    assert "| mist@16 | 24.0 |" in text and "60% ±10% / 30% ±10%" in text
    assert "LoRA after jpeg75" in text and "40% ±10% / 20% ±10%" in text
    assert "seeds 0, 1" in text and "base model" in text


def test_set_names_and_settings():
    assert prot.set_name("mist", 16.0, False) == "mist@16" and prot.set_name("mist", None, True) == "mist+robust"
    s = prot.protection_settings("styleguard", 16.0, "default", True, 3, 5)
    assert s.eps == pytest.approx(16 / 255) and s.robust and s.steps == 5 and s.seed == 3
    v = prot.protection_settings("aspl:posterior=sample:subset=unet:train_steps=2", 8.0, "default", False, 0, None)
    assert v.method == "aspl" and v.eps == pytest.approx(8 / 255)
    assert v.options["posterior"] == "sample" and v.options["subset"] == "unet" and v.options["train_steps"] == 2
    assert prot.parse_method("mist") == ("mist", {})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        prot.parse_method("mist:oops")
    d = prot.protection_settings("metacloak", None, "high", False, 0, None)
    assert d.eps == pytest.approx(1.5 * 11 / 255)


def _budget_run(seed, rates, psnr):
    """A multi-budget run: ``rates`` {set: (classifier, centroid)} for LoRA and LoRA after jpeg75, PSNR per set."""
    run = _run(seed, {**rates, **{n + "|jpeg75": (c / 2, d / 2) for n, (c, d) in rates.items()}})
    run["budgets_255"] = [8.0, 16.0]
    run["sets"] = {"clean": {"psnr": None}, **{n: {"psnr": v} for n, v in psnr.items()},
                   **{n + "|jpeg75": {"after_purifier": {"psnr": v - 1}} for n, v in psnr.items()}}
    return run


def test_frontier_groups_budgets_per_method_and_draws_each_point(tmp_path):
    from PIL import Image

    from protect_core.toy import frontier

    assert frontier.method_of("mist@16") == "mist" and frontier.method_of("noise@8") == "noise"
    assert frontier.method_of("aspl:posterior=sample@8+robust") == "aspl:posterior=sample+robust"
    assert frontier.method_of("glaze") == "glaze"
    assert prot.budget_list(16) == [16.0] and prot.budget_list(None) == [None]
    assert prot.budget_list([8, 16]) == [8.0, 16.0]
    psnr = {"noise@8": 35.0, "noise@16": 29.0, "mist@8": 31.0, "mist@16": 25.0}
    rates = {"clean": (0.1, 0.2), "noise@8": (0.1, 0.1), "noise@16": (0.2, 0.2), "mist@8": (0.4, 0.3),
             "mist@16": (0.8, 0.6)}
    runs = [_budget_run(0, rates, psnr), _budget_run(1, rates, psnr)]
    pts = frontier.frontier_points(runs)
    assert pts["methods"] == {"noise": ["noise@8", "noise@16"], "mist": ["mist@8", "mist@16"]}
    assert [a[0] for a in pts["attacks"]] == ["LoRA", "LoRA after jpeg75"]
    assert pts["psnr"]["mist@16"] == 25.0       # x is the cloak's own PSNR, in the purifier's panel too
    assert pts["floor"][("lora", "|jpeg75")]["classifier"][0] == pytest.approx(0.05)
    out = tmp_path / "f.png"
    frontier.draw_frontier(runs, out)
    im = Image.open(out).convert("RGB")
    assert im.size[0] > 2 * 300 and im.size[1] > 2 * 220
    mist_colour = frontier.COLOURS[2]            # second method after the noise control
    assert sum(1 for px in im.getdata() if px == mist_colour) > 50
    text = prot.markdown(runs)
    assert "budget 8, 16/255" in text and "| mist@8 | 31.0 |" in text and "| noise@16 | 29.0 |" in text


toy = pytest.importorskip("protect_core.toy.model")


@pytest.mark.slow
@pytest.mark.skipif(not toy.toy_available(), reason="no trained toy model in protect_core/assets/toy")
def test_reduced_run_end_to_end_and_merge(tmp_path, integrity, capsys, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import protection as bench
    from protect_core.worlds import get_world
    from protect_core.worlds.judges import world_judges

    world = get_world("toy")
    host = world.build_host()
    chk = integrity(host)
    judges = world_judges(world, host)
    run = prot.run_protection(host, judges, world, "blobs", ["styleguard", "mist:shaping=texture"], 16.0,
                              purifiers=["jpeg75", "diffpure"],
                              images=2, samples=4, steps={"cloak": 2, "lora": 3, "sample": 2}, log=lambda _: None)
    chk.assert_unchanged()
    json.dumps(run)
    names = ("clean", "noise@16", "styleguard@16", "mist:shaping=texture@16")
    assert set(run["scores"]["lora"]) == {"__base__", *names, *(f"{n}|{p}" for n in names
                                                                for p in ("jpeg75", "diffpure"))}
    assert run["sets"]["mist:shaping=texture@16"]["options"] == {"shaping": "texture"}
    assert run["sets"]["styleguard@16"]["linf_255"] <= 16 + 1e-6 and run["sets"]["noise@16"]["dssim"] > 0
    args = ["--methods", "mist", "--purifiers", "jpeg75", "--images", "2", "--samples", "4", "--threads", "1",
            "--steps", "cloak=2,lora=3,sample=2", "--out", str(tmp_path), "--stem", "p"]
    assert bench.main(["--methods", "mist,nosuch:x=1", "--out", str(tmp_path)]) == 2
    assert "unknown method 'nosuch'" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert bench.main(args + ["--budget", "0,16"]) == 2
    assert "--budget: expected" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert bench.main(args) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
    assert bench.main(args[:-1] + ["q", "--seeds", "1", "--merge", str(tmp_path / "p.json")]) == 0
    merged = json.loads((tmp_path / "q.json").read_text())
    assert [r["seed"] for r in merged["runs"]] == [0, 1]
    assert "seeds 0, 1" in (tmp_path / "q.md").read_text()
    assert bench.main(args[:-1] + ["b", "--budget", "8,16", "--purifiers", ""]) == 0
    two = json.loads((tmp_path / "b.json").read_text())["runs"][0]
    assert two["budgets_255"] == [8.0, 16.0]
    assert {"noise@8", "mist@8", "noise@16", "mist@16"} <= set(two["scores"]["lora"])
    # two cloak steps stay inside either budget; the step size scales with the budget
    assert 0 < two["sets"]["mist@8"]["linf_255"] < two["sets"]["mist@16"]["linf_255"] <= 16 + 1e-6
    assert "budget 8, 16/255" in (tmp_path / "b.md").read_text()
    assert not list(tmp_path.glob("*.partial.json")) and not list(tmp_path.glob("*.tmp"))
    # stopped during its second seed, a run keeps the first in STEM.partial.json, and --merge takes it
    real = prot.run_protection

    def stop_at_seed_1(*args):
        if args[12] == 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prot, "run_protection", stop_at_seed_1)
    with pytest.raises(KeyboardInterrupt):
        bench.main(args[:-1] + ["s", "--seeds", "0,1"])
    assert not (tmp_path / "s.json").exists()
    kept = json.loads((tmp_path / "s.partial.json").read_text())
    assert kept["partial"] and [r["seed"] for r in kept["runs"]] == [0]
    monkeypatch.setattr(prot, "run_protection", real)
    assert bench.main(args[:-1] + ["t", "--seeds", "", "--merge", str(tmp_path / "s.partial.json")]) == 0
    assert "seeds 0." in (tmp_path / "t.md").read_text()
