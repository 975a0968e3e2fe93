"""The real check: on the trained toy model, fine-tuning on the held-out style teaches it (needs the toy assets)."""
from __future__ import annotations

import pytest

toy_model = pytest.importorskip("protect_core.toy.model")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not toy_model.toy_available(), reason="no trained toy model in the assets")]



def test_fine_tune_on_clean_held_out_style_raises_its_scores():
    from protect_core.mimicry.toy_check import run_toy_check

    report = run_toy_check()
    base, clean = report.conditions["base"], report.conditions["clean"]
    assert report.sanity["passed"], report.sanity
    assert clean["style_similarity"]["mean"] > base["style_similarity"]["mean"] + report.sanity["margin"]
    # the independent judge agrees: the held-out style now comes out far more often than from the base model
    assert clean["classifier"]["artist_share"] >= base["classifier"]["artist_share"] + 0.2
    assert clean["classifier"]["artist_probability"]["mean"] > base["classifier"]["artist_probability"]["mean"]
