"""Benchmarks. Never run as tests: `python -m bench` runs them all (see bench/__main__.py)."""
