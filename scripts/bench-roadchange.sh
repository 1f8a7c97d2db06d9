#!/usr/bin/env bash
# One command per table of docs/benchmarks/roadchange-serving.md and roadchange-heavy-model.md:
#
#   scripts/bench-roadchange.sh MODEL PATTERN OUT [fleetinfer bench options...]
#
# MODEL: cdnet, cdnet-l (shipped) or cdnet-h (the heavy-weights model: trained here on first use
# into $RC/heavy, 10 steps, about 290 MB). PATTERN: per-window (one window per model call) or
# per-segment (one call per segment). The 32 segments are generated once into $RC/seg32
# (RC defaults to /tmp/rc). Modes: isolated-per-task, isolated, shared, triton (when
# .venv-triton exists: scripts/triton-venv.sh) and ray (when Ray is installed: fleetinfer[ray]);
# `--modes`, `--tasks` and `--rounds` after OUT override them (64 tasks, 3 rounds by default).
# Prints `uptime` before and after: the machine's load is part of every number.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: $0 MODEL PATTERN OUT [bench options]}
PATTERN=${2:?usage: $0 MODEL PATTERN OUT [bench options]}
OUT=${3:?usage: $0 MODEL PATTERN OUT [bench options]}
shift 3
RC=${RC:-/tmp/rc}
PY=.venv/bin
mkdir -p "$RC"
[ -d "$RC/seg32" ] || $PY/roadchange generate --segments 32 --seed 20261124 --out "$RC/seg32"
MODELS=roadchange/src/roadchange/models
if [ "$MODEL" = cdnet-h ]; then
  MODELS=$RC/heavy
  [ -f "$MODELS/cdnet-h/config.toml" ] || $PY/roadchange train --variant cdnet-h \
    --preset default --preset hard --seed 1000 --segments 4 --steps 10 --val-segments 4 \
    --out "$MODELS"
fi
PAYLOADS=$RC/$MODEL.jsonl
for f in "$RC"/seg32/*.npz; do echo "{\"path\": \"$f\", \"model\": \"$MODEL\"}"; done > "$PAYLOADS"
MODES=isolated-per-task,isolated,shared
EXTRA=()
if [ -x .venv-triton/bin/python ]; then
  MODES=$MODES,triton
  EXTRA+=(--pytriton-python .venv-triton/bin/python)
fi
if $PY/python -c "import ray" 2>/dev/null; then MODES=$MODES,ray; fi
uptime
$PY/fleetinfer bench roadchange.tasks:check_segment --models "$MODELS" --payloads "$PAYLOADS" \
  --call-pattern "$PATTERN" --tasks 64 --workers 8 --rounds 3 --modes "$MODES" --preload \
  "${EXTRA[@]}" --out "$OUT" "$@"
uptime
