"""The Mimicry Test block: fine-tune on the artist's (clean / cloaked / purified) art, generate, score the style.

``run_mimicry_test(host, clean_images, train_sets, settings, progress) -> MimicryReport``; see
:mod:`protect_core.mimicry.runner` for the conditions, :mod:`.scoring` for the score definitions and the sanity
check, :mod:`.style` for the style embedders and :mod:`.report` for the JSON/PNG report card.
"""
from .. import lazy_exports

_EXPORTS = {
    "MimicryReport": ".report",
    "generate": ".runner",
    "run_mimicry_test": ".runner",
    "INCONCLUSIVE": ".scoring",
    "DEFAULT_PROMPTS": ".settings",
    "MimicrySettings": ".settings",
    "ClipVisionEmbedder": ".style",
    "DescriptorEmbedder": ".style",
    "StyleEmbedder": ".style",
}
__all__ = ["run_mimicry_test", "generate", "MimicryReport", "MimicrySettings", "DEFAULT_PROMPTS", "INCONCLUSIVE",
           "StyleEmbedder", "DescriptorEmbedder", "ClipVisionEmbedder"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
