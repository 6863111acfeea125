#!/usr/bin/env bash
# Presets for scripts/run_pretraining.sh. Each function echoes the 25 positional arguments:
#   bash scripts/run_pretraining.sh $(source scripts/configs/pretrain_config.sh && dgxa100_8gpu_bf16)
# The DGX presets are the original's (global batch 65,536 in phase 1 and 32,768 in phase 2);
# cpu_tiny pretrains a 2-layer model on the demo shards in a few minutes on 2 CPU cores.

# CODEDIR defaults to the checkout holding this file (/workspace/bert inside the container), and the data
# to bertPrep.py's default working directory under it, as in squad_config.sh and glue_config.sh.
CODEDIR=${CODEDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BERT_PREP_WORKING_DIR=${BERT_PREP_WORKING_DIR:-$CODEDIR/data}
DATA_P1=${DATA_P1:-$BERT_PREP_WORKING_DIR/hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5/wikicorpus_en/}
DATA_P2=${DATA_P2:-$BERT_PREP_WORKING_DIR/hdf5_lower_case_1_seq_len_512_max_pred_80_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5/wikicorpus_en/}

# _emit batch accum precision gpus allreduce_fp16 batch2 accum2 [steps1 steps2 save lr1 lr2 warm1 warm2 config]
_emit() {
  local batch=$1 accum=$2 precision=$3 gpus=$4 ar_fp16=$5 batch2=$6 accum2=$7
  local steps1=${8:-7038} steps2=${9:-1563} save=${10:-200} lr1=${11:-6e-3} lr2=${12:-4e-3}
  local warm1=${13:-0.2843} warm2=${14:-0.128} config=${15:-$CODEDIR/bert_config.json}
  echo "$batch $lr1 $precision $gpus $warm1 $steps1 $save false true true $accum 42 bert_lamb_pretraining" \
       "true $ar_fp16 $batch2 $lr2 $warm2 $steps2 $accum2 $DATA_P1 $DATA_P2 $CODEDIR None $config"
}

dgxa100_8gpu_fp16() { _emit 8192 128 fp16 8 true 4096 256; }
dgxa100_8gpu_bf16() { _emit 8192 128 bf16 8 false 4096 256; }
dgxa100_8gpu_tf32() { _emit 8192 128 tf32 8 false 4096 512; }
dgxh100_8gpu_bf16() { _emit 8192 64 bf16 8 false 4096 128; }
dgx2_16gpu_fp16() { _emit 4096 64 fp16 16 true 2048 128; }
dgx2_16gpu_fp32() { _emit 4096 128 fp32 16 false 2048 256; }
dgx1_8gpu_fp16() { _emit 8192 512 fp16 8 true 4096 512; }
dgx1_8gpu_fp32() { _emit 8192 1024 fp32 8 false 4096 1024; }

# CPU presets: no GPUs (num_gpus 0), precision auto (bf16 where the CPU runs it natively, else fp32;
# CPU_PRECISION=fp32 or bf16 pins it).
# Phase 1: 150 steps of 32 sequences at seq 128; phase 2: 30 steps of 8 at seq 512.
cpu_tiny() {
  _emit 32 1 "${CPU_PRECISION:-auto}" 0 false 8 1 150 30 50 2e-2 1e-2 0.1 0.1 "${TINY_CONFIG:-$CODEDIR/bert_configs/tiny.json}"
}
