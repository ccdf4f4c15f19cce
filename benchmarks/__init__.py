"""Benchmarks of hpo (run each as ``python -m benchmarks.<name>``; results in BENCHMARKS.md)."""
