"""Benchmarks: scripts, each run as `.venv/bin/python bench/NAME.py`; some share pieces."""
