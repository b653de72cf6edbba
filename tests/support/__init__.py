"""Test support: real servers started per test, and comparisons of data sets."""
