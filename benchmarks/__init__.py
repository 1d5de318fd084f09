"""Benchmarks of flask-signal-bridge: `python -m benchmarks` (or `make bench`) writes RESULTS.md."""
