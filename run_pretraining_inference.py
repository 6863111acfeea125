"""Evaluate a BERT pretraining checkpoint on HDF5 shards: masked-LM and next-sentence accuracy and loss.

    python run_pretraining_inference.py --init_checkpoint results/checkpoints/ckpt_8601.pt \
        --eval_dir <hdf5 folder> [--config_file bert_config.json] [--eval_batch_size 64] [--precision bf16]

One process, or several under torchrun / srun. Reports MLM accuracy and loss over the masked positions
(the loss is the mean cross-entropy over every masked token of the evaluated set), NSP accuracy and
loss, perplexity = exp(MLM loss) and sequences/s, as dllogger JSON lines and one summary line.

Flags and `main`; the evaluation itself (`evaluate`, the batch plan that makes several ranks give
exactly the one-process numbers, and `PeriodicEvaluator` for evaluation during pretraining) is
`evaluation.py`.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

import distributed
import input_checks
import run_log
import training
from bert_kernels import add_kernel_arguments, configure_kernels
from checkpoint_io import load_checkpoint, load_config_for_checkpoint
from data.pretraining_dataset import add_masking_arguments, masker_from_args
from evaluation import (
    EvalResult,
    batches_for_rank,
    check_fits_model,
    evaluate,
    find_eval_shards,
    iter_batches,
    plan_batches,
)
from input_checks import InputError
from modeling import BertConfig, BertForPreTraining
from precision import PRECISION_HELP, PRECISIONS, apply_tf32, resolve_precision

# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate a BERT pretraining checkpoint (MLM and NSP) on HDF5 shards.")
    p.add_argument("--init_checkpoint", required=True,
                   help="weights to evaluate: ckpt_<step>.pt, a Hugging Face folder, or a state dict file")
    p.add_argument("--config_file", default=None,
                   help="model config JSON (default: bert_config.json/config.json beside the checkpoint, "
                        "or the config stored in a ckpt_<step>.pt)")
    p.add_argument("--input_dir", "--eval_dir", dest="input_dir", required=True, help="folder of .hdf5 shards")
    p.add_argument("--shard_kind", default="test",
                   help="evaluate the files whose name contains this ('test' by default; 'training', or '' for all)")
    p.add_argument("--eval_batch_size", "--batch_size", dest="eval_batch_size", type=int, default=64,
                   help="sequences per batch and rank")
    p.add_argument("--max_steps", type=int, default=-1, help="at most this many batches per rank (-1 = no bound)")
    p.add_argument("--max_samples", type=int, default=-1,
                   help="evaluate the first N sequences of the sorted shards (-1 = all)")
    p.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    p.add_argument("--fp16", "--amp", dest="fp16", action="store_true", help="same as --precision fp16")
    p.add_argument("--json-summary", dest="json_summary", default="results/dllogger_inference.json",
                   help="dllogger JSON output")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--disable_progress_bar", action="store_true", help="no tqdm progress bar")
    p.add_argument("--seed", type=int, default=42, help="seed of --dynamic_masking (a fixed-seed evaluation)")
    add_masking_arguments(p)
    add_kernel_arguments(p)
    compat = p.add_argument_group(training.COMPATIBILITY_GROUP)
    compat.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", -1)),
                        help="not used: ranks come from the torchrun/SLURM environment")
    args = p.parse_args(argv)
    for name in ("max_steps", "max_samples"):
        value = getattr(args, name)
        if value == 0 or value < -1:
            raise InputError(f"--{name} must be positive or -1 (no bound), got {value}")
    if args.eval_batch_size < 1:
        raise InputError(f"--eval_batch_size must be positive, got {args.eval_batch_size}")
    return args


def load_model(checkpoint: str, config: BertConfig, device: torch.device) -> BertForPreTraining:
    model = BertForPreTraining(config)
    load_checkpoint(model, checkpoint, strict=True)  # both heads must come from the checkpoint
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> EvalResult:
    e2e_start = time.time()
    args = parse_args(argv)
    configure_kernels(args)
    if not Path(args.init_checkpoint).exists():
        raise InputError(f"--init_checkpoint: not found: {args.init_checkpoint}")
    env = distributed.init_distributed(args.device)
    try:
        precision = resolve_precision(args.precision, args.fp16, env.device)
        apply_tf32(precision)
        config = load_config_for_checkpoint(args.init_checkpoint, args.config_file, allow_stored=True)
        shards = find_eval_shards(args.input_dir, args.shard_kind)
        check_fits_model(shards, config)  # before loading weights: a wrong shard is the clearer message
        masker = masker_from_args(args, config.vocab_size, min(s.max_pred for s in shards))
        model = load_model(args.init_checkpoint, config, env.device)
        plan = plan_batches(shards, args.eval_batch_size, args.max_samples)
        mine = batches_for_rank(plan, env.rank, env.world_size, args.max_steps)

        logger = run_log.Logger(args.json_summary, enabled=env.is_main)
        logger.log("PARAMETER", {"Config": [str(args)], "precision": precision, "world_size": env.world_size,
                                 "shards": len(shards)})
        for key, unit in (("e2e_inference_time", "s"), ("inference_sequences_per_second", "sequences/s")):
            logger.metadata(key, {"unit": unit})
        progress = training.progress_bar(enabled=env.is_main and not args.disable_progress_bar, desc="Evaluating",
                                         total=len(mine), unit="batch")
        result = evaluate(model, iter_batches(shards, mine, masker), len(plan), env, precision, progress)
        if progress is not None:
            progress.close()
        logger.log((), {**result.metrics(), "e2e_inference_time": time.time() - e2e_start,
                        "inference_sequences_per_second": result.sequences_per_second})
        logger.close()
        if env.is_main:
            print(result.summary_line(), flush=True)
        return result
    finally:
        distributed.cleanup_distributed()


if __name__ == "__main__":
    input_checks.run_main(main)
