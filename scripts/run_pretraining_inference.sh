#!/usr/bin/env bash
# Evaluate (and time) a pretraining checkpoint on HDF5 shards: MLM and NSP accuracy and loss, sequences/s.
#
#   bash scripts/run_pretraining_inference.sh [init_checkpoint] [eval_dir] [eval_batch_size] [precision] \
#        [num_gpus] [CONFIG_FILE] [max_steps] [RESULTS_DIR] [shard_kind] [more run_pretraining_inference.py flags...]
#
# init_checkpoint: ckpt_<step>.pt (or any layout the loader accepts); default the last phase-2 checkpoint.
# eval_dir: folder of .hdf5 shards; the files whose name contains shard_kind (default "test") are evaluated.
# precision: auto, fp16, bf16, tf32 or fp32. num_gpus > 1 launches that many processes with torchrun (GPUs, or
# gloo processes on a CPU machine); the ranks split the batches and report the one-process numbers.
# max_steps: batches per process (-1 = the whole set). Arguments after the 9th go to the Python script.
# Output: RESULTS_DIR/dllogger_inference.json and a log file beside it.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR/.. source=scripts/finetune_common.sh
source "$CODEDIR/scripts/finetune_common.sh"
BERT_PREP_WORKING_DIR=${BERT_PREP_WORKING_DIR:-$CODEDIR/data}

init_checkpoint=${1:-"$CODEDIR/results/checkpoints/ckpt_8601.pt"}
eval_dir=${2:-"$BERT_PREP_WORKING_DIR/hdf5_lower_case_1_seq_len_512_max_pred_80_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5/wikicorpus_en/"}
eval_batch_size=${3:-"64"}
precision=${4:-"fp16"}
num_gpus=${5:-"1"}
CONFIG_FILE=${6:-"$CODEDIR/bert_config.json"}
max_steps=${7:-"-1"}
RESULTS_DIR=${8:-"$CODEDIR/results"}
shard_kind=${9:-"test"}
extra_args=("${@:10}")

[ -e "$init_checkpoint" ] || { echo "Error: checkpoint $init_checkpoint not found" >&2; exit 1; }
[ -d "$eval_dir" ] || { echo "Error: evaluation folder $eval_dir not found" >&2; exit 1; }
[ -f "$CONFIG_FILE" ] || { echo "Error: BERT config $CONFIG_FILE not found" >&2; exit 1; }
check_count "eval_batch_size (argument 3)" "$eval_batch_size" 1
check_integer "max_steps (argument 7)" "$max_steps"
set_precision_args "$precision"
set_launcher "$num_gpus"

args=(
  --init_checkpoint="$init_checkpoint"
  --config_file="$CONFIG_FILE"
  --eval_dir="$eval_dir"
  --shard_kind="$shard_kind"
  --eval_batch_size="$eval_batch_size"
  --max_steps="$max_steps"
  --json-summary="$RESULTS_DIR/dllogger_inference.json"
  "${PRECISION_ARGS[@]}"
  "${extra_args[@]}"
)

logfile="$RESULTS_DIR/pyt_bert_pretraining_inference_${precision}_bs${eval_batch_size}_gpu${num_gpus}.$(date +%y%m%d%H%M%S).log"
run_logged "$logfile" "${LAUNCH[@]}" "$CODEDIR/run_pretraining_inference.py" "${args[@]}"
