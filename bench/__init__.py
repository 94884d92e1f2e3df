"""Benchmarks that time a baseline and ours in the same process and print the ratio."""
