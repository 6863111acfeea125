#!/usr/bin/env bash
# BERT pretraining, phase 1 (seq 128) then phase 2 (seq 512), with the original's positional arguments:
#   bash scripts/run_pretraining.sh $(source scripts/configs/pretrain_config.sh && dgxa100_8gpu_bf16)
# 1 train_batch_size  2 learning_rate  3 precision (auto|fp16|bf16|tf32|fp32)  4 num_gpus (0 = CPU)
# 5 warmup_proportion  6 train_steps  7 save_checkpoint_steps  8 resume_training (true|false)
# 9 create_logfile  10 accumulate_gradients  11 gradient_accumulation_steps  12 seed  13 job_name
# 14 allreduce_post_accumulation  15 allreduce_post_accumulation_fp16  16 train_batch_size_phase2
# 17 learning_rate_phase2  18 warmup_proportion_phase2  19 train_steps_phase2
# 20 gradient_accumulation_steps_phase2  21 DATA_DIR_PHASE1  22 DATA_DIR_PHASE2  23 CODEDIR
# 24 init_checkpoint  25 BERT_CONFIG (added; default $CODEDIR/bert_config.json)
# Environment: RESULTS_DIR (default $CODEDIR/results), NPROC_PER_NODE launcher override, EXTRA_ARGS.
set -euo pipefail

train_batch_size=${1:-8192}
learning_rate=${2:-"6e-3"}
precision=${3:-"fp16"}
num_gpus=${4:-8}
warmup_proportion=${5:-"0.2843"}
train_steps=${6:-7038}
save_checkpoint_steps=${7:-200}
resume_training=${8:-"false"}
create_logfile=${9:-"true"}
accumulate_gradients=${10:-"true"}
gradient_accumulation_steps=${11:-128}
seed=${12:-12439}
job_name=${13:-"bert_lamb_pretraining"}
allreduce_post_accumulation=${14:-"true"}
allreduce_post_accumulation_fp16=${15:-"true"}
train_batch_size_phase2=${16:-4096}
learning_rate_phase2=${17:-"4e-3"}
warmup_proportion_phase2=${18:-"0.128"}
train_steps_phase2=${19:-1563}
gradient_accumulation_steps_phase2=${20:-512}
BERT_PREP_WORKING_DIR=${BERT_PREP_WORKING_DIR:-data}
DATA_DIR_PHASE1=${21:-"$BERT_PREP_WORKING_DIR/hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5/wikicorpus_en/"}
DATA_DIR_PHASE2=${22:-"$BERT_PREP_WORKING_DIR/hdf5_lower_case_1_seq_len_512_max_pred_80_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5/wikicorpus_en/"}
CODEDIR=${23:-"/workspace/bert"}
init_checkpoint=${24:-"None"}
BERT_CONFIG=${25:-"$CODEDIR/bert_config.json"}
RESULTS_DIR=${RESULTS_DIR:-"$CODEDIR/results"}
CHECKPOINTS_DIR=$RESULTS_DIR/checkpoints
PYTHON=${PYTHON:-python3}

# The argument checks the fine-tuning wrappers use, before anything is created.
# shellcheck source=scripts/finetune_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/finetune_common.sh"
check_precision "$precision"
# Every numeric argument by pattern before any arithmetic (run_phase's $(( )) would run `$(command)`).
check_count "train_batch_size (argument 1)" "$train_batch_size" 1
check_number "learning_rate (argument 2)" "$learning_rate"
check_count "num_gpus (argument 4)" "$num_gpus" 0
check_number "warmup_proportion (argument 5)" "$warmup_proportion"
check_count "train_steps (argument 6)" "$train_steps" 1
check_count "save_checkpoint_steps (argument 7)" "$save_checkpoint_steps" 0
check_count "gradient_accumulation_steps (argument 11)" "$gradient_accumulation_steps" 1
check_integer "seed (argument 12)" "$seed"
check_count "train_batch_size_phase2 (argument 16)" "$train_batch_size_phase2" 1
check_number "learning_rate_phase2 (argument 17)" "$learning_rate_phase2"
check_number "warmup_proportion_phase2 (argument 18)" "$warmup_proportion_phase2"
check_count "train_steps_phase2 (argument 19)" "$train_steps_phase2" 1
check_count "gradient_accumulation_steps_phase2 (argument 20)" "$gradient_accumulation_steps_phase2" 1
check_count NPROC_PER_NODE "${NPROC_PER_NODE:-$num_gpus}" 0

mkdir -p "$CHECKPOINTS_DIR"
[ -d "$DATA_DIR_PHASE1" ] || echo "Warning: phase-1 data folder $DATA_DIR_PHASE1 does not exist" >&2
[ -f "$BERT_CONFIG" ] || { echo "Error: BERT config $BERT_CONFIG not found" >&2; exit 1; }

precision_flags() {
  case "$1" in
    auto | fp16 | bf16 | tf32 | fp32) echo "--precision=$1" ;;
    *) echo "Unknown precision $1: choose auto, fp16, bf16, tf32 or fp32" >&2; return 1 ;;
  esac
}

