#!/usr/bin/env bash
# Export a fine-tuned QA checkpoint and lay out a Triton model repository for it (triton/README.md).
#
#   bash triton/scripts/export_model.sh CHECKPOINT VOCAB_FILE [BACKEND=python] [PRECISION=fp32] \
#        [MODEL_REPOSITORY=results/triton_models] [MODEL_NAME=bert] [VERSION=1] [DYN_DELAY_MS=1] \
#        [ENGINES=1] [DEVICE=auto] [PREDICT_FILE]
#
# BACKEND: python (runs here, with triton/server.py), onnxruntime or pytorch (the Triton container).
# PRECISION: fp32, or fp16 for GPU serving. CHECKPOINT is run_squad.py's output folder (or its
# pytorch_model.bin with bert_config.json beside it). With PREDICT_FILE the export is checked on real
# SQuAD windows, otherwise on random tokens. Existing models of the same name are replaced. The exported
# files go to $EXPORT_DIR (default results/triton_export/MODEL_NAME); DO_LOWER_CASE=0 for cased vocabs.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}

if (($# < 2)); then
  sed -n '2,12p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
checkpoint=$1
vocab_file=$2
backend=${3:-python}
precision=${4:-fp32}
model_repository=${5:-"$CODEDIR/results/triton_models"}
model_name=${6:-bert}
version=${7:-1}
dyn_delay=${8:-1}
engines=${9:-1}
device=${10:-auto}
predict_file=${11:-}

export_dir=${EXPORT_DIR:-"$CODEDIR/results/triton_export/$model_name"}
case_args=()
if [[ "${DO_LOWER_CASE:-1}" != 0 ]]; then
  case_args=(--do_lower_case)
fi
export_args=(--checkpoint "$checkpoint" --output_dir "$export_dir" --vocab_file "$vocab_file" "${case_args[@]}")
case "$backend" in
  pytorch) export_args+=(--format ts-trace) ;;
  onnxruntime|python) export_args+=(--format onnx) ;;
  *) echo "BACKEND must be python, onnxruntime or pytorch, not '$backend'" >&2; exit 2 ;;
esac
case "$precision" in
  fp16) export_args+=(--fp16) ;;
  fp32) ;;
  *) echo "PRECISION must be fp32 or fp16, not '$precision'" >&2; exit 2 ;;
esac
if [[ -n "$predict_file" ]]; then
  export_args+=(--predict_file "$predict_file")
fi

"$PYTHON" "$CODEDIR/triton/export.py" "${export_args[@]}"
"$PYTHON" "$CODEDIR/triton/model_repository.py" --export-dir "$export_dir" --model-repository "$model_repository" \
  --backend "$backend" --model-name "$model_name" --model-version "$version" --dyn-batching-delay "$dyn_delay" \
  --engine-count "$engines" --device "$device" --vocab_file "$vocab_file" "${case_args[@]}" --overwrite
