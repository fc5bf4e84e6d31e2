"""Benchmarks: one script per measurement; `make bench` runs them all.

Each module has ``run(full=False) -> dict``;
``python -m benchmarks.run_all`` runs them in one process.
"""
