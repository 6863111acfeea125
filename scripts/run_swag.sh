#!/usr/bin/env bash
# Fine-tune and/or evaluate BERT on SWAG multiple choice, in the style of run_glue.sh:
#
#   bash scripts/run_swag.sh [init_checkpoint] [data_dir] [vocab_file] [config_file] [out_dir] [num_gpu] \
#        [batch_size] [gradient_accumulation_steps] [learning_rate] [warmup_proportion] [epochs] [max_steps] \
#        [precision] [seed] [mode] [more run_swag.py flags...]
#
# data_dir holds train.csv and val.csv. precision: auto, fp16, bf16, tf32 or fp32. num_gpu > 1 launches that
# many processes with torchrun (forced to 1 when mode is exactly "eval"). mode may contain "train"
# and/or "eval" (default "train eval"). Arguments after the 15th are passed on to run_swag.py unchanged.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR/.. source=scripts/finetune_common.sh
source "$CODEDIR/scripts/finetune_common.sh"
PREP_DIR=${BERT_PREP_WORKING_DIR:-$CODEDIR/data}

init_checkpoint=${1:-"$CODEDIR/checkpoints/bert_uncased.pt"}
data_dir=${2:-"$PREP_DIR/download/swag/data"}
vocab_file=${3:-"$PREP_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"}
config_file=${4:-"$CODEDIR/bert_config.json"}
out_dir=${5:-"$CODEDIR/results/SWAG"}
num_gpu=${6:-"8"}
batch_size=${7:-"16"}
gradient_accumulation_steps=${8:-"1"}
learning_rate=${9:-"2e-5"}
warmup_proportion=${10:-"0.1"}
epochs=${11:-"3"}
max_steps=${12:-"-1.0"}
precision=${13:-"fp16"}
seed=${14:-"42"}
mode=${15:-"train eval"}
extra_args=("${@:16}")

check_count "batch_size (argument 7)" "$batch_size" 1
check_count "gradient_accumulation_steps (argument 8)" "$gradient_accumulation_steps" 1
check_number "learning_rate (argument 9)" "$learning_rate"
check_number "warmup_proportion (argument 10)" "$warmup_proportion"
check_number "epochs (argument 11)" "$epochs"
check_number "max_steps (argument 12)" "$max_steps"
check_integer "seed (argument 14)" "$seed"
set_classifier_run "$mode" "$num_gpu" "$precision" "$batch_size" "$gradient_accumulation_steps"
set_classifier_args "$init_checkpoint" "$data_dir" "$vocab_file" "$config_file" "$out_dir" \
  "$learning_rate" "$warmup_proportion" "$epochs" "$max_steps" "$seed"

args=(
  "${CLASSIFIER_ARGS[@]}"
  "${PRECISION_ARGS[@]}"
  "${MODE_ARGS[@]}"
  "${extra_args[@]}"
)

run_logged "$out_dir/logfile" "${LAUNCH[@]}" "$CODEDIR/run_swag.py" "${args[@]}"
