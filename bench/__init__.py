"""Benchmarks: a XieHe-like data set generator and a runner against the standard tools."""
