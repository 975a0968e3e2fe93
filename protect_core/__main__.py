"""``python -m protect_core`` runs the StyleCloak command line."""
import sys

from .cli import main

sys.exit(main())
