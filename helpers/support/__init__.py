"""Plumbing the notebooks call but never teach; imports nothing from ``helpers`` above it (see ``helpers/__init__.py``)."""
