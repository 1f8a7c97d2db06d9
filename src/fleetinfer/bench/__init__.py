"""Benchmarks: the same task set through each serving mode, measured side by side."""
