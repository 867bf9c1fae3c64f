"""Throughput and cost benchmarks (the README's "Benchmarks" section); each script prints JSON
lines. Run them from the repository root, e.g. `.venv/bin/python -m benchmarks.train_throughput
--help`; `benchmarks.summarize` turns benchmarks/results/*.jsonl into SUMMARY.md.
"""
