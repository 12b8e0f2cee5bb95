"""Benchmarks, not tests: each module prints one JSON line per workload and writes
bench/results/<name>.json (see bench/README.md). Run them from the repository root with
`.venv/bin/python -m bench.<name>` or all four with `make bench`."""
