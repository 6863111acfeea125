#!/usr/bin/env bash
# Fine-tune and/or evaluate BERT on a GLUE task with the original's positional arguments:
#
#   bash scripts/run_glue.sh [init_checkpoint] [data_dir] [vocab_file] [config_file] [out_dir] [task_name] \
#        [num_gpu] [batch_size] [gradient_accumulation_steps] [learning_rate] [warmup_proportion] [epochs] \
#        [max_steps] [precision] [seed] [mode] [more run_glue.py flags...]
#   bash scripts/run_glue.sh $(source scripts/configs/glue_config.sh && mrpc_dgxa100_8gpu_fp16)
#
# precision: auto, fp16, bf16, tf32 or fp32. num_gpu > 1 launches that many processes with torchrun (forced to
# 1 when mode is exactly "eval"). mode may contain "train", "eval" and/or "prediction" (default
# "train eval"). batch_size is per process, for training and evaluation. Arguments after the 16th are
# passed on to run_glue.py unchanged. Output, logfile and dllogger.json go to out_dir.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR/.. source=scripts/finetune_common.sh
source "$CODEDIR/scripts/finetune_common.sh"
PREP_DIR=${BERT_PREP_WORKING_DIR:-$CODEDIR/data}

init_checkpoint=${1:-"$CODEDIR/checkpoints/bert_uncased.pt"}
data_dir=${2:-"$PREP_DIR/download/glue/MRPC/"}
vocab_file=${3:-"$PREP_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"}
config_file=${4:-"$CODEDIR/bert_config.json"}
out_dir=${5:-"$CODEDIR/results/MRPC"}
task_name=${6:-"mrpc"}
num_gpu=${7:-"8"}
batch_size=${8:-"16"}
gradient_accumulation_steps=${9:-"1"}
learning_rate=${10:-"2.4e-5"}
warmup_proportion=${11:-"0.1"}
epochs=${12:-"3"}
max_steps=${13:-"-1.0"}
precision=${14:-"fp16"}
seed=${15:-"2"}
mode=${16:-"train eval"}
extra_args=("${@:17}")

check_count "batch_size (argument 8)" "$batch_size" 1
check_count "gradient_accumulation_steps (argument 9)" "$gradient_accumulation_steps" 1
check_number "learning_rate (argument 10)" "$learning_rate"
check_number "warmup_proportion (argument 11)" "$warmup_proportion"
check_number "epochs (argument 12)" "$epochs"
check_number "max_steps (argument 13)" "$max_steps"
check_integer "seed (argument 15)" "$seed"
set_classifier_run "$mode" "$num_gpu" "$precision" "$batch_size" "$gradient_accumulation_steps"
set_classifier_args "$init_checkpoint" "$data_dir" "$vocab_file" "$config_file" "$out_dir" \
  "$learning_rate" "$warmup_proportion" "$epochs" "$max_steps" "$seed"

args=(
  --task_name "$task_name"
  "${CLASSIFIER_ARGS[@]}"
  "${PRECISION_ARGS[@]}"
  "${MODE_ARGS[@]}"
  "${extra_args[@]}"
)

run_logged "$out_dir/logfile" "${LAUNCH[@]}" "$CODEDIR/run_glue.py" "${args[@]}"
