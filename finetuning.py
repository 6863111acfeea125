"""The fine-tuning loop shared by run_squad.py, run_glue.py and run_swag.py.

The task scripts only parse their own flags, turn their data into a `TensorDataset` and say how a
batch becomes a loss or predictions; everything else lives here once:

* the flags all three share (`add_common_arguments`), with the original's names and defaults;
* run setup (`start_run`): precision (`--precision`, or the original's `--fp16`/`--amp`), torchrun /
  SLURM process group, seeds, the dllogger-compatible logger;
* loading the model through `checkpoint_io.load_checkpoint` (a pretraining checkpoint, our fine-tuned
  output or a Hugging Face folder; heads the checkpoint lacks are initialised fresh and reported);
* the training loop (`train`): the original's two parameter groups, AdamW + LinearWarmUp (or the
  original's BertAdam), gradient accumulation, autocast with a GradScaler for fp16, DDP with
  `no_sync` while accumulating, optional global gradient clipping (SQuAD) — one update is
  `training.Stepper`, the same as pretraining's — tqdm, periodic logs;
* batched prediction (`predict`) and the original's summary metrics;
* saving `pytorch_model.bin` (`{'model': state_dict}`) + `bert_config.json` (+ `vocab.txt`) atomically.

Deliberate differences from the original, each a fix:

* The LR horizon is the number of updates the loop really makes (all features, the last partial
  accumulation group of an epoch included, capped by `--max_steps`); the original's SQuAD counted
  examples instead of features, so its last updates ran at LR 0, and `--max_steps` runs kept the
  full-epoch horizon. Fractional `--num_train_epochs` are honoured instead of truncated.
* Global gradient clipping (SQuAD) happens once per update on the accumulated gradient, not after
  every micro-batch, so accumulating k micro-batches equals one k-times larger batch.
* The training sampler is a `DistributedSampler` in every run (world size 1 included), so N
  processes with per-process batch B see exactly the batches of one process with batch N·B.
* Each batch is cut to its longest real sequence (`--keep_padding` turns this off), which skips the
  work on padding without changing any result; SQuAD's span softmax therefore leaves padding
  positions out (they can never be answers; the original included them).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from atomic_io import atomic_path, atomic_torch_save
from bert_kernels import add_kernel_arguments, configure_kernels
from checkpoint_io import (
    CONFIG_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    load_checkpoint,
    load_config_for_checkpoint,
    resolve_vocab_file,
)
from checkpointing import first_non_finite_parameter
from distributed import DistEnv, all_reduce_mean, barrier, init_distributed, seed_everything
from input_checks import InputError, check_at_least_one, check_number_ranges, check_output_dir, check_output_file
from modeling import BertConfig
from precision import PRECISION_HELP, PRECISIONS, apply_tf32, autocast_context, resolve_precision
from run_log import Logger
from training import (
    COMPATIBILITY_GROUP,
    LOSS_SCALE_HELP,
    DivergenceGuard,
    Stepper,
    TrainingDiverged,
    lock_output_dir,
    progress_bar,
    release_output_locks,
    wrap_ddp,
)

LossFn = Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]
ForwardFn = Callable[[nn.Module, Sequence[torch.Tensor]], "torch.Tensor | tuple[torch.Tensor, ...]"]

# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _default_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", -1))


def add_common_arguments(parser: argparse.ArgumentParser, *, max_seq_length: int, seed: int,
                         json_summary: str | None = None) -> argparse._ArgumentGroup:
    """The flags run_squad.py, run_glue.py and run_swag.py share (names and meaning of the original).

    Returns the group of flags accepted only for compatibility, for a script to add its own to."""
    g = parser.add_argument_group("model and checkpoint")
    g.add_argument("--init_checkpoint", required=True,
                   help="start weights: a pretraining checkpoint ({'model': sd} or bare sd), a fine-tuned output "
                        "folder or pytorch_model.bin, or a Hugging Face folder (config.json + model.safetensors)")
    g.add_argument("--config_file", help="bert_config.json (default: bert_config.json or config.json beside "
                                          "the checkpoint)")
    g.add_argument("--vocab_file", help="WordPiece vocab.txt (default: vocab.txt beside the checkpoint)")
    g.add_argument("--do_lower_case", action="store_true", help="lower-case and strip accents (uncased models)")
    g.add_argument("--max_seq_length", type=int, default=max_seq_length,
                   help=f"WordPieces per sequence after tokenization, padded (default {max_seq_length})")
    g.add_argument("--output_dir", required=True, help="gets pytorch_model.bin, bert_config.json and predictions")

    t = parser.add_argument_group("training")
    t.add_argument("--do_train", action="store_true", help="fine-tune")
    t.add_argument("--train_batch_size", type=int, default=32,
                   help="per-process batch per optimizer update (split into --gradient_accumulation_steps "
                        "micro-batches)")
    t.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    t.add_argument("--num_train_epochs", type=float, default=3.0, help="epochs (fractions allowed)")
    t.add_argument("--max_steps", type=float, default=-1.0, help="> 0: stop after this many updates")
    t.add_argument("--warmup_proportion", type=float, default=0.1,
                   help="fraction of the updates with linear LR warm-up")
    t.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per update")
    t.add_argument("--optimizer", choices=("adamw", "bertadam"), default="adamw",
                   help="adamw: torch AdamW (eps 1e-6, bias correction) + LinearWarmUp; bertadam: the "
                        "original's FP32 optimizer (per-tensor clipping, no bias correction)")
    t.add_argument("--weight_decay", type=float, default=0.01, help="decay of all weights but biases/LayerNorm")
    t.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
    t.add_argument("--skip_checkpoint", action="store_true", help="do not save the fine-tuned model")
    t.add_argument("--keep_padding", action="store_true",
                   help="run every batch at --max_seq_length as the original did (slower); by default each batch "
                        "is cut to its longest sequence, which changes no result (SQuAD: see run_squad.py)")

    p = parser.add_argument_group("precision and devices")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--fp16", action="store_true", help="the original's flag: same as --precision fp16")
    p.add_argument("--amp", action="store_true", help="the original's flag: same as --precision fp16")
    p.add_argument("--loss_scale", type=float, default=0.0, help=LOSS_SCALE_HELP)
    p.add_argument("--no_cuda", action="store_true", help="run on the CPU even when a GPU is present")

    lg = parser.add_argument_group("logging")
    lg.add_argument("--json-summary", "--json_summary", dest="json_summary", default=json_summary,
                    help="dllogger JSON-lines file (default: %s)" % (json_summary or "<output_dir>/dllogger.json"))
    lg.add_argument("--log_freq", type=int, default=50, help="log the training loss every N updates")
    lg.add_argument("--disable_progress_bar", "--disable-progress-bar", dest="disable_progress_bar",
                    action="store_true", help="no tqdm progress bars")
    lg.add_argument("--verbose_logging", action="store_true",
                    help="print the first training features (tokens, ids, mask, segments, label) and, for SQuAD, "
                         "why a predicted answer could not be mapped back to the original text")
    add_kernel_arguments(parser)

    c = parser.add_argument_group(COMPATIBILITY_GROUP)
    c.add_argument("--bert_model", default="bert-large-uncased",
                   help="a model name; not used (feature caches are named by a hash of every setting that changes "
                        "the features)")
    c.add_argument("--local_rank", "--local-rank", type=int, default=_default_local_rank(),
                   help="not used: ranks come from the torchrun/SLURM environment")
    c.add_argument("--use_env", action="store_true", help="not used: ranks always come from the environment")
    return c


def add_cache_arguments(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--cache_dir", help=f"where to cache features (default: {default_help})")
    parser.add_argument("--skip_cache", action="store_true", help="do not write feature caches")


# --------------------------------------------------------------------------------------------
# Run setup
# --------------------------------------------------------------------------------------------


@dataclass
class RunContext:
    args: argparse.Namespace
    env: DistEnv
    precision: str
    logger: Logger
    micro_batch_size: int
    output_dir: Path

    @property
    def device(self) -> torch.device:
        return self.env.device

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def progress(self, iterable: Any, desc: str, total: int | None = None) -> Any:
        return progress_bar(iterable, enabled=self.is_main and not self.args.disable_progress_bar, desc=desc,
                            total=total)


def validate_batch_arguments(args: argparse.Namespace) -> int:
    """The per-process micro-batch (train_batch_size / gradient_accumulation_steps), checked."""
    # A batch size of 0 would otherwise end deep in the DataLoader with a traceback.
    for flag in ("train_batch_size", "predict_batch_size", "eval_batch_size"):
        if hasattr(args, flag):
            check_at_least_one(getattr(args, flag), f"--{flag}")
    accum = args.gradient_accumulation_steps
    if accum < 1:
        raise InputError(f"--gradient_accumulation_steps must be >= 1, got {accum}")
    if args.train_batch_size < accum or args.train_batch_size % accum:
        raise InputError(f"--train_batch_size {args.train_batch_size} must be a multiple of "
                         f"--gradient_accumulation_steps {accum}")
    if not 0.0 <= args.warmup_proportion <= 1.0:
        raise InputError(f"--warmup_proportion must be in [0, 1], got {args.warmup_proportion}")
    return args.train_batch_size // accum


def check_training_numbers(args: argparse.Namespace) -> None:
    """A NaN learning rate or epoch count, or a log interval of 0, used to end in a traceback (or a NaN model)."""
    check_number_ranges({  # flag: (value, lowest allowed, lowest is allowed, highest)
        "--learning_rate": (args.learning_rate, 0.0, False, math.inf),
        "--num_train_epochs": (args.num_train_epochs, 0.0, False, math.inf),
        "--max_steps": (args.max_steps, -math.inf, False, math.inf),
        "--weight_decay": (args.weight_decay, 0.0, True, math.inf),
        "--loss_scale": (args.loss_scale, 0.0, True, math.inf),
        "--log_freq": (args.log_freq, 1, True, math.inf),
    })


def start_run(args: argparse.Namespace) -> RunContext:
    """Precision, process group, seeds and logger for a fine-tuning run."""
    micro_batch = validate_batch_arguments(args)
    check_training_numbers(args)
    # Output paths are checked before any work, so a bad one costs seconds, not a training run.
    check_output_dir(args.output_dir)
    if args.json_summary:
        check_output_file(args.json_summary, "--json-summary")
    configure_kernels(args)
    env = init_distributed("cpu" if args.no_cuda else None)
    precision = resolve_precision(args.precision, args.fp16 or args.amp, env.device)
    apply_tf32(precision)
    # Every rank draws the same fresh head; DDP would broadcast rank 0's anyway.
    seed_everything(args.seed)
    output_dir = Path(args.output_dir)
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        lock_output_dir(output_dir)  # held until `finish`: a second run on this folder stops here
    json_path = args.json_summary or output_dir / "dllogger.json"
    logger = Logger(json_path, enabled=env.is_main)
    _log_units(logger)
    logger.log("PARAMETER", {"Config": [str(args)]})
    logger.log("PARAMETER", {"SEED": args.seed, "precision": precision, "world_size": env.world_size,
                             "device": str(env.device)})
    return RunContext(args, env, precision, logger, micro_batch, output_dir)


def _log_units(logger: Logger) -> None:
    units = {"e2e_train_time": "s", "training_sequences_per_second": "sequences/s", "final_loss": None,
             "e2e_inference_time": "s", "inference_sequences_per_second": "sequences/s"}
    for metric, unit in units.items():
        logger.metadata(metric, {"unit": unit})


# --------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------


def load_tokenizer(vocab_file: Path, do_lower_case: bool) -> Any:
    from tokenization import FullTokenizer

    return FullTokenizer(str(vocab_file), do_lower_case=do_lower_case)


def check_fits_positions(max_seq_length: int, config: BertConfig) -> None:
    """InputError when sequences would be longer than the model has position embeddings for."""
    if max_seq_length > config.max_position_embeddings:
        raise InputError(f"--max_seq_length {max_seq_length} exceeds the model's max_position_embeddings "
                         f"{config.max_position_embeddings}")


def load_model(ctx: RunContext, build: Callable[[BertConfig], nn.Module], *, strict: bool = False,
               tokenizer: Any = None) -> tuple[nn.Module, BertConfig]:
    """The task model from --init_checkpoint (+ --config_file); heads the checkpoint lacks start fresh.
    With `tokenizer`, its vocab must fit the config's vocab_size."""
    args = ctx.args
    config = load_config_for_checkpoint(args.init_checkpoint, args.config_file)
    check_fits_positions(args.max_seq_length, config)
    if tokenizer is not None:
        check_vocab_fits(tokenizer.vocab, config, resolve_vocab_file(args.vocab_file, args.init_checkpoint))
    model = build(config)
    ctx.logger.log("PARAMETER", {"loading_checkpoint": str(args.init_checkpoint)})
    report = load_checkpoint(model, args.init_checkpoint, strict=strict)
    if ctx.is_main:
        print(report.summary(), flush=True)
    if report.initialized and not args.do_train and ctx.is_main:
        print(f"warning: predicting with freshly initialised weights ({', '.join(report.initialized[:4])}); "
              "pass a fine-tuned checkpoint or --do_train", flush=True)
    ctx.logger.log("PARAMETER", {"loaded_checkpoint": str(args.init_checkpoint),
                                 "model_weights_num": sum(p.numel() for p in model.parameters())})
    return model.to(ctx.device), config


