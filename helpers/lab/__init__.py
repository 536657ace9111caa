"""Code of the notebooks beyond the walkthrough (07-15), and of the scripts and benchmarks (see ``helpers/__init__.py``)."""
