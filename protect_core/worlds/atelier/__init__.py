"""The atelier world: a measurement world faithful enough to judge protection (64 px, 16 x 16 latent).

* :mod:`.configs`: SD 1.5 topology at reduced width (x4 VAE with 4 latent channels, UNet with SD's 16
  cross-attention layers under SD's names, CLIP text encoder, SD's schedule).
* :mod:`.paint`, :mod:`.artists`, :mod:`.styles`: sixteen procedural artists with texture at several scales;
  ``TRAINED`` (12), ``HELD_OUT`` (pastel, cubist, batik), ``DEV`` (gouache).
* :mod:`.train`: the seeded, phased, resumable training command; :mod:`.judge`: the style classifier;
  :mod:`.model`: registry entry points (``--model atelier``).
"""
