"""Shared test helpers (tiny models, repositories)."""
