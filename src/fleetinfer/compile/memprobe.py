"""Memory of one serving configuration, measured in a fresh process (`python -m` this module).

Argument: one JSON object {"path", "session_config", "intra_op_threads", "instances", "inputs":
[{"name", "dtype", "shape"}]}. Output: one JSON line {"session_pss_mb", "process_pss_mb"}, the
PSS added by creating the sessions and running each once, and the whole process's PSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fleetinfer.errors import ArtifactLoadError


def probe(spec: Mapping[str, Any]) -> dict[str, float]:
    from fleetinfer.compile.measure import open_session, pss_mb

    inputs = {
        i["name"]: np.zeros(tuple(i["shape"]), dtype=np.dtype(i["dtype"])) for i in spec["inputs"]
    }
    before = pss_mb()
    sessions = [
        open_session(
            Path(spec["path"]),
            intra_op_threads=int(spec["intra_op_threads"]),
            session_config=spec["session_config"],
        )
        for _ in range(int(spec["instances"]))
    ]
    for session in sessions:
        session.run(None, inputs)
    after = pss_mb()
    return {"session_pss_mb": round(after - before, 2), "process_pss_mb": round(after, 2)}


def measure_memory(
    path: Path,
    *,
    inputs: Sequence[Mapping[str, Any]],
    intra_op_threads: int = 0,
    instances: int = 1,
    session_config: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> dict[str, float]:
    """Run `probe` in a child process (a clean heap: arenas of earlier sessions do not count)."""
    spec = {
        "path": str(path),
        "session_config": dict(session_config or {}),
        "intra_op_threads": intra_op_threads,
        "instances": instances,
        "inputs": list(inputs),
    }
    done = subprocess.run(
        [sys.executable, "-m", "fleetinfer.compile.memprobe", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise ArtifactLoadError(f"memory probe of {path} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str]) -> int:
    print(json.dumps(probe(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
