"""Benchmarks (not collected by pytest): each runs its comparison side by side and writes its
section of BENCHMARKS.md with the machine, date and versions."""
