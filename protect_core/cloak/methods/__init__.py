"""Cloak methods, one module each; each registers itself with protect_core.cloak.base.register."""
