"""Tiny task apps that the runtime tests run in real worker processes."""
