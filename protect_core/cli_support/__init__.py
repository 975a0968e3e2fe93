"""What every ``stylecloak`` subcommand shares beyond argument parsing, kept free of torch at import time.

* :mod:`.values`: argparse value types (finite floats, bounded ints, seeds, device names) and device checks;
* :mod:`.paths`: output planning (names that never collide, relative layout of input folders, per-image seeds from
  each image's identity), output-path checks made before any model work, and the one ``--overwrite`` rule;
* :mod:`.boundary`: the error boundary: signals become a clean stop, every failure one line and a true exit code.
"""
