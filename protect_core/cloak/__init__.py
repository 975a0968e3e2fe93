"""Cloak Image block: methods, optimiser, budgets, presets and the batch runner."""
