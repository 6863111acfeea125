#!/usr/bin/env bash
# One script for a lent GPU: the test suite on CUDA, then BERT-large phase-1 and phase-2 pretraining
# throughput and MFU in bf16 (ours, and ours vs transformers at BERT-base).
#   bash benchmarks/gpu.sh [OUT_DIR]      (expects a venv at .venv or python3 with the requirements)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${1:-results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

echo "== test suite (CUDA visible; scripts pick the GPU by default) =="
timeout 300 "$PY" -m pytest -q -x -m "not slow" tests 2>&1 | tail -15 | tee "$OUT/tests.txt"

echo "== BERT-large phase 1 (seq 128, 20 predictions) and phase 2 (seq 512, 80), bf16 =="
"$PY" benchmarks/bench_pretraining.py --device cuda --shapes large --precisions bf16 --seq 128 --max_pred 20 \
  --batch 64 --steps 10 --warmup 3 --skip_hf 2>&1 | tail -3 | tee "$OUT/large_phase1.txt"
"$PY" benchmarks/bench_pretraining.py --device cuda --shapes large --precisions bf16 --seq 512 --max_pred 80 \
  --batch 16 --steps 10 --warmup 3 --skip_hf 2>&1 | tail -3 | tee "$OUT/large_phase2.txt"
echo "== ours vs transformers, BERT-base seq 128, bf16 =="
"$PY" benchmarks/bench_pretraining.py --device cuda --shapes base --precisions bf16 --batch 64 --steps 10 \
  --warmup 3 2>&1 | tail -3 | tee "$OUT/base_vs_hf.txt"
