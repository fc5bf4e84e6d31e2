"""Benchmarks: one script per measurement; `make bench` runs them all (`python -m benchmarks.run_all`)."""
