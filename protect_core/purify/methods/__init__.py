"""Purifiers, one small module per purifier (or per small group); each registers with purify.base.register."""
