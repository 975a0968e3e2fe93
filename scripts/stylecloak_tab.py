"""Automatic1111 / Forge entry point of StyleCloak: registers the StyleCloak tab and its settings section.

A1111 and Forge execute every ``.py`` file in an extension's ``scripts/`` folder, so this is the only file there.
It appends the extension folder to ``sys.path`` (for ``protect_core`` and ``sdwebui``; appended, so the folder's
other top-level names -- ``nodes``, ``tools``, ``install`` -- never shadow the web UI's or another extension's
modules) and registers ``sdwebui.ui.on_ui_tabs`` / ``on_ui_settings`` with ``modules.script_callbacks``.
"""
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from modules import script_callbacks  # noqa: E402

from sdwebui import ui  # noqa: E402

script_callbacks.on_ui_settings(ui.on_ui_settings)
script_callbacks.on_ui_tabs(ui.on_ui_tabs)
