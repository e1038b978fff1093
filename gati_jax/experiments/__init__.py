"""Benchmarks, profilers, plots and reports over the core packages; nothing in the core
imports them."""
