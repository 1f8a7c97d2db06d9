#!/usr/bin/env bash
# Build the PyTriton venv used for the `triton` comparison rows (benchmarks only).
# PyTriton bundles a real tritonserver whose Python stub works under Debian's /usr/bin/python3.11
# (3.11.2), not under other 3.11 builds, so it gets a venv of its own: .venv-triton.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3.11
VENV=.venv-triton
if [ ! -x "$PY" ]; then
  echo "triton-venv: $PY is missing (Debian's python3.11); install it with apt-get install python3.11" >&2
  exit 3
fi
if ! "$PY" -c "import venv, ensurepip" 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3.11-venv >/dev/null
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "nvidia-pytriton>=0.5" "tritonclient[all]" onnxruntime numpy msgspec
"$VENV/bin/python" -c "import pytriton, tritonclient; print('pytriton', pytriton.__version__ if hasattr(pytriton,'__version__') else 'ok')"
