#!/usr/bin/env bash
# The main job on an embedded default: pretrain a tiny BERT, phase 1 then phase 2, on text that ships
# with Python itself (pydoc topics and standard-library docstrings), on the CPU, with no download.
#
#   make demo            (or: bash scripts/demo.sh [OUT_DIR], with the venv's python first on PATH)
#
# Steps: build the demo corpus -> one article per line -> sentence-split shards -> a WordPiece vocab
# trained on the corpus -> HDF5 shards for seq 128 and seq 512 -> scripts/run_pretraining.sh (cpu_tiny).
set -euo pipefail
demo_start=$SECONDS

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(mkdir -p "${1:-$CODEDIR/demo_out}" && cd "${1:-$CODEDIR/demo_out}" && pwd)
PYTHON=${PYTHON:-python3}
VOCAB_SIZE=${VOCAB_SIZE:-8192}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

prep=("$PYTHON" "$CODEDIR/data/bertPrep.py" --working_dir "$OUT/data" --dataset demo
      --n_training_shards 4 --n_test_shards 1 --fraction_test_set 0.05 --n_processes 2
      --dupe_factor 2 --vocab_file "$OUT/data/vocab/demo/vocab.txt")
step() { echo; echo "=== $* ==="; }

step "1/5 demo corpus from this Python installation's documentation"
"${prep[@]}" --action download
step "2/5 one document per line, then sentence-split train/test shards"
"${prep[@]}" --action text_formatting
"${prep[@]}" --action sharding
step "3/5 WordPiece vocab ($VOCAB_SIZE tokens) trained on the corpus"
[ -s "$OUT/data/vocab/demo/vocab.txt" ] || "${prep[@]}" --action create_vocab --vocab_size "$VOCAB_SIZE"
step "4/5 HDF5 shards: phase 1 (seq 128, 20 predictions) and phase 2 (seq 512, 80 predictions)"
"${prep[@]}" --action create_hdf5_files --max_seq_length 128 --max_predictions_per_seq 20
"${prep[@]}" --action create_hdf5_files --max_seq_length 512 --max_predictions_per_seq 80

vocab_rows=$(wc -l < "$OUT/data/vocab/demo/vocab.txt")
"$PYTHON" - "$CODEDIR/bert_configs/tiny.json" "$OUT/tiny_config.json" "$vocab_rows" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["vocab_size"] = int(sys.argv[3])
json.dump(config, open(sys.argv[2], "w"), indent=2, sort_keys=True)
PY

step "5/5 pretraining: phase 1 then phase 2 (scripts/run_pretraining.sh, cpu_tiny preset)"
hdf5_dir() { echo "$OUT/data/hdf5_lower_case_1_seq_len_$1_max_pred_$2_masked_lm_prob_0.15_random_seed_12345_dupe_factor_2/demo"; }
rm -rf "$OUT/results"
cpu_tiny_recipe() {
  DATA_P1=$(hdf5_dir 128 20) DATA_P2=$(hdf5_dir 512 80) TINY_CONFIG=$OUT/tiny_config.json
  # shellcheck source=scripts/configs/pretrain_config.sh
  source "$CODEDIR/scripts/configs/pretrain_config.sh"
  cpu_tiny
}
read -r -a recipe <<< "$(cpu_tiny_recipe)"
RESULTS_DIR="$OUT/results" PYTHON="$PYTHON" EXTRA_ARGS="--disable_progress_bar --log_freq=10" \
  bash "$CODEDIR/scripts/run_pretraining.sh" "${recipe[@]}"

echo
echo "Demo finished."
echo "  checkpoints:          $OUT/results/checkpoints/"
find "$OUT/results/checkpoints" -name 'ckpt_*.pt' -printf '                        %f\n' | sort -V
echo "  loss curve, phase 1:  $OUT/results/dllogger_loss.png"
echo "  loss curve, phase 2:  $OUT/results/dllogger_phase2_loss.png"
echo "  logs:                 $OUT/results/*.log, $OUT/results/dllogger*.json"
# What the run chose on this CPU (--precision auto, --cpu_gemm auto), from its own log.
"$PYTHON" - "$OUT/results/dllogger.json" "$((SECONDS - demo_start))" <<'PY'
import json, sys
starts = [json.loads(line[5:])["data"] for line in open(sys.argv[1], encoding="utf-8") if line.startswith("DLLL ")]
start = next(d for d in starts if d.get("train_start"))
print(f"  precision {start['precision']}, fp32 GEMM library {start.get('cpu_gemm', '-')}, "
      f"wall time {int(sys.argv[2]) // 60} min {int(sys.argv[2]) % 60} s")
PY
