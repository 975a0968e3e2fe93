"""Exception types that StyleCloak raises on purpose, each carrying a message meant for the user."""
from __future__ import annotations


class StyleCloakError(Exception):
    """Base class: the message is complete and names what to change; no traceback is needed to act on it."""


class ImageError(StyleCloakError):
    """An input image cannot be used (unreadable, truncated, too small, too large, unsupported)."""


class ModelError(StyleCloakError):
    """A model file or object is not what StyleCloak needs (wrong type, pickle refused, missing parts)."""


class Cancelled(StyleCloakError):
    """The user asked to stop; nothing was written."""


class RunError(StyleCloakError):
    """The request was valid but the work failed part-way (an output could not be written, some inputs failed).
    The command line exits with 1 for these (2 is for requests that cannot work as given). ``summary`` holds
    what was done before the failure, when known."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary


class OutputError(RunError):
    """An output file could not be written (disk full, folder became read-only, ...); nothing partial is left."""
