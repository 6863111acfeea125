#!/usr/bin/env bash
# Export a fine-tuned QA checkpoint and lay out a Triton model repository for it (triton/README.md).
# The original's positional arguments, in its order; extra arguments go to triton/model_repository.py.
#
#   bash triton/scripts/export_model.sh [GPUS=0] [BRIDGE=host] [CHECKPOINT=checkpoints/bert_qa.pt] \
#        [BATCH_SIZE=8] [BERT_DIR] [EXPORT_FORMAT=ts-script] [PRECISION] [VERSION=1] \
#        [MODEL_NAME=bertQA-EXPORT_FORMAT] [DYN_BATCHING_DELAY_MS=0] [ENGINE_COUNT=1] [OVERWRITE=False] \
#        [model_repository.py flags...]
#
# GPUS: CUDA_VISIBLE_DEVICES for the export (the original's container GPUs). BRIDGE: the original's
# docker network; accepted and unused (nothing runs in a container here). CHECKPOINT: run_squad.py's
# output folder or its pytorch_model.bin. BATCH_SIZE: the model's max_batch_size and the export's
# sample batch. BERT_DIR: folder with bert_config.json (default: the one beside the checkpoint) and,
# if present, vocab.txt. EXPORT_FORMAT: onnx, ts-trace or ts-script (traced or compiled TorchScript;
# triton/README.md says how they differ).
# PRECISION: fp16 or fp32 (default fp16 where nvidia-smi lists a GPU, else fp32).
# DYN_BATCHING_DELAY_MS: <= 0 is static batching, as in the original. OVERWRITE: True replaces a
# model of the same name, False refuses.
#
# The backend follows the format as in the original (onnx -> onnxruntime, ts-* -> pytorch, for the
# Triton container); pass `--backend python` (extra argument) for the server that runs without a
# container (triton/server.py). With a vocab, the text model MODEL_NAME_qa is written too. Environment: VOCAB_FILE (default BERT_DIR/vocab.txt, else the
# downloaded Google vocab, vocab/README.md) for the text model and real sample windows with
# PREDICT_FILE (default data/download/squad/v1.1/dev-v1.1.json when present); MODEL_REPOSITORY (default
# results/triton_models, the original's --save-dir); EXPORT_DIR (default
# results/triton_export/MODEL_NAME); DO_LOWER_CASE=0 for cased vocabs; PYTHON.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
# shellcheck source=triton/scripts/common.sh
source "$CODEDIR/triton/scripts/common.sh"


if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  print_usage "${BASH_SOURCE[0]}"
  exit 0
fi

has_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

gpus=${1:-0}
# shellcheck disable=SC2034  # the original's docker network: accepted, nothing to attach here
bridge=${2:-host}
checkpoint=${3:-"$CODEDIR/checkpoints/bert_qa.pt"}
batch_size=${4:-8}
bert_dir=${5:-}
export_format=${6:-ts-script}
default_precision=fp32
if has_gpu; then default_precision=fp16; fi
precision=${7:-$default_precision}
version=${8:-1}
model_name=${9:-"bertQA-$export_format"}
dyn_delay=${10:-0}
engines=${11:-1}
overwrite=${12:-False}
shift $(($# < 12 ? $# : 12))
extra_args=("$@")

[[ "$batch_size" =~ ^[1-9][0-9]*$ ]] || die "BATCH_SIZE (4th argument) must be a positive integer, got '$batch_size'"
[[ "$version" =~ ^[1-9][0-9]*$ ]] || die "VERSION (8th argument) must be a positive integer, got '$version'"
[[ "$engines" =~ ^[1-9][0-9]*$ ]] || die "ENGINE_COUNT (11th argument) must be a positive integer, got '$engines'"
[[ "$dyn_delay" =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || die "DYN_BATCHING_DELAY_MS (10th argument) must be a number, got '$dyn_delay'"
case "$export_format" in
  onnx) backend=onnxruntime ;;
  ts-trace | ts-script) backend=pytorch ;;
  *) die "EXPORT_FORMAT (6th argument) must be onnx, ts-trace or ts-script, not '$export_format'" ;;
esac
case "$precision" in
  fp16 | fp32) ;;
  *) die "PRECISION (7th argument) must be fp16 or fp32, not '$precision'" ;;
esac
case "${overwrite,,}" in
  true | 1 | yes) overwrite_args=(--overwrite) ;;
  false | 0 | no) overwrite_args=() ;;
  *) die "OVERWRITE (12th argument) must be True or False, not '$overwrite'" ;;
esac

config_args=()
if [[ -n "$bert_dir" ]]; then
  [[ -f "$bert_dir/bert_config.json" ]] || die "BERT_DIR (5th argument): $bert_dir/bert_config.json not found"
  config_args=(--config_file "$bert_dir/bert_config.json")
fi
vocab_file=$(find_vocab "$bert_dir")
predict_file=${PREDICT_FILE-$(find_squad_dev)}

case_args=()
if [[ "${DO_LOWER_CASE:-1}" != 0 ]]; then case_args=(--do_lower_case); fi
export_dir=${EXPORT_DIR:-"$CODEDIR/results/triton_export/$model_name"}
model_repository=${MODEL_REPOSITORY:-"$CODEDIR/results/triton_models"}

export_args=(--checkpoint "$checkpoint" --output_dir "$export_dir" --format "$export_format"
  --batch_size "$batch_size" "${config_args[@]}")
if [[ "$precision" == fp16 ]]; then export_args+=(--fp16); fi
vocab_args=()
if [[ -n "$vocab_file" ]]; then
  vocab_args=(--vocab_file "$vocab_file" "${case_args[@]}" --text-model-name "${model_name}_qa")
  export_args+=(--vocab_file "$vocab_file" "${case_args[@]}")
  if [[ -n "$predict_file" ]]; then export_args+=(--predict_file "$predict_file"); fi
else
  echo "export_model.sh: no vocab (VOCAB_FILE, BERT_DIR/vocab.txt or the downloaded Google vocab):" \
    "checking the export on random tokens and leaving out the text model" >&2
  vocab_args=(--no-text-model)
fi

gpu_env=()
if [[ "$gpus" != all ]]; then gpu_env=(env "CUDA_VISIBLE_DEVICES=$gpus"); fi
"${gpu_env[@]}" "$PYTHON" "$CODEDIR/triton/export.py" "${export_args[@]}"
"$PYTHON" "$CODEDIR/triton/model_repository.py" --export-dir "$export_dir" --save-dir "$model_repository" \
  --backend "$backend" --triton-model-name "$model_name" --triton-model-version "$version" \
  --triton-max-batch-size "$batch_size" --triton-dyn-batching-delay "$dyn_delay" \
  --triton-engine-count "$engines" "${vocab_args[@]}" "${overwrite_args[@]}" "${extra_args[@]}"
