#!/opt/fleetinfer/bin/python
"""The image's HEALTHCHECK: GET the node's /healthz on 127.0.0.1:$FLEETINFER_METRICS_PORT.

Exit 0 on 200, 1 otherwise (503 while draining or with no live worker, or nothing listening).
A container that runs only `fleetinfer serve` has no /healthz: run it with --no-healthcheck
(Kubernetes: no probe, or a probe on the socket; ECS: no healthCheck).
"""

import os
import sys
import urllib.error
import urllib.request

port = os.environ.get("FLEETINFER_METRICS_PORT", "9090")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as reply:
        sys.exit(0 if reply.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    print(f"/healthz on port {port}: {exc}", file=sys.stderr)
    sys.exit(1)
