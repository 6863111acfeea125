#!/usr/bin/env bash
# Fine-tune and/or evaluate BERT on SQuAD v1.1 with the original's positional arguments:
#
#   bash scripts/run_squad.sh [init_checkpoint] [epochs] [batch_size] [learning_rate] [precision] [num_gpu] \
#        [seed] [squad_dir] [vocab_file] [OUT_DIR] [mode] [CONFIG_FILE] [max_steps] [more run_squad.py flags...]
#   bash scripts/run_squad.sh $(source scripts/configs/squad_config.sh && dgxa100_8gpu_fp16)
#
# precision: auto, fp16, bf16, tf32 or fp32. num_gpu > 1 launches that many processes with torchrun (GPUs, or
# gloo processes on a CPU machine). mode: "train", "eval" (predict dev-v1.1.json and score it),
# "prediction" (predict only), anything else (default "train eval") does all three. squad_dir holds
# train-v1.1.json and dev-v1.1.json. Arguments after the 13th are passed on to run_squad.py unchanged.
# Output, logfile.txt and dllogger.json go to OUT_DIR.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR/.. source=scripts/finetune_common.sh
source "$CODEDIR/scripts/finetune_common.sh"
PREP_DIR=${BERT_PREP_WORKING_DIR:-$CODEDIR/data}

init_checkpoint=${1:-"$CODEDIR/checkpoints/bert_uncased.pt"}
epochs=${2:-"2.0"}
batch_size=${3:-"4"}
learning_rate=${4:-"3e-5"}
precision=${5:-"fp16"}
num_gpu=${6:-"8"}
seed=${7:-"1"}
squad_dir=${8:-"$PREP_DIR/download/squad/v1.1"}
vocab_file=${9:-"$PREP_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"}
OUT_DIR=${10:-"$CODEDIR/results/SQuAD"}
mode=${11:-"train eval"}
CONFIG_FILE=${12:-"$CODEDIR/bert_config.json"}
max_steps=${13:-"-1"}
extra_args=("${@:14}")

check_number "epochs (argument 2)" "$epochs"
check_count "batch_size (argument 3)" "$batch_size" 1
check_number "learning_rate (argument 4)" "$learning_rate"
check_integer "seed (argument 7)" "$seed"
check_number "max_steps (argument 13)" "$max_steps"
set_precision_args "$precision"
set_launcher "$num_gpu"

train_args=(--do_train --train_file="$squad_dir/train-v1.1.json" --train_batch_size="$batch_size")
predict_args=(--do_predict --predict_file="$squad_dir/dev-v1.1.json" --predict_batch_size="$batch_size")
case "$mode" in
  train) mode_args=("${train_args[@]}") ;;
  eval) mode_args=("${predict_args[@]}" --do_eval) ;;
  prediction) mode_args=("${predict_args[@]}") ;;
  *) mode_args=("${train_args[@]}" "${predict_args[@]}" --do_eval) ;;
esac

args=(
  --init_checkpoint="$init_checkpoint"
  --bert_model=bert-large-uncased
  --do_lower_case
  --max_seq_length=384
  --doc_stride=128
  --num_train_epochs="$epochs"
  --learning_rate="$learning_rate"
  --seed="$seed"
  --max_steps="$max_steps"
  --vocab_file="$vocab_file"
  --config_file="$CONFIG_FILE"
  --output_dir="$OUT_DIR"
  --json-summary="$OUT_DIR/dllogger.json"
  "${PRECISION_ARGS[@]}"
  "${mode_args[@]}"
  "${extra_args[@]}"
)

run_logged "$OUT_DIR/logfile.txt" "${LAUNCH[@]}" "$CODEDIR/run_squad.py" "${args[@]}"
