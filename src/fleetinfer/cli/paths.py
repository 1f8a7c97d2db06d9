"""Task modules are imported the way `python -m` would find them: from the working directory."""

from __future__ import annotations

import os
import sys


def add_working_directory_to_path() -> None:
    """Put the working directory first on sys.path (the `fleetinfer` script's own folder is)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
