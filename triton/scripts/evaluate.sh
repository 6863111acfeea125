#!/usr/bin/env bash
# SQuAD v1.1 dev through a Triton server, scored: export, serve, wait, run_squad_client.py, stop.
# The original's arguments; extra arguments go to triton/run_squad_client.py.
#
#   bash triton/scripts/evaluate.sh [BERT_MODEL=large] [PRECISION=fp32] \
#        [INIT_CHECKPOINT=checkpoints/bert_qa.pt] [EXPORT_FORMAT=ts-script] [run_squad_client.py flags...]
#
# BERT_MODEL only names the served model (bert_BERT_MODEL_PRECISION), as in the original: the
# model's shape comes from the bert_config.json beside the checkpoint (or $BERT_DIR/bert_config.json).
# EXPORT_FORMAT: onnx, ts-trace or ts-script (triton/README.md). The server is the Triton
# container where Docker runs, else triton/server.py on this machine (then the model is served by the
# python backend); either way it is stopped when this script ends. Prints exact_match and f1.
# Environment: VOCAB_FILE, PREDICT_FILE (default data/download/squad/v1.1/dev-v1.1.json), OUT_DIR
# (default results/triton_evaluate: predictions.json, nbest_predictions.json, results.json),
# BATCH_SIZE (8), BERT_DIR, MODEL_REPOSITORY, EXPORT_DIR, TRITON_LAUNCHER, TRITON_HTTP_PORT,
# TRITON_GRPC_PORT, TRITON_METRICS_PORT, READY_TIMEOUT_S (300), PYTHON.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
# shellcheck source=triton/scripts/common.sh
source "$CODEDIR/triton/scripts/common.sh"
SCRIPTS=$CODEDIR/triton/scripts

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  print_usage "${BASH_SOURCE[0]}"
  exit 0
fi

bert_model=${1:-large}
precision=${2:-fp32}
init_checkpoint=${3:-"$CODEDIR/checkpoints/bert_qa.pt"}
export_format=${4:-ts-script}
shift $(($# < 4 ? $# : 4))
client_args=("$@")

model_name="bert_${bert_model}_${precision}"
batch_size=${BATCH_SIZE:-8}
out_dir=${OUT_DIR:-"$CODEDIR/results/triton_evaluate"}
vocab_file=$(find_vocab "${BERT_DIR:-}")
predict_file=${PREDICT_FILE:-$(find_squad_dev)}
[[ -n "$vocab_file" ]] || die "no vocab: set VOCAB_FILE or download one (vocab/README.md)"
[[ -n "$predict_file" && -f "$predict_file" ]] ||
  die "no SQuAD dev file: set PREDICT_FILE or run data/bertPrep.py --action download --dataset squad"
export VOCAB_FILE=$vocab_file PREDICT_FILE=$predict_file

launcher=${TRITON_LAUNCHER:-}
if [[ -z "$launcher" ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then launcher=docker; else launcher=python; fi
fi
export TRITON_LAUNCHER=$launcher
backend_args=()
if [[ "$launcher" == python ]]; then backend_args=(--backend python); fi

bash "$SCRIPTS/export_model.sh" 0 tritonnet "$init_checkpoint" "$batch_size" "${BERT_DIR:-}" "$export_format" \
  "$precision" 1 "$model_name" 0 1 True "${backend_args[@]}" --no-text-model

server_id=$(bash "$SCRIPTS/launch_triton_server.sh" "${MODEL_REPOSITORY:-"$CODEDIR/results/triton_models"}" --detach)
stop_server() {
  if [[ "$launcher" == docker ]]; then
    docker stop "$server_id" >/dev/null 2>&1 || true
  else
    kill -TERM "$server_id" 2>/dev/null || true
    # server.py stops tritonserver gracefully and cleans up; wait for it so nothing outlives us.
    while kill -0 "$server_id" 2>/dev/null; do sleep 0.2; done
  fi
}
trap stop_server EXIT

bash "$SCRIPTS/wait_for_triton_server.sh" "localhost:${TRITON_HTTP_PORT:-8000}" "${READY_TIMEOUT_S:-300}"

case_args=()
if [[ "${DO_LOWER_CASE:-1}" != 0 ]]; then case_args=(--do_lower_case); fi
"$PYTHON" "$CODEDIR/triton/run_squad_client.py" -u "localhost:${TRITON_HTTP_PORT:-8000}" -i http \
  --model_name "$model_name" --vocab_file "$vocab_file" "${case_args[@]}" --output_dir "$out_dir" \
  --predict_file "$predict_file" --batch_size "$batch_size" --wait 60 "${client_args[@]}"
