#!/usr/bin/env bash
# One-command GPU check of mvector (run from anywhere; it works in the repository root):
#   install what the GPU image lacks from wheels shipped beside the tree (.whl/), run the CUDA tests, then the
#   CUDA benchmarks (model throughput ECAPA-512 / CAM++ bf16, featurizers, end-to-end training from files on local
#   disk with N loader workers, the real trainer loop if time is left); every figure goes to $OUT as JSON.
#   Planned for under 6 minutes on one H100 (--budget, default 330 s, for the Python part).
#
# Usage:
#   OUT=/path/to/results benchmarks/device_check.sh            # on the GPU machine ($OUT defaults to ./device_out)
#   benchmarks/device_check.sh --dry-run                       # plan only: syntax, wheels found, imports, steps
#   benchmarks/device_check.sh --smoke                         # every step on the CPU at toy sizes (seconds)
#   benchmarks/device_check.sh --prepare-wheels [PYVER]        # on a CPU machine with pip access: fill .whl/
#
# Wheels: the GPU image (Python 3.12, torch 2.11) has no soundfile, soxr, cffi or pycparser. --prepare-wheels
# downloads manylinux x86-64 wheels of those for Python PYVER (default 3.12) into .whl/ (git-ignored). With the
# device tool, carry the folder: run(command="benchmarks/device_check.sh", carry=[".whl"]).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
MODE=run
EXTRA=()
case "${1:-}" in
  --dry-run) MODE=dry; shift ;;
  --smoke) MODE=smoke; shift ;;
  --prepare-wheels) MODE=wheels; shift ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
esac
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python
OUT=${OUT:-$ROOT/device_out}
# Wheels the GPU image lacks (pinned: one version of each, or pip refuses the set).
WHEELS=(soundfile==0.14.0 soxr==1.1.0 cffi==2.1.1 pycparser==3.12)

if [ "$MODE" = wheels ]; then
  PYVER=${1:-3.12}
  mkdir -p .whl
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}" || exit 1
  ls -l .whl
  exit 0
fi

mkdir -p "$OUT"
LOG="$OUT/device_check.log"
echo "device_check: mode=$MODE out=$OUT python=$("$PY" -c 'import sys; print(sys.version.split()[0])')" | tee "$LOG"

SITE=${MVECTOR_WHEEL_SITE:-/tmp/mvector-site}
shopt -s nullglob
whl=(.whl/*.whl)
if [ ${#whl[@]} -gt 0 ]; then
  if [ "$MODE" = run ]; then
    # --target keeps the image's own packages untouched; PYTHONPATH puts the wheels (and the tree) first.
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${whl[@]}" \
      2>&1 | tee -a "$LOG" || echo "device_check: wheel install failed; continuing" | tee -a "$LOG"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "device_check: would install ${#whl[@]} wheel(s) from .whl/: ${whl[*]}" | tee -a "$LOG"
  fi
else
  echo "device_check: no .whl/ wheels (run --prepare-wheels on a machine with pip access if soundfile is missing)" \
    | tee -a "$LOG"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

case "$MODE" in
  dry) EXTRA=(--dry-run) ;;
  smoke) EXTRA=(--smoke) ;;
esac
"$PY" "$ROOT/benchmarks/device_check.py" --out "$OUT" "${EXTRA[@]}" "$@" 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
