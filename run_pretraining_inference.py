"""Evaluate a BERT pretraining checkpoint on HDF5 shards: masked-LM and next-sentence accuracy and loss.

    python run_pretraining_inference.py --init_checkpoint results/checkpoints/ckpt_8601.pt \
        --eval_dir <hdf5 folder> [--config_file bert_config.json] [--eval_batch_size 64] [--precision bf16]

One process, or several under torchrun / srun. Reports MLM accuracy and loss over the masked positions
(the loss is the mean cross-entropy over every masked token of the evaluated set), NSP accuracy and
loss, perplexity = exp(MLM loss) and sequences/s, as dllogger JSON lines and one summary line.

`evaluate()` is the one implementation; `PeriodicEvaluator` runs it during pretraining
(`run_pretraining.py --eval_dir`) on a fixed set: the first `--eval_samples` rows of the sorted test shards.

Why several ranks give exactly the one-process numbers: batches never straddle shards and are numbered
in the order of the sorted shards, and each rank takes a contiguous run of batch numbers, so every batch
holds the same rows whatever the world size. Counts are summed as int64; each batch's float64 loss sums
land in the slot of its batch number and are added with `math.fsum`, whose result does not depend on order.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

import distributed
import input_checks
import run_log
import training
from bert_kernels import add_kernel_arguments, configure_kernels
from checkpoint_io import load_checkpoint, load_config_for_checkpoint
from data.pretraining_dataset import (
    DynamicMasker,
    PretrainingShardDataset,
    add_masking_arguments,
    list_shards,
    masker_from_args,
    unmasked_input_ids,
)
from input_checks import InputError
from modeling import BertConfig, BertForPreTraining, masked_positions_from_labels
from precision import PRECISION_HELP, PRECISIONS, apply_tf32, autocast_context, resolve_precision

BATCH_KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_labels", "next_sentence_labels")
Batch = dict[str, torch.Tensor]

# --------------------------------------------------------------------------------------------
# The evaluation set: shards, and batches numbered in one global order
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    path: str
    rows: int
    seq_len: int
    max_pred: int


def read_shard_info(path: str) -> ShardInfo:
    """Row count and widths from the HDF5 metadata, without reading the data."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("input_ids", "masked_lm_positions") if k not in f]
            if missing:
                raise InputError(f"{path}: missing dataset '{missing[0]}' (not a pretraining shard)")
            rows, seq_len = f["input_ids"].shape
            return ShardInfo(path, int(rows), int(seq_len), int(f["masked_lm_positions"].shape[1]))
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None


def find_eval_shards(folder: str | os.PathLike, kind: str = "test") -> list[ShardInfo]:
    return [read_shard_info(path) for path in list_shards(folder, kind)]


def check_fits_model(shards: list[ShardInfo], config: BertConfig) -> None:
    for shard in shards:
        if shard.seq_len > config.max_position_embeddings:
            raise InputError(f"{shard.path}: sequence length {shard.seq_len} exceeds the model's "
                             f"max_position_embeddings {config.max_position_embeddings}")


@dataclass(frozen=True)
class BatchSlice:
    index: int  # position in the global batch order
    shard: int
    start: int
    stop: int
    max_pred: int  # the shard's masked positions per row


def plan_batches(shards: list[ShardInfo], batch_size: int, max_samples: int = -1) -> list[BatchSlice]:
    """All evaluation batches in order: consecutive rows of one shard at a time, the first `max_samples` rows
    overall (-1 = every row). The plan depends only on the shards, never on the world size or a seed."""
    plan: list[BatchSlice] = []
    budget = math.inf if max_samples < 0 else max_samples
    for shard_index, shard in enumerate(shards):
        start = 0
        while start < shard.rows and budget > 0:
            stop = int(min(start + batch_size, shard.rows, start + budget))
            plan.append(BatchSlice(len(plan), shard_index, start, stop, shard.max_pred))
            budget -= stop - start
            start = stop
    return plan


