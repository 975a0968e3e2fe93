"""ComfyUI entry point of StyleCloak (this folder is the custom-node package).

Makes ``protect_core`` importable, then hands ComfyUI the V3 extension from ``nodes/`` and the front-end folder.
Outside ComfyUI (CLI, tests, A1111) this file is not used.
"""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

from .nodes import comfy_entrypoint  # noqa: E402,F401

WEB_DIRECTORY = "./web"
