"""The Mimicry Test block: fine-tune on the artist's (clean / cloaked / purified) art, generate, score the style.

``run_mimicry_test(host, clean_images, train_sets, settings, progress) -> MimicryReport``; see
:mod:`protect_core.mimicry.runner` for the conditions, :mod:`.scoring` for the score definitions and the sanity
check, :mod:`.style` for the style embedders and :mod:`.report` for the JSON/PNG report card.
"""
from .report import MimicryReport
from .runner import generate, run_mimicry_test
from .scoring import INCONCLUSIVE
from .settings import DEFAULT_PROMPTS, MimicrySettings
from .style import ClipVisionEmbedder, DescriptorEmbedder, StyleEmbedder

__all__ = ["run_mimicry_test", "generate", "MimicryReport", "MimicrySettings", "DEFAULT_PROMPTS", "INCONCLUSIVE",
           "StyleEmbedder", "DescriptorEmbedder", "ClipVisionEmbedder"]
