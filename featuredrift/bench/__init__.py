"""Benchmarks: the monitor's overhead on the zoo and at real model shapes, printed as ratios."""
