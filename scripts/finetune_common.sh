# Helpers shared by run_squad.sh, run_glue.sh and run_swag.sh (sourced, not run).
# shellcheck shell=bash
# shellcheck disable=SC2034  # PRECISION_ARGS and LAUNCH are read by the scripts that source this file

# PRECISION_ARGS: the python flags for a precision name (bf16 is accepted wherever fp16 is).
set_precision_args() {
  case "$1" in
    fp16 | bf16 | tf32 | fp32) PRECISION_ARGS=(--precision "$1") ;;
    *)
      echo "Unknown precision '$1': use fp16, bf16, tf32 or fp32" >&2
      return 2
      ;;
  esac
}

# LAUNCH: plain python for one process, torchrun (standalone rendezvous on this node) for more.
set_launcher() {
  local num_gpu=$1 python_bin=${PYTHON:-python3}
  if ! [[ $num_gpu =~ ^[1-9][0-9]*$ ]]; then
    echo "num_gpu must be a positive integer, got '$num_gpu'" >&2
    return 2
  fi
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
  "$@" 2>&1 | tee "$logfile"
}
