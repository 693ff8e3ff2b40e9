"""Tests of the benchmark scripts (CPU smoke, statistics, report rendering)."""