def check_vocab_fits(vocab: dict[str, int], config: BertConfig, source: str | os.PathLike) -> None:
    """A token id past the embedding rows used to end the first batch in an IndexError traceback."""
    largest = max(vocab.values(), default=-1)
    if largest >= config.vocab_size:
        raise InputError(f"{source}: the vocab has ids up to {largest}, the model config's vocab_size is "
                         f"{config.vocab_size}; pass the vocab the model was trained with")


def arrays_to_dataset(arrays: dict[str, np.ndarray], names: Sequence[str]) -> TensorDataset:
    """A TensorDataset of the named arrays, kept in their compact dtypes (widened per batch)."""
    return TensorDataset(*(torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in names))


def show_features(ctx: RunContext, dataset: TensorDataset, names: Sequence[str], tokenizer: Any,
                  count: int = 3) -> None:
    """--verbose_logging: print the first `count` features (the original's "*** Example ***" blocks).

    The dataset's first two columns are input_ids and input_mask; sequence columns are cut at the real
    tokens, one line per choice for multiple-choice rows.
    """
    if not ctx.args.verbose_logging or not ctx.is_main:
        return
    for index in range(min(count, len(dataset))):
        row = dataset[index]
        ids = row[0].reshape(-1, row[0].size(-1))  # one row, or one per choice
        real = [int(n) for n in row[1].reshape(ids.shape).sum(-1)]
        lines = [f"*** Example {index} ***"]
        lines += [f"tokens: {' '.join(tokenizer.convert_ids_to_tokens(ids[c, :n].tolist()))}"
                  for c, n in enumerate(real)]
        for name, column in zip(names, row, strict=True):
            if column.shape == row[0].shape:
                per_choice = column.reshape(ids.shape)
                lines += [f"{name}: {' '.join(map(str, per_choice[c, :n].tolist()))}" for c, n in enumerate(real)]
            else:
                lines.append(f"{name}: {column.tolist()}")
        print("\n".join(lines), flush=True)


