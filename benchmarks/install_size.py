"""What `pip install .` (no extras) puts in a fresh virtual environment: no roadchange, and how big.

    .venv/bin/python benchmarks/install_size.py            # prints one JSON object

The venv is made `--without-pip` and filled by this interpreter's pip (`pip --python`), so the
size is what the install added, not the venv's own pip and setuptools.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
             "-q", str(ROOT)],
            check=True,
        )  # fmt: skip
        install_s = time.monotonic() - started
        [site] = list(venv.glob("lib/python*/site-packages"))
        top = sorted(
            ((folder_bytes(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True
        )
        probe = "import importlib.util as u; print(u.find_spec('roadchange') is not None)"
        has_roadchange = subprocess.run(  # from the temporary folder: not the repository's
            [str(venv / "bin" / "python"), "-c", probe],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        du = subprocess.run(["du", "-sm", str(site)], capture_output=True, text=True, check=True)
        print(
            json.dumps(
                {
                    "site_packages_mib": round(folder_bytes(site) / 2**20, 1),
                    "site_packages_du_mib": int(du.stdout.split()[0]),
                    "roadchange_installed": has_roadchange == "True",
                    "largest_mib": {name: round(size / 2**20, 1) for size, name in top[:6]},
                    "install_s": round(install_s, 1),
                    "python": sys.version.split()[0],
                }
            )
        )


if __name__ == "__main__":
    main()
