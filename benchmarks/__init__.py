"""Micro-benchmarks run by `make bench`; results go to reports/benchmarks/*.json."""