def to_device(batch: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Integer columns become int64 (embedding indices, labels); floats stay as they are."""
    out = []
    for t in batch:
        if not t.is_floating_point() and t.dtype != torch.bool:
            t = t.long()
        out.append(t.to(device, non_blocking=True))
    return out


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over class scores; MSE for one regression output (float labels, e.g. STS-B)."""
    if labels.is_floating_point():
        return F.mse_loss(logits.reshape(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def batch_scores(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """Scores of a classifier (GLUE) or multiple-choice (SWAG) batch laid out as ids, mask, segments[, labels]."""
    input_ids, input_mask, segment_ids = batch[:3]
    return model(input_ids, segment_ids, input_mask)


def batch_classification_loss(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """`classification_loss` of `batch_scores` against the batch's last column (the labels)."""
    return classification_loss(batch_scores(model, batch), batch[3])


def trim_padding(batch: list[torch.Tensor], mask_index: int = 1, sequence_columns: int = 3) -> list[torch.Tensor]:
    """Cut the first `sequence_columns` tensors (ids, mask, segments) to the batch's longest real sequence.

    Padded keys are masked out of attention, so real tokens get the same hidden states at any padded
    length: results that read real tokens only ([CLS] heads, per-token scores of real tokens, a loss
    that masks padding) do not change, and the work on padding is skipped.
    """
    length = int(batch[mask_index].sum(-1).max())
    if length == batch[mask_index].size(-1):
        return batch
    return [t[..., :length] if i < sequence_columns else t for i, t in enumerate(batch)]


# --------------------------------------------------------------------------------------------
# Optimizer and scheduler (one update is training.Stepper)
# --------------------------------------------------------------------------------------------


def build_optimizer_and_scheduler(model: nn.Module, args: argparse.Namespace, total_steps: int,
                                  skip_pooler: bool = False) -> tuple[torch.optim.Optimizer, Any]:
    """The original's two parameter groups; AdamW + LinearWarmUp, or BertAdam with its own schedule."""
    from optimization import build_finetune_optimizer
    from schedulers import build_scheduler

    if args.optimizer == "bertadam":
        optimizer = build_finetune_optimizer(model, args.learning_rate, args.weight_decay, kind="bertadam",
                                             skip_pooler=skip_pooler, warmup=args.warmup_proportion,
                                             t_total=total_steps)
        return optimizer, None
    optimizer = build_finetune_optimizer(model, args.learning_rate, args.weight_decay, kind="adamw",
                                         skip_pooler=skip_pooler)
    return optimizer, build_scheduler("linear", optimizer, args.warmup_proportion, total_steps)


def current_lr(optimizer: torch.optim.Optimizer, scheduler: Any) -> float:
    """The learning rate the latest update used."""
    if scheduler is not None:
        return float(scheduler.get_last_lr()[0]) + 0.0  # + 0.0: no "-0" in the logs at the end of the decay
    group = optimizer.param_groups[0]
    scheduled = getattr(optimizer, "scheduled_lr", None)
    if scheduled is not None and group["params"]:
        step = optimizer.state.get(group["params"][0], {}).get("step", 0)
        return float(scheduled(group, max(int(step) - 1, 0)))
    return float(group["lr"])


# --------------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------------


@dataclass
class UpdatePlan:
    """How many micro-batches make each update, and how many updates the run makes."""

    micro_batches_per_epoch: int
    accumulation: int
    total_steps: int

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.accumulation)

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.updates_per_epoch)

    def group_size(self, micro_index: int) -> int:
        """Micro-batches in the update that micro-batch `micro_index` (within its epoch) belongs to."""
        start = micro_index - micro_index % self.accumulation
        return min(self.accumulation, self.micro_batches_per_epoch - start)

    def ends_update(self, micro_index: int) -> bool:
        start = micro_index - micro_index % self.accumulation
        return micro_index + 1 == start + self.group_size(micro_index)


def plan_updates(micro_batches_per_epoch: int, accumulation: int, epochs: float, max_steps: float) -> UpdatePlan:
    if micro_batches_per_epoch < 1:
        raise InputError("no training data: the training set produced no features")
    updates_per_epoch = math.ceil(micro_batches_per_epoch / accumulation)
    total = math.ceil(updates_per_epoch * epochs - 1e-9)
    if max_steps > 0:
        total = min(total, int(max_steps))
    if total < 1:
        raise InputError(f"--num_train_epochs {epochs} and --max_steps {max_steps} leave no update to make")
    return UpdatePlan(micro_batches_per_epoch, accumulation, total)


@dataclass
class TrainResult:
    global_step: int
    final_loss: float
    train_time: float
    sequences: int
    losses: list[float] = field(default_factory=list)

    @property
    def sequences_per_second(self) -> float:
        return self.sequences / self.train_time if self.train_time > 0 else 0.0


def freeze(model: nn.Module, name_part: str) -> None:
    """Parameters whose name contains `name_part` stop requiring gradients (DDP then ignores them)."""
    for name, param in model.named_parameters():
        if name_part in name:
            param.requires_grad_(False)


def train(ctx: RunContext, model: nn.Module, dataset: TensorDataset, loss_fn: LossFn, *,
          skip_pooler: bool = False, clip_grad_norm: float | None = None, trim: bool = False) -> TrainResult:
    """Fine-tune `model` in place on `dataset`; `loss_fn(model, batch)` gives the mean loss of a batch.

    `trim`: cut each batch to its longest real sequence (see `trim_padding`; columns ids, mask, segments).
    """
    args, env = ctx.args, ctx.env
    if skip_pooler:
        freeze(model, "pooler")  # the QA head never reads the pooler; the original left it out too
    sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, batch_size=ctx.micro_batch_size, sampler=sampler)
    plan = plan_updates(len(loader), args.gradient_accumulation_steps, args.num_train_epochs, args.max_steps)
    optimizer, scheduler = build_optimizer_and_scheduler(model, args, plan.total_steps, skip_pooler)
    stepper = Stepper(wrap_ddp(model, env), optimizer, scheduler, ctx.precision, ctx.device, clip_grad_norm,
                      args.loss_scale)
    ctx.logger.log("PARAMETER", {"train_start": True, "training_features": len(dataset),
                                 "train_batch_size": args.train_batch_size, "micro_batch_size": ctx.micro_batch_size,
                                 "gradient_accumulation_steps": plan.accumulation, "steps": plan.total_steps})
    model.train()
    global_step, sequences = 0, 0
    divergence = DivergenceGuard(ctx.precision)
    window: list[torch.Tensor] = []
    logged: list[float] = []
    start = time.perf_counter()
    for epoch in range(plan.epochs):
        sampler.set_epoch(epoch)
        for micro_index, batch in enumerate(ctx.progress(loader, desc=f"Epoch {epoch}")):
            batch = to_device(trim_padding(batch) if trim else batch, ctx.device)
            weight = 1.0 / plan.group_size(micro_index)
            loss = stepper.accumulate(batch, loss_fn, weight, sync=plan.ends_update(micro_index))
            window.append(loss)
            sequences += batch[0].size(0) * env.world_size
            if not plan.ends_update(micro_index):
                continue
            stepper.update()
            global_step += 1
            _stop_if_diverged(divergence, loss, global_step, ctx.precision)
            if global_step % args.log_freq == 0 or global_step == plan.total_steps:
                logged.append(_log_training(ctx, epoch, global_step, window, current_lr(optimizer, scheduler)))
                window = []
            if global_step >= plan.total_steps:
                break
    elapsed = time.perf_counter() - start
    final_loss = all_reduce_mean(logged[-1] if logged else math.nan, ctx.device)
    return TrainResult(global_step, final_loss, elapsed, sequences, logged)


def _stop_if_diverged(guard: DivergenceGuard, loss: torch.Tensor, global_step: int, precision: str) -> None:
    """A NaN/inf loss (too high a learning rate, broken weights or labels) only gets worse, and AdamW would
    train the weights to NaN: stop with one line before anything is written (one host sync per update)."""
    if guard.update(bool(torch.isfinite(loss))):
        raise TrainingDiverged(
            f"training diverged: {guard.in_a_row} updates in a row had a non-finite loss ({precision}, last loss "
            f"{float(loss)}) at step {global_step}; no model written; check --learning_rate, the init checkpoint's "
            "weights and the labels")


def _log_training(ctx: RunContext, epoch: int, global_step: int, window: list[torch.Tensor], lr: float) -> float:
    losses = torch.stack(window).float()
    average = float(losses.mean())
    ctx.logger.log((epoch, global_step), {"average_loss": average, "step_loss": float(losses[-1]),
                                          "learning_rate": lr})
    return average


def log_train_summary(ctx: RunContext, result: TrainResult) -> dict[str, float]:
    summary = {"e2e_train_time": result.train_time,
               "training_sequences_per_second": result.sequences_per_second,
               "final_loss": result.final_loss}
    ctx.logger.log((), summary)
    return summary


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


@dataclass
class InferenceResult:
    outputs: list[np.ndarray]
    elapsed: float
    batch_latencies: list[float]
    sequences: int

    @property
    def sequences_per_second(self) -> float:
        return self.sequences / self.elapsed if self.elapsed > 0 else 0.0


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def inference_copy(model: nn.Module, precision: str) -> nn.Module:
    """The model to predict with: under bf16/fp16, a copy whose Linear layers hold 16-bit weights.

    Autocast casts every Linear weight from fp32 on every call; casting them once up front gives
    bit-identical outputs (autocast would produce the same 16-bit weights) without that per-batch
    memory traffic (~7% of a BERT-base forward on CPU). fp32/tf32: the model itself.
    """
    model = unwrap(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return model.eval()
    cast = copy.deepcopy(model)
    for module in cast.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)
    return cast.eval()


@torch.inference_mode()
def predict(ctx: RunContext, model: nn.Module, dataset: TensorDataset, forward_fn: ForwardFn,
            batch_size: int, desc: str = "Evaluating", trim: bool = False,
            per_position: bool = False) -> InferenceResult:
    """Run `forward_fn(model, batch)` over `dataset` in order; every output comes back as fp32 numpy.

    `trim` as in `train`. `per_position`: the outputs are [batch, sequence] scores; those of a cut
    batch are padded back to the dataset's sequence length with -inf (never a candidate).
    """
    model = inference_copy(model, ctx.precision)
    full_length = dataset.tensors[0].size(-1)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    chunks: list[list[torch.Tensor]] = []
    latencies = []
    start = time.perf_counter()
    for batch in ctx.progress(loader, desc=desc):
        batch_start = time.perf_counter()
        with autocast_context(ctx.precision, ctx.device):
            out = forward_fn(model, to_device(trim_padding(batch) if trim else batch, ctx.device))
        out = out if isinstance(out, tuple) else (out,)
        if per_position:
            out = tuple(F.pad(o.float(), (0, full_length - o.size(-1)), value=-math.inf) for o in out)
        chunks.append([o.float().cpu() for o in out])
        latencies.append(time.perf_counter() - batch_start)
    elapsed = time.perf_counter() - start
    outputs = [torch.cat(parts).numpy() for parts in zip(*chunks, strict=True)] if chunks else []
    return InferenceResult(outputs, elapsed, latencies, len(dataset))


def log_inference_summary(ctx: RunContext, result: InferenceResult) -> dict[str, float]:
    summary = {"e2e_inference_time": result.elapsed,
               "inference_sequences_per_second": result.sequences_per_second}
    ctx.logger.log((), summary)
    return summary


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def save_model(ctx: RunContext, model: nn.Module, config: BertConfig, vocab_file: Path | None = None) -> None:
    """pytorch_model.bin ({'model': sd}) + bert_config.json (+ vocab.txt), each written atomically."""
    if ctx.args.skip_checkpoint or not ctx.is_main:
        return
    out = ctx.output_dir
    bad = first_non_finite_parameter(unwrap(model))
    if bad is not None:  # a NaN model would be evaluated, served and fine-tuned further without a word
        raise InputError(f"weights are not finite ({bad}); {out / WEIGHTS_NAME} not written")
    atomic_torch_save({"model": unwrap(model).state_dict()}, out / WEIGHTS_NAME)
    config.to_json_file(out / CONFIG_NAME)
    if vocab_file is not None and Path(vocab_file).resolve() != (out / VOCAB_NAME).resolve():
        with atomic_path(out / VOCAB_NAME) as tmp:
            shutil.copyfile(vocab_file, tmp)
    ctx.logger.log("PARAMETER", {"saved_model": str(out / WEIGHTS_NAME)})


def finish(ctx: RunContext) -> None:
    barrier()
    ctx.logger.close()
    release_output_locks()
