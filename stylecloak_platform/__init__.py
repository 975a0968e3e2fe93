"""StyleCloak for platforms: whole galleries as batch jobs and an upload service, on Ray.

An optional layer (``pip install "stylecloak[ray]"``) over the engine: :mod:`protect_core` never imports it, nor
Ray. What runs inside a worker is plain engine code (:mod:`.work`); :mod:`.manifest` is the job's record (JSON
lines, one per input); :mod:`.batch` is the Ray job (a pool of actors that each load the model once) and
:mod:`.serve` the Ray Serve deployment; ``*_cli`` modules are the ``stylecloak batch`` / ``stylecloak serve``
subcommands.
"""
