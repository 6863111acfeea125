"""Pretraining evaluation, the library: masked-LM and next-sentence accuracy and loss on HDF5 shards.

`evaluate()` is the one implementation; `run_pretraining_inference.py` is its command, and
`PeriodicEvaluator` runs it during pretraining (`run_pretraining.py --eval_dir`) on a fixed set: the
first `--eval_samples` rows of the sorted test shards.

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
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

import distributed
from batch_packing import masked_positions_from_labels
from data.pretraining_dataset import DynamicMasker, PretrainingShardDataset, list_shards, unmasked_input_ids
from input_checks import InputError
from modeling import BertConfig
from precision import autocast_context

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
    input_ids, segment_ids, input_mask, labels, nsp_labels = (batch[k].to(device,
                                                                          non_blocking=True) for k in BATCH_KEYS)
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