# One launcher for both phases: torchrun for several processes, plain python for one.
launcher=("$PYTHON")
nproc=${NPROC_PER_NODE:-$num_gpus}
if [ "$nproc" -gt 1 ]; then
  launcher=("$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$nproc")
fi
device_flag="--device=auto"
[ "$num_gpus" -eq 0 ] && device_flag="--device=cpu"

read -r -a extra_args <<< "${EXTRA_ARGS:-}"

run_phase() {  # run_phase <phase> <log tag> args...
  local phase=$1 tag=$2; shift 2
  local gbs=$(( ${batch_for_log:?} * (nproc > 0 ? nproc : 1) ))
  local stamp logfile
  stamp=$(date +%y%m%d%H%M%S)
  logfile="$RESULTS_DIR/$job_name.pyt_bert_pretraining_phase${phase}_${precision}_gbs${gbs}.${stamp}.log"
  echo "phase $phase: ${launcher[*]} $CODEDIR/run_pretraining.py $*" >&2
  local status=0
  # TERM/USR1 to this script reach the trainer, which saves and exits 75 (see run_forwarding_signals).
  if [ "$create_logfile" = "true" ]; then
    run_tee_forwarding_signals "$logfile" "${launcher[@]}" "$CODEDIR/run_pretraining.py" "$@" "${extra_args[@]}" \
      || status=$?
  else
    run_forwarding_signals "${launcher[@]}" "$CODEDIR/run_pretraining.py" "$@" "${extra_args[@]}" || status=$?
  fi
  if [ "$status" -eq 75 ]; then  # run_pretraining.EXIT_STOPPED
    echo "phase $phase stopped by a signal before its last step; its checkpoint is in $CHECKPOINTS_DIR:" \
         "rerun with resume_training=true to continue (exit 75)" >&2
    exit 75
  elif [ "$status" -ne 0 ]; then
    echo "phase $phase failed (exit $status)" >&2
    exit "$status"
  fi
  echo "finished phase $phase ($tag)" >&2
}

common_flags() {  # common_flags <allreduce> <allreduce_fp16>
  local flags=("--config_file=$BERT_CONFIG" "--output_dir=$CHECKPOINTS_DIR" "--bert_model=bert-large-uncased"
               "--do_train" "--seed=$seed" "--num_steps_per_checkpoint=$save_checkpoint_steps"
               "--json-summary" "$RESULTS_DIR/dllogger.json" "$(precision_flags "$precision")" "$device_flag")
  [ "$1" = "true" ] && flags+=("--allreduce_post_accumulation")
  [ "$1" = "true" ] && [ "$2" = "true" ] && flags+=("--allreduce_post_accumulation_fp16")
  printf '%s\n' "${flags[@]}"
}

mapfile -t base_flags < <(common_flags "$allreduce_post_accumulation" "$allreduce_post_accumulation_fp16")

# ---------------- phase 1 ----------------
phase1=("--input_dir=$DATA_DIR_PHASE1" "--train_batch_size=$train_batch_size" "--learning_rate=$learning_rate"
        "--warmup_proportion=$warmup_proportion" "--max_steps=$train_steps"
        "--max_seq_length=128" "--max_predictions_per_seq=20" "${base_flags[@]}")
[ "$accumulate_gradients" = "true" ] && phase1+=("--gradient_accumulation_steps=$gradient_accumulation_steps")
[ "$resume_training" = "true" ] && phase1+=("--resume_from_checkpoint")
[ "$init_checkpoint" != "None" ] && phase1+=("--init_checkpoint=$init_checkpoint")
batch_for_log=$train_batch_size
run_phase 1 "seq 128" "${phase1[@]}"
# Phase 2 starts only from a finished phase 1 (run_pretraining.py refuses an unfinished one as well).
if [ ! -f "$CHECKPOINTS_DIR/ckpt_$train_steps.pt" ]; then
  echo "phase 1 ended without $CHECKPOINTS_DIR/ckpt_$train_steps.pt (its last step); not starting phase 2" >&2
  exit 1
fi

# ---------------- phase 2 ----------------
phase2=("--input_dir=$DATA_DIR_PHASE2" "--train_batch_size=$train_batch_size_phase2"
        "--learning_rate=$learning_rate_phase2" "--warmup_proportion=$warmup_proportion_phase2"
        "--max_steps=$train_steps_phase2" "--max_seq_length=512" "--max_predictions_per_seq=80"
        "--phase2" "--resume_from_checkpoint" "--phase1_end_step=$train_steps" "${base_flags[@]}"
        "--json-summary" "$RESULTS_DIR/dllogger_phase2.json")
[ "$accumulate_gradients" = "true" ] && phase2+=("--gradient_accumulation_steps=$gradient_accumulation_steps_phase2")
batch_for_log=$train_batch_size_phase2
run_phase 2 "seq 512" "${phase2[@]}"
