#!/usr/bin/env bash
# One prepared command for a lent GPU (at most 7 minutes): the card and versions, tests/test_cuda.py,
# then BERT-large phase-1/phase-2 pretraining rows from benchmarks/bench_gpu.py. Everything goes to
# OUT/gpu.jsonl as JSON lines, written as it is measured, so a run cut short keeps what it has.
#
#   bash benchmarks/gpu.sh OUT             # on the GPU machine
#   bash benchmarks/gpu.sh OUT --dry-run   # anywhere: tiny model on the CPU (tests/test_gpu_script.py)
#
# Python: $PYTHON, else .venv/bin/python, else python3. The repository root goes on PYTHONPATH, so
# bench_gpu.py imports the project's modules where it is not installed (`make` installs it); a folder
# .gpu_deps (e.g. pytest installed with `pip install --target .gpu_deps pytest`) goes there too, for
# machines without pytest.
# GPU_SH_BUDGET_S [400]: seconds for the whole script; the benchmark gets what the tests leave.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

OUT=${1:?usage: bash benchmarks/gpu.sh OUT [--dry-run]}
DRY_RUN=${2:-}
if [ -n "$DRY_RUN" ] && [ "$DRY_RUN" != "--dry-run" ]; then
  echo "error: unknown option '$DRY_RUN' (only --dry-run)" >&2
  exit 2
fi
mkdir -p "$OUT"
JSONL=$OUT/gpu.jsonl
BUDGET_S=${GPU_SH_BUDGET_S:-400}
START=$SECONDS

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpu_deps ]; then
  export PYTHONPATH="$PWD/.gpu_deps:$PYTHONPATH"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

# emit KIND KEY VALUE [KEY VALUE ...]: one JSON line (values as strings), through Python for quoting.
emit() {
  "$PY" - "$JSONL" "$@" <<'EOF'
import json, sys, time
path, kind, *pairs = sys.argv[1:]
record = {"kind": kind, "time": round(time.time(), 3), **dict(zip(pairs[0::2], pairs[1::2]))}
with open(path, "a", encoding="utf-8") as fh:
    fh.write(json.dumps(record) + "\n")
print(json.dumps(record), flush=True)
EOF
}

if command -v nvidia-smi >/dev/null 2>&1; then
  emit nvidia-smi query "$(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
    --format=csv,noheader 2>&1 | head -n 4)"
else
  emit nvidia-smi query "not available"
fi

# tests/test_cuda.py (skips itself without CUDA); at most 120 s.
if "$PY" -c "import pytest" >/dev/null 2>&1; then
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py >"$OUT/test_cuda.txt" 2>&1
  rc=$?
  emit tests file tests/test_cuda.py rc "$rc" summary "$(tail -n 1 "$OUT/test_cuda.txt")" \
    failures "$(grep -E '^(FAILED|ERROR)' "$OUT/test_cuda.txt" | head -n 10)"
else
  emit tests file tests/test_cuda.py rc "not run" summary "pytest is not installed for $PY (see docs/gpu.md: .gpu_deps)"
fi

left=$(( BUDGET_S - (SECONDS - START) ))
bench_args=(--out "$JSONL" --budget_s "$(( left - 20 ))")
[ -n "$DRY_RUN" ] && bench_args+=(--dry-run)
timeout "$left" "$PY" benchmarks/bench_gpu.py "${bench_args[@]}" >"$OUT/bench_gpu.log" 2>&1
rc=$?
emit finished script benchmarks/gpu.sh bench_rc "$rc" seconds "$(( SECONDS - START ))"
exit 0
