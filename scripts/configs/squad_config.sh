#!/usr/bin/env bash
# Presets for scripts/run_squad.sh. Each function prints its positional arguments:
#
#   bash scripts/run_squad.sh $(source scripts/configs/squad_config.sh && dgxa100_8gpu_fp16)
#
# Override the paths by exporting init_checkpoint, squad_dir, vocab_file or OUT_DIR first. The GPU
# presets are the original's (dgx2_16gpu_fp32 now really runs fp32; the original said fp16 there);
# the cpu_* presets run one process on a CPU (bf16 needs AVX512-BF16 or AMX to be fast).
# shellcheck disable=SC2034  # variables are read by the sourcing shell

_SQUAD_CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_SQUAD_PREP_DIR=${BERT_PREP_WORKING_DIR:-$_SQUAD_CODEDIR/data}
init_checkpoint=${init_checkpoint:-"$_SQUAD_CODEDIR/checkpoints/bert_uncased.pt"}
squad_dir=${squad_dir:-"$_SQUAD_PREP_DIR/download/squad/v1.1"}
vocab_file=${vocab_file:-"$_SQUAD_PREP_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"}
OUT_DIR=${OUT_DIR:-"$_SQUAD_CODEDIR/results/SQuAD"}

# squad_args BATCH PRECISION NUM_GPU: arguments 1-10 of run_squad.sh (2 epochs, lr 3e-5, seed 1).
squad_args() {
  echo "$init_checkpoint" 2.0 "$1" 3e-5 "$2" "$3" 1 "$squad_dir" "$vocab_file" "$OUT_DIR"
}

dgxa100_8gpu_fp16() { squad_args 32 fp16 8; }
dgxa100_8gpu_tf32() { squad_args 16 tf32 8; }
dgx2_16gpu_fp16() { squad_args 16 fp16 16; }
dgx2_16gpu_fp32() { squad_args 8 fp32 16; }
dgx1_8gpu_fp16() { squad_args 10 fp16 8; }
dgx1_8gpu_fp32() { squad_args 4 fp32 8; }

cpu_fp32() { squad_args 4 fp32 1; }
cpu_bf16() { squad_args 8 bf16 1; }

# A smoke test on a CPU: the 2-layer bert_configs/tiny.json model (init_checkpoint must have its
# shape, e.g. from a short run_pretraining.py run), one epoch capped at 200 updates; mode "all"
# (any word but train/eval/prediction) trains, predicts and scores.
cpu_tiny() {
  echo "$init_checkpoint" 1.0 16 1e-4 fp32 1 1 "$squad_dir" "$vocab_file" "$OUT_DIR" all \
    "$_SQUAD_CODEDIR/bert_configs/tiny.json" 200
}
