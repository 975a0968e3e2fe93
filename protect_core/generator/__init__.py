"""One-pass cloaks: a small image-to-perturbation network trained once per model, then one forward pass per image.

Amortised protection in the manner of MAMC (2023), RID (2024) and FastProtect (CVPR 2025): instead of optimising
each image's perturbation for 100+ steps, train a network once against a cloak method's own objective (the
PhotoGuard encoder attack by default: its target, the latent of a grey image, is the same for every image, and a
small network learns it; glaze's per-image restyle target did not carry over to unseen art in our measurements)
on a pool of art, and let it output the perturbation directly.

* :mod:`.network`: the fully convolutional network (any image size; the runner tiles large images);
* :mod:`.store`: its safetensors file (weights, the training settings as metadata, and a probe of the model it was
  trained for, so the right network is found for a loaded model and a wrong one is refused);
* :mod:`.train`: the training loop (host-agnostic, seeded, checkpointed and resumable to the same bytes);
* :mod:`.cli`: ``stylecloak train-generator``.

The cloak method that uses it is ``instant`` (``protect_core/cloak/methods/instant.py``): the network's output is
clipped to the budget, quantised and held to the perceptual budget exactly as the optimiser's output is, and
``steps > 0`` refines it with the objective's own loop (a warm start).
"""
