#!/usr/bin/env bash
# One prepared command for a lent GPU (about 7 minutes): a preflight record (versions, card, free memory,
# C compiler, Python.h, the triton compiler, NCCL), tests/test_cuda.py in groups (correctness first, each
# group in its own process under its own timeout), BERT-large rows from benchmarks/bench_gpu.py (each in
# its own process, skipped when its projected time no longer fits), the SDPA probe, and a summary.
# Everything goes to OUT/gpu.jsonl as JSON lines, written as it is known, so a run cut short keeps what
# it has; the last line is the summary. How to read it: docs/gpu.md.
#
#   bash benchmarks/gpu.sh OUT             # on the GPU machine
#   bash benchmarks/gpu.sh OUT --dry-run   # anywhere: tiny model on the CPU (tests/test_gpu_script.py)
#
# Python: $PYTHON, else .venv/bin/python, else python3. The repository root goes on PYTHONPATH, so
# bench_gpu.py imports the project's modules where it is not installed (`make` installs it); a folder
# .gpu_deps (e.g. pytest installed with `pip install --target .gpu_deps pytest`) goes there too, for
# machines without pytest.
# GPU_SH_BUDGET_S [420]: seconds for the whole script; the rows get what the tests leave.
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
BUDGET_S=${GPU_SH_BUDGET_S:-420}
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

# 1. Preflight: everything a compiled row depends on, before anything runs on the device.
if ! timeout 60 "$PY" benchmarks/bench_gpu.py --preflight --out "$JSONL" >"$OUT/preflight.log" 2>&1; then
  emit preflight error "$(tail -n 5 "$OUT/preflight.log")"
fi

# 2. tests/test_cuda.py (each test skips itself without CUDA), one group per process, correctness
# first: a timeout or a crash ends its own group only, and -v names every test that ran before it.
# NAME|TIMEOUT_S|TESTS (pytest -k). tests/test_gpu_script.py checks that every test is in one group.
TEST_GROUPS=(
  "kernels|60|test_flash_varlen_dropout_matches_reference_with_the_kernels_own_mask or test_flash_varlen_bert_large_shapes_match_per_sequence_sdpa or test_packed_layer_stack_gradients_match_padded or test_cuda_fp32_model_equals_cpu_model or test_packed_cuda_model_matches_padded_model"
  "optimizer|60|test_lamb_matches_float64_reference or test_fp16_grad_scaler_skips_the_overflowed_step_and_then_applies_the_next or test_fp16_grad_scaler_skip_and_recover_on_a_bert_step or test_trainer_step_never_waits_for_the_device"
  "compile|150|test_compiled_bert_step_matches_eager"
  "pretraining|90|test_run_pretraining_fp16_accumulation_checkpoint_and_resume or test_post_accumulation_allreduce_on_device_tensors"
)
for group in "${TEST_GROUPS[@]}"; do
  IFS='|' read -r name limit tests <<<"$group"
  log=$OUT/tests_$name.txt
  if ! "$PY" -c "import pytest" >/dev/null 2>&1; then
    emit tests group "$name" rc "not run" summary "pytest is not installed for $PY (see docs/gpu.md: .gpu_deps)"
    continue
  fi
  timeout -k 10 "$limit" "$PY" -m pytest -v -p no:cacheprovider tests/test_cuda.py -k "$tests" >"$log" 2>&1
  rc=$?
  if [ "$rc" = 124 ]; then rc="124 (timed out after $limit s)"; fi
  emit tests group "$name" rc "$rc" summary "$(tail -n 1 "$log")" \
    ran "$(grep -cE '(PASSED|FAILED|SKIPPED|ERROR)' "$log")" \
    last "$(grep -E '(PASSED|FAILED|SKIPPED|ERROR)' "$log" | tail -n 1)" \
    failures "$(grep -E '^(FAILED|ERROR)' "$log" | head -n 10)"
done

# 3. The rows, in order of value, each in its own process (bench_gpu.py plans, skips by budget and
# records crashes); 30 s are kept for the SDPA probe and the summary.
left=$(( BUDGET_S - (SECONDS - START) ))
bench_args=(--out "$JSONL" --budget_s "$(( left - 30 ))")
[ -n "$DRY_RUN" ] && bench_args+=(--dry-run)
timeout -k 10 "$(( left > 10 ? left : 10 ))" "$PY" benchmarks/bench_gpu.py "${bench_args[@]}" >"$OUT/bench_gpu.log" 2>&1
rc=$?
emit finished script benchmarks/gpu.sh bench_rc "$rc" seconds "$(( SECONDS - START ))"

# 4. The summary, last.
"$PY" benchmarks/bench_gpu.py --summarize --out "$JSONL" --script_seconds "$(( SECONDS - START ))" >>"$OUT/bench_gpu.log" 2>&1
exit 0
