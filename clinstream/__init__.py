"""Composition root: CLI, root settings, the embedded runtime. Nothing imports this package."""
