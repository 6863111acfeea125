# Helpers shared by run_squad.sh, run_glue.sh, run_swag.sh and run_pretraining_inference.sh (sourced,
# not run); run_pretraining.sh uses the argument checks.
# shellcheck shell=bash
# shellcheck disable=SC2034  # PRECISION_ARGS and LAUNCH are read by the scripts that source this file

# arg_error MESSAGE...: bad input as the python scripts report it, one `error:` line and status 2.
arg_error() {
  echo "error: $*" >&2
  return 2
}

# check_precision NAME: auto, fp16, bf16, tf32 or fp32 (bf16 is accepted wherever fp16 is; auto is bf16 on
# a CPU that runs it natively, else fp32).
check_precision() {
  case "$1" in
    auto | fp16 | bf16 | tf32 | fp32) ;;
    *) arg_error "unknown precision '$1': use auto, fp16, bf16, tf32 or fp32" ;;
  esac
}

# check_count NAME VALUE MIN: VALUE is a whole number >= MIN (GPU and process counts; the
# pretraining wrapper takes 0 GPUs for the CPU). Anything else would reach `[ -gt ]` or torchrun.
check_count() {
  local name=$1 value=$2 min=$3
  if ! [[ $value =~ ^[0-9]+$ ]] || ((10#$value < min)); then
    arg_error "$name must be a whole number >= $min, got '$value'"
  fi
}

# check_number NAME VALUE: a decimal number such as 2.4e-5, 0.1, 3 or -1.0 (learning rates, warm-up
# proportions, epochs, max_steps). Checked by pattern: an unchecked value can reach `$(( ))` or `[[ -gt ]]`,
# where bash would evaluate it as an expression, `$(command)` included.
check_number() {
  if ! [[ $2 =~ ^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$ ]]; then
    arg_error "$1 must be a number, got '$2'"
  fi
}

# check_integer NAME VALUE: a whole number, possibly negative (seeds; -1 for "no limit").
check_integer() {
  if ! [[ $2 =~ ^[+-]?[0-9]+$ ]]; then
    arg_error "$1 must be a whole number, got '$2'"
  fi
}

# run_forwarding_signals COMMAND...: run COMMAND and return its exit code, passing TERM and USR1 on to it
# (INT as TERM: a background command of a script ignores INT). Without this, a signal to the wrapper
# ended the wrapper alone and the trainer went on writing checkpoints, unseen by whatever restarts it.
run_forwarding_signals() {
  "$@" &
  CHILD_PID=$!
  trap 'kill -TERM "$CHILD_PID" 2>/dev/null || true' TERM INT
  trap 'kill -USR1 "$CHILD_PID" 2>/dev/null || true' USR1
  local status
  while :; do
    status=0
    wait "$CHILD_PID" || status=$?
    # A trapped signal interrupts `wait` (status 128+N) while the child runs on.
    kill -0 "$CHILD_PID" 2>/dev/null || break
  done
  if ((status > 128)); then  # interrupted just as the child ended: its own status is still to be collected
    local again=0
    wait "$CHILD_PID" 2>/dev/null || again=$?
    ((again == 127)) || status=$again
  fi
  trap - TERM INT USR1
  return "$status"
}

# run_tee_forwarding_signals LOGFILE COMMAND...: run_forwarding_signals with the output also copied
# into LOGFILE; the copy (tee) ignores the signals, so the log is complete up to the command's last line.
run_tee_forwarding_signals() {
  local logfile=$1 log_fd tee_pid status=0
  shift
  exec {log_fd}> >(trap '' TERM INT USR1; exec tee "$logfile")
  tee_pid=$!
  run_forwarding_signals "$@" >&"$log_fd" 2>&1 || status=$?
  exec {log_fd}>&-
  wait "$tee_pid" 2>/dev/null || true
  return "$status"
}

# PRECISION_ARGS: the python flags for a precision name.
set_precision_args() {
  check_precision "$1" || return
  PRECISION_ARGS=(--precision "$1")
}

# LAUNCH: plain python for one process, torchrun (standalone rendezvous on this node) for more.
set_launcher() {
  local num_gpu=$1 python_bin=${PYTHON:-python3}
  check_count num_gpu "$num_gpu" 1 || return
  if [ "$num_gpu" -gt 1 ]; then
    LAUNCH=("$python_bin" -m torch.distributed.run --standalone --nproc_per_node="$num_gpu")
  else
    LAUNCH=("$python_bin")
  fi
}

# run_logged LOGFILE COMMAND...: print the command, run it, copy its output into LOGFILE.
run_logged() {
  local logfile=$1
  shift
  mkdir -p "$(dirname "$logfile")"
  printf '%q ' "$@"
  echo
  run_tee_forwarding_signals "$logfile" "$@"
}

# MODE_ARGS: --do_train/--do_eval/--do_predict flags for a mode string that may contain
# "train", "eval" and "prediction" (run_glue.sh, run_swag.sh).
set_mode_args() {
  local mode=$1 batch_size=$2 accumulation=$3
  MODE_ARGS=()
  if [[ $mode == *train* ]]; then
    MODE_ARGS+=(--do_train --train_batch_size "$batch_size" --gradient_accumulation_steps "$accumulation")
  fi
  if [[ $mode == *eval* ]]; then
    MODE_ARGS+=(--do_eval --eval_batch_size "$batch_size")
  fi
  if [[ $mode == *prediction* ]]; then
    MODE_ARGS+=(--do_predict --eval_batch_size "$batch_size")
  fi
}

# set_classifier_run mode num_gpu precision batch_size accumulation: PRECISION_ARGS, LAUNCH and
# MODE_ARGS for run_glue.sh and run_swag.sh; one process when mode is exactly "eval".
set_classifier_run() {
  local mode=$1 num_gpu=$2
  if [ "$mode" = "eval" ]; then
    num_gpu=1
  fi
  set_precision_args "$3" || return
  set_launcher "$num_gpu" || return
  set_mode_args "$mode" "$4" "$5"
}

# CLASSIFIER_ARGS: the flags run_glue.py and run_swag.py share (uncased, seq 128).
# set_classifier_args init_checkpoint data_dir vocab_file config_file out_dir lr warmup epochs max_steps seed
set_classifier_args() {
  CLASSIFIER_ARGS=(
    --init_checkpoint "$1" --data_dir "$2" --vocab_file "$3" --config_file "$4" --output_dir "$5"
    --json-summary "$5/dllogger.json" --bert_model bert-large-uncased --do_lower_case --max_seq_length 128
    --learning_rate "$6" --warmup_proportion "$7" --num_train_epochs "$8" --max_steps "$9" --seed "${10}"
  )
}
