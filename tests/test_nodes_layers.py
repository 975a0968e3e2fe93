"""The Select Style-Sensitive Layers node's optional ``score`` input: an optional combo placed last (saved workflows
keep loading), passed to the analysis, the engine's default when left out. Runs under the fake ComfyUI modules of
tests/comfy_pack.py."""
from __future__ import annotations

import sys

import pytest

from comfy_pack import _smooth, pack  # noqa: F401 (fixture)
from protect_core.layers.analysis import DEFAULT_SCORE, SCORES

NODE = "StyleCloak_SelectStyleLayers"


class _Recorded(Exception):
    """Raised by the stand-in analysis once it has seen its settings."""


def test_score_is_an_optional_combo_placed_last(pack):
    score = pack.by_id[NODE].define_schema().inputs[-1]
    assert score.id == "score" and score.optional and score.io_type == "COMBO"
    assert list(score.options) == list(SCORES) and score.default == DEFAULT_SCORE
    assert "causal" in score.tooltip and "\n" not in score.tooltip and not score.check()


@pytest.mark.parametrize("chosen", [None, *SCORES])
def test_node_passes_the_score_to_the_analysis(pack, monkeypatch, chosen):
    module = sys.modules["nodes.layers_nodes"]
    seen = []

    def analyse(host, images, settings, progress=None):
        seen.append(settings.score)
        raise _Recorded

    monkeypatch.setattr(module, "analyse_layers", analyse)
    monkeypatch.setattr(module, "ComfyHost", lambda *a, **k: object())
    args = (_smooth(1, 32).contiguous(), object(), object(), object(), 2, "a painting in sks style", "a painting",
            "200,500", 1, 64, 0)
    kwargs = {} if chosen is None else {"score": chosen}
    with pytest.raises(_Recorded):
        pack.by_id[NODE].execute(*args, **kwargs)
    assert seen == [chosen or DEFAULT_SCORE]
