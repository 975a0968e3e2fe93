"""Exception types that StyleCloak raises on purpose, each carrying a message meant for the user."""


class StyleCloakError(Exception):
    """Base class: the message is complete and names what to change; no traceback is needed to act on it."""


class ImageError(StyleCloakError):
    """An input image cannot be used (unreadable, truncated, too small, too large, unsupported)."""


class ModelError(StyleCloakError):
    """A model file or object is not what StyleCloak needs (wrong type, pickle refused, missing parts)."""


class Cancelled(StyleCloakError):
    """The user asked to stop; nothing was written."""