def batches_for_rank(plan: list[BatchSlice], rank: int, world: int, max_steps: int = -1) -> list[BatchSlice]:
    """This rank's contiguous run of the plan (so it reads few shards); `max_steps` bounds batches per rank."""
    if max_steps >= 0:
        plan = plan[: max_steps * world]
    return plan[rank * len(plan) // world : (rank + 1) * len(plan) // world]


def load_eval_shard(shard: ShardInfo) -> Batch:
    return PretrainingShardDataset(shard.path, shard.max_pred).tensors()


def iter_batches(shards: list[ShardInfo], slices: list[BatchSlice], masker: DynamicMasker | None = None
                 ) -> Iterator[tuple[BatchSlice, Batch]]:
    """Rows of each slice, reading every shard once; the next shard loads in the background. With `masker`,
    each batch is re-masked (epoch 0, keyed by shard and row: the same masks whatever the world size)."""
    order = list(dict.fromkeys(s.shard for s in slices))
    if not order:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-shard") as pool:
        pending = pool.submit(load_eval_shard, shards[order[0]])
        for position, shard_index in enumerate(order):
            data = pending.result()
            if position + 1 < len(order):
                pending = pool.submit(load_eval_shard, shards[order[position + 1]])
            for s in slices:
                if s.shard == shard_index:
                    batch = {k: data[k][s.start : s.stop] for k in BATCH_KEYS}
                    yield s, batch if masker is None else remasked(batch, masker, shards[shard_index].path, s)


def remasked(batch: Batch, masker: DynamicMasker, path: str, s: BatchSlice) -> Batch:
    unmasked = unmasked_input_ids(batch["input_ids"], batch["masked_lm_labels"])
    ids, labels = masker(unmasked, batch["segment_ids"], batch["input_mask"], 0, path, torch.arange(s.start, s.stop))
    return {**batch, "input_ids": ids, "masked_lm_labels": labels}


# --------------------------------------------------------------------------------------------
# The evaluation itself (one implementation for the command and for training)
# --------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    sequences: int
    masked_tokens: int
    mlm_correct: int
    mlm_loss_sum: float
    nsp_correct: int
    nsp_loss_sum: float
    seconds: float

    @property
    def mlm_accuracy(self) -> float:
        return self.mlm_correct / self.masked_tokens if self.masked_tokens else float("nan")

    @property
    def mlm_loss(self) -> float:
        return self.mlm_loss_sum / self.masked_tokens if self.masked_tokens else float("nan")

    @property
    def nsp_accuracy(self) -> float:
        return self.nsp_correct / self.sequences if self.sequences else float("nan")

    @property
    def nsp_loss(self) -> float:
        return self.nsp_loss_sum / self.sequences if self.sequences else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.mlm_loss, 700.0))  # NaN stays NaN

    @property
    def sequences_per_second(self) -> float:
        return self.sequences / self.seconds if self.seconds > 0 else float("nan")

    def metrics(self) -> dict[str, float | int]:
        """The keys logged by the command and by evaluation during training (the loss-curve plot reads them)."""
        return {
            "eval_mlm_accuracy": self.mlm_accuracy,
            "eval_mlm_loss": self.mlm_loss,
            "eval_nsp_accuracy": self.nsp_accuracy,
            "eval_nsp_loss": self.nsp_loss,
            "eval_perplexity": self.perplexity,
            "eval_sequences": self.sequences,
            "eval_masked_tokens": self.masked_tokens,
        }

    def summary_line(self) -> str:
        return (f"evaluated {self.sequences} sequences ({self.masked_tokens} masked tokens): "
                f"MLM accuracy {self.mlm_accuracy:.4f} loss {self.mlm_loss:.4f} perplexity {self.perplexity:.2f}; "
                f"NSP accuracy {self.nsp_accuracy:.4f} loss {self.nsp_loss:.4f}; "
                f"{self.sequences_per_second:.1f} sequences/s")


def batch_sums(model: torch.nn.Module, batch: Batch, max_pred: int, precision: str, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 [sequences, masked tokens, MLM correct, NSP correct], float64 [MLM loss sum, NSP loss sum]).

    MLM logits are computed at the `max_pred` masked slots of each row only; filler slots carry label -1.
    """
    input_ids, segment_ids, input_mask, labels, nsp_labels = (batch[k].to(device, non_blocking=True)
                                                              for k in BATCH_KEYS)
    positions, labels = masked_positions_from_labels(labels, max_pred)
    with autocast_context(precision, device):
        mlm_scores, nsp_scores = model(input_ids, segment_ids, input_mask, positions)
    mlm_scores = mlm_scores.float().reshape(-1, mlm_scores.size(-1))
    labels = labels.reshape(-1)
    masked = labels != -1
    mlm_loss = F.cross_entropy(mlm_scores, labels, ignore_index=-1, reduction="none")
    nsp_scores = nsp_scores.float()
    nsp_loss = F.cross_entropy(nsp_scores, nsp_labels, reduction="none")
    counts = torch.stack([
        torch.tensor(input_ids.size(0), device=device),
        masked.sum(),
        (masked & (mlm_scores.argmax(-1) == labels)).sum(),
        (nsp_scores.argmax(-1) == nsp_labels).sum(),
    ]).to(torch.int64)
    losses = torch.stack([mlm_loss.double().sum(), nsp_loss.double().sum()])
    return counts, losses


def evaluate(model: torch.nn.Module, batches: Iterable[tuple[BatchSlice, Batch]], num_batches: int,
             env: distributed.DistEnv, precision: str, progress: Any | None = None) -> EvalResult:
    """Evaluate this rank's batches and combine every rank's totals (call on all ranks together).

    `num_batches` is the length of the global plan: each batch's loss sums go to the slot of its number.
    The model's train/eval mode is restored afterwards.
    """
    device = env.device
    counts = torch.zeros(4, dtype=torch.int64, device=device)
    losses = torch.zeros(num_batches, 2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    start = time.time()
    try:
        with torch.no_grad():
            for s, batch in batches:
                c, loss = batch_sums(model, batch, s.max_pred, precision, device)
                counts += c
                losses[s.index] = loss
                if progress is not None:
                    progress.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        model.train(was_training)
    seconds = torch.tensor([time.time() - start], dtype=torch.float64, device=device)
    if env.distributed:
        dist.all_reduce(counts)
        dist.all_reduce(losses)  # every slot is written by one rank only, so the sum is exact
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    n, masked, mlm_correct, nsp_correct = (int(v) for v in counts.tolist())
    per_batch = losses.cpu().tolist()
    return EvalResult(
        sequences=n, masked_tokens=masked, mlm_correct=mlm_correct, nsp_correct=nsp_correct,
        mlm_loss_sum=math.fsum(b[0] for b in per_batch), nsp_loss_sum=math.fsum(b[1] for b in per_batch),
        seconds=float(seconds.item()),
    )


# --------------------------------------------------------------------------------------------
# Evaluation during pretraining
# --------------------------------------------------------------------------------------------


def add_periodic_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """run_pretraining.py's --eval_* flags: evaluation during training, read by `PeriodicEvaluator.from_args`."""
    g = parser.add_argument_group("evaluation during training")
    g.add_argument("--eval_dir", default=None, help="evaluate on the *test* shards of this folder during training")
    g.add_argument("--eval_every_samples", type=int, default=0, help="evaluate every N training samples (global)")
    g.add_argument("--eval_samples", type=int, default=10000, help="size of the fixed evaluation set")
    g.add_argument("--eval_batch_size", type=int, default=64, help="evaluation batch size")
    g.add_argument("--target_mlm_accuracy", type=float, default=0.0,
                   help="stop once evaluation reaches this MLM accuracy")


