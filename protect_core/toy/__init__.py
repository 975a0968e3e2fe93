"""The toy world: a small, fully offline stand-in for "Stable Diffusion + a set of artists".

StyleCloak cannot ship (or download) real SD weights, yet protection has to be *measured*: does a cloak stop a
fine-tune from picking up an artist's style? The toy world makes that measurable on a CPU in seconds:

* :mod:`.styles`: ten procedural "artists" (``STYLES``: stripes, dots, checker, gradient, rings, strokes, waves,
  mosaic, hatching, blobs), each a seeded generator with its own texture *and* palette and variation inside the
  style. ``HELD_OUT`` ("blobs": soft violet shapes on lime, unlike every other style in texture and palette) is
  never shown to the model during pre-training: it is the artist whose style mimicry tries to learn.
* :mod:`.train`: trains, from scratch and seeded, a model with the real SD 1.x architecture at toy size (the
  ``tiny`` configs of :mod:`protect_core.tiny_models`: x8 VAE, cross-attention UNet, CLIP text encoder, the
  offline tiny tokenizer, SD's noise schedule, eps prediction), native size 32 px, on the nine other styles,
  captioned ``"a painting in {style} style"``; and a small CNN style classifier (the judge) over all ten.
* :mod:`.model`: ``build_toy_host()`` loads the shipped weights (``protect_core/assets/toy``, a diffusers folder,
  safetensors only) as a :class:`~protect_core.backends.diffusers_host.DiffusersHost` of family ``toy``;
  ``load_style_classifier()`` loads the judge; ``toy_available()`` says whether both ship.
* :mod:`.evaluate`: ``evaluate_toy(host, classifier, n_per_style, seed)``: prompt control, the share of samples
  from each style's prompt that the judge assigns to that style.

A mimicry test in this world: fine-tune the toy model on a few ``render(HELD_OUT, ...)`` images (clean or
cloaked), generate from the held-out prompt and score with the classifier (before fine-tuning the share is ~0).
"""
from .styles import HELD_OUT, STYLES, TRAINED, prompt_for, render

__all__ = ["HELD_OUT", "STYLES", "TRAINED", "prompt_for", "render", "build_toy_host", "toy_available",
           "load_style_classifier", "evaluate_toy"]


def __getattr__(name):  # heavy imports (diffusers) only when asked for
    if name in ("build_toy_host", "toy_available", "load_style_classifier", "toy_world"):
        from . import model

        return getattr(model, name)
    if name == "evaluate_toy":
        from .evaluate import evaluate_toy

        return evaluate_toy
    raise AttributeError(name)
