#!/usr/bin/env bash
# Presets for scripts/run_glue.sh. Each function prints positional arguments 1-14:
#
#   bash scripts/run_glue.sh $(source scripts/configs/glue_config.sh && mrpc_dgxa100_8gpu_fp16)
#
# Functions: {mrpc,sst-2}_dgxa100_{1,2,4,8}gpu_{fp16,tf32}, {mrpc,sst-2}_dgx2_{1,2,4,8,16}gpu_{fp16,fp32}
# (the original's), and {mrpc,sst-2}_cpu_{fp32,bf16} and mrpc_cpu_tiny for one CPU process. The
# per-process batch is the global batch / num_gpu; gradient accumulation doubles until the
# micro-batch fits the preset's capacity. Override paths by exporting init_checkpoint, vocab_file,
# config_file, glue_dir or results_dir first.
# shellcheck disable=SC2034  # variables are read by the sourcing shell

_GLUE_CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
_GLUE_PREP_DIR=${BERT_PREP_WORKING_DIR:-$_GLUE_CODEDIR/data}
init_checkpoint=${init_checkpoint:-"$_GLUE_CODEDIR/checkpoints/bert_uncased.pt"}
vocab_file=${vocab_file:-"$_GLUE_PREP_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"}
config_file=${config_file:-"$_GLUE_CODEDIR/bert_config.json"}
glue_dir=${glue_dir:-"$_GLUE_PREP_DIR/download/glue"}
results_dir=${results_dir:-"$_GLUE_CODEDIR/results"}
max_steps=-1.0

batch_size_and_gradient_accumulation_steps() {
  batch_size=$((global_batch_size / num_gpu))
  gradient_accumulation_steps=1
  while [ $((batch_size / gradient_accumulation_steps)) -gt "$batch_size_capacity" ]; do
    gradient_accumulation_steps=$((gradient_accumulation_steps * 2))
  done
}

print_arguments_in_order() {
  echo "$init_checkpoint" "$data_dir" "$vocab_file" "$config_file" "$out_dir" "$task_name" "$num_gpu" \
    "$batch_size" "$gradient_accumulation_steps" "$learning_rate" "$warmup_proportion" "$epochs" \
    "$max_steps" "$precision"
}

# task_settings TASK SYSTEM PRECISION: global batch and learning rate of the original's recipes.
task_settings() {
  task_name=$1
  warmup_proportion=0.1
  epochs=3
  case "$1" in
    mrpc)
      data_dir="$glue_dir/MRPC/"
      out_dir="$results_dir/MRPC"
      global_batch_size=128
      learning_rate=2.4e-5
      ;;
    sst-2)
      data_dir="$glue_dir/SST-2/"
      out_dir="$results_dir/SST-2"
      global_batch_size=1024
      learning_rate=3e-5
      if [ "$2" = dgxa100 ] && [ "$3" = tf32 ]; then
        global_batch_size=512
        learning_rate=2e-5
      fi
      ;;
  esac
  if [ "$2" = cpu ]; then
    global_batch_size=32
    learning_rate=2e-5
  fi
}

# preset TASK SYSTEM NUM_GPU PRECISION: print the arguments of one configuration.
preset() {
  task_settings "$1" "$2" "$4"
  num_gpu=$3
  precision=$4
  case "$2:$4" in
    *:fp16) batch_size_capacity=128 ;;
    cpu:*) batch_size_capacity=32 ;;
    *) batch_size_capacity=64 ;;
  esac
  batch_size_and_gradient_accumulation_steps
  print_arguments_in_order
}