class PeriodicEvaluator:
    """Evaluates every `eval_every_samples` training samples (and after the last step) on a fixed set.

    The set is the first `eval_samples` rows of the sorted test shards of `--eval_dir`: no randomness,
    so it is the same on every rank, every run and every resume. Each rank keeps its share in memory.
    The training loop asks `should_evaluate(samples_seen, global_step)` after every step and, when told
    so, calls `evaluate(model)`; logging and stopping are the loop's.
    """

    def __init__(self, batches: list[tuple[BatchSlice, Batch]], num_batches: int, every_samples: int,
                 samples_seen: int, final_step: int, env: distributed.DistEnv | None = None, precision: str = "fp32"):
        self.batches, self.num_batches = batches, num_batches
        self.every_samples, self.final_step = every_samples, final_step
        self.env, self.precision = env or distributed.DistEnv(), precision
        self.next_at = self._next_multiple(samples_seen)
        self.last_evaluated_at = -1
        self.samples_seen = samples_seen  # as of the latest should_evaluate call

    @classmethod
    def from_args(cls, args: argparse.Namespace, config: BertConfig, env: distributed.DistEnv, precision: str, *,
                  samples_seen: int, final_step: int) -> PeriodicEvaluator:
        """From run_pretraining.py's --eval_* flags; `final_step` is where the training job stops."""
        if args.eval_samples < 1 or args.eval_batch_size < 1:
            raise InputError(f"--eval_samples ({args.eval_samples}) and --eval_batch_size ({args.eval_batch_size}) "
                             "must be positive")
        if args.eval_every_samples < 0:
            raise InputError(f"--eval_every_samples must be >= 0, got {args.eval_every_samples}")
        shards = find_eval_shards(args.eval_dir, "test")
        check_fits_model(shards, config)
        plan = plan_batches(shards, args.eval_batch_size, args.eval_samples)
        mine = batches_for_rank(plan, env.rank, env.world_size)
        # Copies, so that the rest of each shard is freed once read.
        batches = [(s, {k: v.clone() for k, v in b.items()}) for s, b in iter_batches(shards, mine)]
        return cls(batches, len(plan), args.eval_every_samples, samples_seen, final_step, env, precision)

    def _next_multiple(self, samples_seen: int) -> int | float:
        if self.every_samples <= 0:
            return math.inf
        return (samples_seen // self.every_samples + 1) * self.every_samples

    def should_evaluate(self, samples_seen: int, global_step: int | None = None) -> bool:
        """True every `every_samples` samples and at the run's last step (when the loop passes `global_step`)."""
        self.samples_seen = samples_seen
        if samples_seen == self.last_evaluated_at:
            return False
        return samples_seen >= self.next_at or (global_step is not None and global_step >= self.final_step)

    def mark_evaluated(self, samples_seen: int) -> None:
        self.last_evaluated_at = samples_seen
        self.next_at = self._next_multiple(samples_seen)

    def evaluate(self, model: torch.nn.Module) -> EvalResult:
        """Evaluate `model` on the fixed set (all ranks together); the cadence restarts from this point."""
        result = evaluate(model, self.batches, self.num_batches, self.env, self.precision)
        self.mark_evaluated(self.samples_seen)
        return result


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
