#!/usr/bin/env bash
# Latency and throughput of a served tensor model with the original's arguments, over triton/perf.py
# (which replaces perf_client; it needs no client container).
#
#   bash triton/scripts/run_perf_client.sh [MODEL_NAME=bert] [MODEL_VERSION=1] [PRECISION=fp32] \
#        [BATCH_SIZE=1] [MAX_LATENCY_MS=500] [MAX_CLIENT_THREADS=10] [MAX_CONCURRENCY=50] \
#        [SERVER_HOSTNAME=localhost] [BRIDGE=host] [RESULTS_ID] [PROFILING_DATA=random] [GPUS=0] \
#        [perf.py flags...]
#
# Like perf_client -d: concurrency rises 1, 2, 4, ... up to MAX_CONCURRENCY (at most
# MAX_CLIENT_THREADS client threads) and stops once the average latency exceeds MAX_LATENCY_MS.
# Requests go over gRPC to SERVER_HOSTNAME:8001 ($TRITON_GRPC_PORT), as in the original (a host with a
# port is refused, as there). PROFILING_DATA: "random" (random tokens, sequence length 384) or a
# SQuAD json (real windows; needs $VOCAB_FILE). Results: $PERF_RESULTS_DIR (default
# results/perf_client)/MODEL_NAME/results[_RESULTS_ID]_<timestamp>/perf.csv (+ perf.json, perf.png). PRECISION only names the run,
# as in the original; BRIDGE and GPUS are accepted and unused (no containers). PYTHON: interpreter.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
# shellcheck source=triton/scripts/common.sh
source "$CODEDIR/triton/scripts/common.sh"


if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  print_usage "${BASH_SOURCE[0]}"
  exit 0
fi

model_name=${1:-bert}
model_version=${2:-1}
precision=${3:-fp32}
batch_size=${4:-1}
max_latency=${5:-500}
max_client_threads=${6:-10}
max_concurrency=${7:-50}
server_hostname=${8:-localhost}
# shellcheck disable=SC2034  # the original's docker network and GPUs: accepted, nothing to attach here
bridge=${9:-host}
results_id=${10:-}
profiling_data=${11:-random}
# shellcheck disable=SC2034
gpus=${12:-0}
shift $(($# < 12 ? $# : 12))

for pair in "BATCH_SIZE:$batch_size" "MAX_CLIENT_THREADS:$max_client_threads" "MAX_CONCURRENCY:$max_concurrency"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "${pair%%:*} must be a positive integer, got '${pair#*:}'"
done
[[ "$max_latency" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "MAX_LATENCY_MS must be a number, got '$max_latency'"
if [[ "$server_hostname" == *:* ]]; then
  die "give SERVER_HOSTNAME without a port (gRPC is on port \${TRITON_GRPC_PORT:-8001}), got '$server_hostname'"
fi

limit=$((max_concurrency < max_client_threads ? max_concurrency : max_client_threads))
levels=()
for ((c = 1; c < limit; c *= 2)); do levels+=("$c"); done
levels+=("$limit")

data_args=()
case "$profiling_data" in
  random) ;;
  *.json)
    [[ -f "$profiling_data" ]] || die "PROFILING_DATA $profiling_data not found"
    [[ -n "${VOCAB_FILE:-}" ]] || die "PROFILING_DATA as a SQuAD file needs VOCAB_FILE"
    data_args=(--predict_file "$profiling_data" --vocab_file "$VOCAB_FILE")
    if [[ "${DO_LOWER_CASE:-1}" != 0 ]]; then data_args+=(--do_lower_case); fi
    ;;
  *) die "PROFILING_DATA must be 'random' or a SQuAD .json file, got '$profiling_data'" ;;
esac

out_dir="${PERF_RESULTS_DIR:-"$CODEDIR/results/perf_client"}/$model_name/results${results_id:+_$results_id}_$(date +%y%m%d_%H%M%S)"
echo "run_perf_client.sh: $model_name v$model_version ($precision), batch $batch_size," \
  "concurrency ${levels[*]} (max latency $max_latency ms) -> $out_dir"
exec "$PYTHON" "$CODEDIR/triton/perf.py" -i grpc -u "$server_hostname:${TRITON_GRPC_PORT:-8001}" \
  -m "$model_name" --model_version "$model_version" --batch-sizes "$batch_size" --concurrency "${levels[@]}" \
  --max-latency "$max_latency" --output-dir "$out_dir" "${data_args[@]}" "$@"