mrpc_dgxa100_1gpu_fp16() { preset mrpc dgxa100 1 fp16; }
mrpc_dgxa100_2gpu_fp16() { preset mrpc dgxa100 2 fp16; }
mrpc_dgxa100_4gpu_fp16() { preset mrpc dgxa100 4 fp16; }
mrpc_dgxa100_8gpu_fp16() { preset mrpc dgxa100 8 fp16; }
mrpc_dgxa100_1gpu_tf32() { preset mrpc dgxa100 1 tf32; }
mrpc_dgxa100_2gpu_tf32() { preset mrpc dgxa100 2 tf32; }
mrpc_dgxa100_4gpu_tf32() { preset mrpc dgxa100 4 tf32; }
mrpc_dgxa100_8gpu_tf32() { preset mrpc dgxa100 8 tf32; }
mrpc_dgx2_1gpu_fp16() { preset mrpc dgx2 1 fp16; }
mrpc_dgx2_2gpu_fp16() { preset mrpc dgx2 2 fp16; }
mrpc_dgx2_4gpu_fp16() { preset mrpc dgx2 4 fp16; }
mrpc_dgx2_8gpu_fp16() { preset mrpc dgx2 8 fp16; }
mrpc_dgx2_16gpu_fp16() { preset mrpc dgx2 16 fp16; }
mrpc_dgx2_1gpu_fp32() { preset mrpc dgx2 1 fp32; }
mrpc_dgx2_2gpu_fp32() { preset mrpc dgx2 2 fp32; }
mrpc_dgx2_4gpu_fp32() { preset mrpc dgx2 4 fp32; }
mrpc_dgx2_8gpu_fp32() { preset mrpc dgx2 8 fp32; }
mrpc_dgx2_16gpu_fp32() { preset mrpc dgx2 16 fp32; }
sst-2_dgxa100_1gpu_fp16() { preset sst-2 dgxa100 1 fp16; }
sst-2_dgxa100_2gpu_fp16() { preset sst-2 dgxa100 2 fp16; }
sst-2_dgxa100_4gpu_fp16() { preset sst-2 dgxa100 4 fp16; }
sst-2_dgxa100_8gpu_fp16() { preset sst-2 dgxa100 8 fp16; }
sst-2_dgxa100_1gpu_tf32() { preset sst-2 dgxa100 1 tf32; }
sst-2_dgxa100_2gpu_tf32() { preset sst-2 dgxa100 2 tf32; }
sst-2_dgxa100_4gpu_tf32() { preset sst-2 dgxa100 4 tf32; }
sst-2_dgxa100_8gpu_tf32() { preset sst-2 dgxa100 8 tf32; }
sst-2_dgx2_1gpu_fp16() { preset sst-2 dgx2 1 fp16; }
sst-2_dgx2_2gpu_fp16() { preset sst-2 dgx2 2 fp16; }
sst-2_dgx2_4gpu_fp16() { preset sst-2 dgx2 4 fp16; }
sst-2_dgx2_8gpu_fp16() { preset sst-2 dgx2 8 fp16; }
sst-2_dgx2_16gpu_fp16() { preset sst-2 dgx2 16 fp16; }
sst-2_dgx2_1gpu_fp32() { preset sst-2 dgx2 1 fp32; }
sst-2_dgx2_2gpu_fp32() { preset sst-2 dgx2 2 fp32; }
sst-2_dgx2_4gpu_fp32() { preset sst-2 dgx2 4 fp32; }
sst-2_dgx2_8gpu_fp32() { preset sst-2 dgx2 8 fp32; }
sst-2_dgx2_16gpu_fp32() { preset sst-2 dgx2 16 fp32; }

mrpc_cpu_fp32() { preset mrpc cpu 1 fp32; }
mrpc_cpu_bf16() { preset mrpc cpu 1 bf16; }
sst-2_cpu_fp32() { preset sst-2 cpu 1 fp32; }
sst-2_cpu_bf16() { preset sst-2 cpu 1 bf16; }

# A smoke test on a CPU with the 2-layer bert_configs/tiny.json model (init_checkpoint must have its
# shape), 1 epoch capped at 100 updates.
mrpc_cpu_tiny() {
  preset mrpc cpu 1 fp32 >/dev/null
  config_file="$_GLUE_CODEDIR/bert_configs/tiny.json"
  learning_rate=1e-4
  epochs=1
  max_steps=100
  print_arguments_in_order
}
