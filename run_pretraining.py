"""BERT pretraining (MLM + NSP) with LAMB on HDF5 shards, phase 1 and phase 2, as NVIDIA's recipe.

Single process, `torchrun`, or `srun` (SLURM variables). The loop reads top to bottom in `train()`:
micro-batches from this rank's shards → forward/backward under autocast → at each accumulation
boundary: all-reduce, LAMB step (skipped on fp16 overflow), schedule, log, checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import utils
from checkpoint_io import load_checkpoint
from data.pretraining_dataset import PretrainingShardDataset, list_shards
from modeling import (
    BertConfig,
    BertForPreTraining,
    BertPretrainingCriterion,
    masked_positions_from_labels,
)
from optimization import build_lamb, pretraining_param_groups
from schedulers import build_scheduler
from utils import InputError

CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="BERT pretraining with LAMB (phase 1 / phase 2).")
    req = p.add_argument_group("required")
    req.add_argument("--input_dir", required=True, help="folder of .hdf5 shards; files whose name contains 'training' are used")
    req.add_argument("--config_file", required=True, help="model config JSON (bert_config.json)")
    req.add_argument("--output_dir", required=True, help="where ckpt_<step>.pt checkpoints are written")
    p.add_argument("--bert_model", default="bert-large-uncased", help="informational only, as in the original")
    p.add_argument("--init_checkpoint", default=None, help="start from these weights (any layout load_checkpoint accepts)")
    p.add_argument("--max_seq_length", type=int, default=512, help="checked against the shards' sequence length")
    p.add_argument("--max_predictions_per_seq", type=int, default=80, help="masked positions per sequence in the shards")
    p.add_argument("--train_batch_size", type=int, default=32, help="per-rank batch per optimizer step (micro-batch × accumulation)")
    p.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    p.add_argument("--num_train_epochs", type=float, default=3.0, help="unused, kept for compatibility")
    p.add_argument("--max_steps", type=float, default=1000, help="total optimizer steps (the LR-schedule horizon)")
    p.add_argument("--warmup_proportion", type=float, default=0.01, help="fraction of max_steps spent warming up")
    p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", -1)), help="set by the launcher")
    p.add_argument("--seed", type=int, default=42, help="seed; ranks use seed + rank for dropout")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--fp16", "--amp", dest="fp16", action="store_true", help="fp16 autocast with dynamic loss scaling")
    p.add_argument("--precision", choices=utils.PRECISIONS, default=None, help="fp32, tf32, fp16 or bf16 (overrides --fp16)")
    p.add_argument("--loss_scale", type=float, default=0.0, help="0 = dynamic loss scaling; > 0 = static scale (fp16)")
    p.add_argument("--log_freq", type=float, default=1.0, help="log every N optimizer steps")
    p.add_argument("--checkpoint_activations", action="store_true", help="recompute encoder activations in backward")
    p.add_argument("--resume_from_checkpoint", action="store_true", help="resume from the newest valid ckpt in output_dir")
    p.add_argument("--resume_step", type=int, default=-1, help="resume from this step's checkpoint (-1 = newest)")
    p.add_argument("--num_steps_per_checkpoint", type=int, default=100, help="save every N optimizer steps")
    p.add_argument("--skip_checkpoint", action="store_true", help="do not write checkpoints")
    p.add_argument("--keep_checkpoints", type=int, default=3, help="checkpoints of this run to keep (0 = all)")
    p.add_argument("--phase2", action="store_true", help="phase-2 semantics: start from phase 1's last checkpoint")
    p.add_argument("--allreduce_post_accumulation", action="store_true", help="all-reduce gradients once per optimizer step")
    p.add_argument("--allreduce_post_accumulation_fp16", action="store_true", help="do that all-reduce in fp16")
    p.add_argument("--phase1_end_step", type=int, default=7038, help="steps of phase 1; offsets phase-2 checkpoint names")
    p.add_argument("--init_loss_scale", type=int, default=2**20, help="initial dynamic loss scale (fp16)")
    p.add_argument("--do_train", action="store_true", help="must be set, as in the original")
    p.add_argument("--json-summary", dest="json_summary", default="results/dllogger.json", help="dllogger JSON output")
    p.add_argument("--use_env", action="store_true", help="unused, kept for compatibility")
    p.add_argument("--disable_progress_bar", action="store_true", help="no tqdm progress bar")
    p.add_argument("--steps_this_run", type=int, default=-1, help="stop after this many steps (LR horizon unchanged)")
    # Added by this implementation.
    p.add_argument("--lr_scheduler", default="poly", choices=("poly", "linear", "cosine", "constant"), help="LR schedule")
    p.add_argument("--use_nvlamb", action="store_true", help="apply the LAMB trust ratio to every tensor")
    p.add_argument("--no_dense_seq_output", dest="dense_seq_output", action="store_false",
                   help="compute MLM logits at every position instead of only the masked ones")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--tensorboard_dir", default=None, help="also write TensorBoard scalars here")
    p.add_argument("--loss_curve", default=None, help="PNG loss curve written at the end (default: next to --json-summary)")
    p.add_argument("--eval_dir", default=None, help="evaluate on the *test* shards of this folder during training")
    p.add_argument("--eval_every_samples", type=int, default=0, help="evaluate every N training samples (global)")
    p.add_argument("--eval_samples", type=int, default=10000, help="size of the fixed evaluation set")
    p.add_argument("--eval_batch_size", type=int, default=64, help="evaluation batch size")
    p.add_argument("--target_mlm_accuracy", type=float, default=0.0, help="stop once evaluation reaches this MLM accuracy")
    return p.parse_args(argv)


def validate_args(args: argparse.Namespace, env: utils.DistEnv) -> None:
    if not args.do_train:
        raise InputError("--do_train must be set (as in the original)")
    if args.gradient_accumulation_steps < 1:
        raise InputError(f"--gradient_accumulation_steps must be >= 1, got {args.gradient_accumulation_steps}")
    if args.train_batch_size % args.gradient_accumulation_steps:
        raise InputError(
            f"--train_batch_size {args.train_batch_size} is not divisible by "
            f"--gradient_accumulation_steps {args.gradient_accumulation_steps}"
        )
    if not Path(args.input_dir).is_dir():
        raise InputError(f"--input_dir: not a folder: {args.input_dir}")
    if args.eval_every_samples and not args.eval_dir:
        raise InputError("--eval_every_samples needs --eval_dir")
    args.max_steps = int(args.max_steps)
    args.log_freq = max(1, int(args.log_freq))
    if not env.distributed or args.gradient_accumulation_steps == 1:
        args.allreduce_post_accumulation = False
        args.allreduce_post_accumulation_fp16 = False


# --------------------------------------------------------------------------------------------
# Data: this rank's stream of micro-batches, with a position that is plain data
# --------------------------------------------------------------------------------------------


@dataclass
class DataPosition:
    epoch: int = 0
    slot: int = 0  # index into this epoch's file loop
    offset: int = 0  # samples of the current shard already consumed


def slots_per_epoch(num_files: int, world: int) -> int:
    """Shards each rank reads per epoch, so that an epoch is one pass over the data.

    (The original looped over all N slots on every rank, reading each shard W times per "epoch".)
    """
    return max(1, math.ceil(num_files / world))


def shard_for_slot(files: list[str], epoch: int, slot: int, rank: int, world: int, seed: int) -> str:
    """The original's assignment: shuffle with seed + epoch, rank r reads (slot·W + r) mod N."""
    order = list(files)
    random.Random(seed + epoch).shuffle(order)
    n = len(order)
    index = (slot * world + rank + ((world % n) * slot if world > n else 0)) % n
    return order[index]


def load_shard(path: str, max_pred: int) -> dict[str, torch.Tensor]:
    return PretrainingShardDataset(path, max_pred).tensors()


class ShardStream:
    """Micro-batches of one rank, in a deterministic order given (seed, epoch, slot).

    The next shard is read in a background thread while the current one trains. `position` names the
    next sample to be read, so a checkpoint taken between micro-batches resumes at the exact next one.
    """

    def __init__(self, files: list[str], env: utils.DistEnv, micro_batch: int, max_pred: int, seed: int,
                 position: DataPosition | None = None):
        self.files, self.env, self.micro_batch, self.max_pred, self.seed = files, env, micro_batch, max_pred, seed
        self.position = position or DataPosition()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch")
        self._prefetched: tuple[tuple[int, int], Future] | None = None

    def _path(self, epoch: int, slot: int) -> str:
        return shard_for_slot(self.files, epoch, slot, self.env.rank, self.env.world_size, self.seed)

    def _next_slot(self, epoch: int, slot: int) -> tuple[int, int]:
        return (epoch, slot + 1) if slot + 1 < slots_per_epoch(len(self.files), self.env.world_size) else (epoch + 1, 0)

    def _fetch(self, epoch: int, slot: int) -> dict[str, torch.Tensor]:
        if self._prefetched and self._prefetched[0] == (epoch, slot):
            shard = self._prefetched[1].result()
        else:
            shard = load_shard(self._path(epoch, slot), self.max_pred)
        nxt = self._next_slot(epoch, slot)
        self._prefetched = (nxt, self._pool.submit(load_shard, self._path(*nxt), self.max_pred))
        return shard

    def _order(self, n: int, epoch: int, path: str) -> torch.Tensor:
        """Sample order within a shard: a function of (seed, epoch, shard name) only, so the same shard
        is batched identically whichever rank or slot reads it."""
        key = f"{self.seed}:{epoch}:{os.path.basename(path)}".encode()
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)
        return torch.randperm(n, generator=g)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        while True:
            pos = self.position
            shard = self._fetch(pos.epoch, pos.slot)
            n = shard["input_ids"].size(0)
            order = self._order(n, pos.epoch, self._path(pos.epoch, pos.slot))
            while pos.offset + self.micro_batch <= n:  # the last partial batch is dropped: shapes stay static
                idx = order[pos.offset : pos.offset + self.micro_batch]
                pos.offset += self.micro_batch
                yield [shard[k].index_select(0, idx) for k in BATCH_KEYS]
            pos.epoch, pos.slot = self._next_slot(pos.epoch, pos.slot)
            pos.offset = 0

    def close(self) -> None:
        # Wait for a shard load still running: a thread inside h5py at interpreter exit can abort the process.
        self._pool.shutdown(wait=True, cancel_futures=True)


BATCH_KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_labels", "next_sentence_labels")


def check_shard_shapes(files: list[str], args: argparse.Namespace, config: BertConfig) -> tuple[int, int]:
    """(sequence length, masked positions per row) of the first shard; error early when it cannot fit the model."""
    import h5py

    with h5py.File(files[0], "r") as f:
        seq_len = int(f["input_ids"].shape[1])
        max_pred = int(f["masked_lm_positions"].shape[1])
    if seq_len > config.max_position_embeddings:
        raise InputError(f"{files[0]}: sequence length {seq_len} exceeds max_position_embeddings {config.max_position_embeddings}")
    if seq_len > args.max_seq_length:
        raise InputError(f"{files[0]}: sequence length {seq_len} exceeds --max_seq_length {args.max_seq_length}")
    if max_pred > args.max_predictions_per_seq:
        raise InputError(f"{files[0]}: {max_pred} masked positions per row exceed --max_predictions_per_seq {args.max_predictions_per_seq}")
    return seq_len, max_pred


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def checkpoint_steps(output_dir: str) -> list[int]:
    steps = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        m = CKPT_PATTERN.match(name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps, reverse=True)


def read_checkpoint(path: str) -> dict[str, Any] | None:
    """The checkpoint, or None when the file is damaged (e.g. cut short by a crash)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        print(f"warning: skipping unreadable checkpoint {path}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        print(f"warning: skipping {path}: no 'model' entry", file=sys.stderr)
        return None
    return ckpt


def find_resume_checkpoint(output_dir: str, resume_step: int) -> tuple[int, dict[str, Any]] | None:
    """The requested step's checkpoint, or the newest one that loads."""
    steps = checkpoint_steps(output_dir)
    if resume_step >= 0:
        steps = [s for s in steps if s == resume_step]
        if not steps:
            raise InputError(f"{output_dir}: no ckpt_{resume_step}.pt to resume from (--resume_step)")
    for step in steps:
        ckpt = read_checkpoint(os.path.join(output_dir, f"ckpt_{step}.pt"))
        if ckpt is not None:
            return step, ckpt
    return None


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_plain(obj: Any) -> list[Any]:
    """Every rank's `obj` (plain data / tensors) on every rank."""
    if utils.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * utils.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------
# Training state
# --------------------------------------------------------------------------------------------


@dataclass
class RunState:
    global_step: int = 0  # successful optimizer updates in this phase
    skipped_steps: int = 0
    samples_seen: int = 0  # global training samples in this phase (for evaluation cadence)
    phase: int = 1


class Trainer:
    """Holds the model, optimizer and data stream; `train()` is the loop."""

    def __init__(self, args: argparse.Namespace, env: utils.DistEnv, logger: utils.Logger):
        self.args, self.env, self.logger = args, env, logger
        self.precision = utils.resolve_precision(args.precision, args.fp16)
        utils.apply_tf32(self.precision)
        self.config = BertConfig.from_json_file(args.config_file)
        self.files = list_shards(args.input_dir, "training")
        if not self.files:
            raise InputError(f"{args.input_dir}: no .hdf5 shards whose name contains 'training'")
        self.seq_len, self.max_pred = check_shard_shapes(self.files, args, self.config)
        self.micro_batch = args.train_batch_size // args.gradient_accumulation_steps
        self.accum = args.gradient_accumulation_steps
        self.state = RunState(phase=2 if args.phase2 else 1)
        self.stop_requested = False
        self.written: list[str] = []

        utils.seed_everything(args.seed)  # identical initial weights on every rank
        self.model = BertForPreTraining(self.config).to(env.device)
        if args.checkpoint_activations:
            self.model.enable_activation_checkpointing(True)
        self.criterion = BertPretrainingCriterion(self.config.padded_vocab_size)
        self.optimizer = build_lamb(
            pretraining_param_groups(self.model), lr=args.learning_rate, use_nvlamb=args.use_nvlamb
        )
        self.scheduler = build_scheduler(args.lr_scheduler, self.optimizer, args.warmup_proportion, args.max_steps)
        self.scaler = self._make_scaler()
        utils.seed_everything(args.seed + env.rank)  # dropout differs per rank, as in the original
        position = self._restore()
        self.stream = ShardStream(self.files, env, self.micro_batch, self.max_pred, args.seed, position)
        self.forward_model = self._wrap_model()

    # ---- setup ------------------------------------------------------------------------------

    def _make_scaler(self) -> torch.amp.GradScaler:
        enabled = self.precision == "fp16"
        if self.args.loss_scale > 0:  # static scale: never grows, never shrinks
            return torch.amp.GradScaler(self.env.device.type, init_scale=self.args.loss_scale, growth_factor=1.0,
                                        backoff_factor=1.0, enabled=enabled)
        return torch.amp.GradScaler(self.env.device.type, init_scale=float(self.args.init_loss_scale),
                                    growth_interval=2000, enabled=enabled)

    def _wrap_model(self) -> torch.nn.Module:
        model: torch.nn.Module = self.model
        if self.env.distributed:
            if self.args.allreduce_post_accumulation:
                for p in self.model.parameters():  # the manual all-reduce path has no DDP wrapper
                    dist.broadcast(p.data, 0)
            else:
                model = DDP(self.model, device_ids=[self.env.device.index] if self.env.device.type == "cuda" else None)
        if self.args.compile:
            model = torch.compile(model)
        return model

    def _restore(self) -> DataPosition | None:
        """Resume, start phase 2 from phase 1, or initialise from --init_checkpoint. Returns the data position.

        Checkpoints already in output_dir win over --init_checkpoint, so a preempted job that is
        resubmitted with the same command continues where it stopped.
        """
        args = self.args
        out_has_ckpt = bool(checkpoint_steps(args.output_dir))
        if out_has_ckpt and not args.resume_from_checkpoint:
            raise InputError(f"{args.output_dir} already holds checkpoints; pass --resume_from_checkpoint or use another folder")
        if args.resume_from_checkpoint and out_has_ckpt:
            found = find_resume_checkpoint(args.output_dir, args.resume_step)
            if found is None:
                raise InputError(f"{args.output_dir}: no readable checkpoint to resume from")
            step, ckpt = found
            return self._resume_from(step, ckpt, os.path.join(args.output_dir, f"ckpt_{step}.pt"))
        if args.init_checkpoint:
            self._init_from(args.init_checkpoint)
        elif args.phase2 and args.resume_from_checkpoint:
            raise InputError(f"{args.output_dir}: phase 2 needs phase 1's checkpoint there (none found)")
        return None

    def _resume_from(self, step: int, ckpt: dict[str, Any], path: str) -> DataPosition | None:
        load_checkpoint(self.model, path, strict=True, state_dict=ckpt["model"])
        ckpt_phase = int(ckpt.get("phase", 1))
        starting_phase2 = self.args.phase2 and ckpt_phase == 1
        if "optimizer" in ckpt:
            self._load_optimizer(ckpt["optimizer"], reset_schedule=starting_phase2)
        if starting_phase2:
            print(f"phase 2: starting from phase-1 checkpoint {path} (LR schedule restarts, LAMB moments carried over)")
            return None
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        run = ckpt.get("run_state", {})
        self.state = RunState(**{**asdict(self.state), **run, "phase": self.state.phase})
        rank = self.env.rank
        rngs, positions = ckpt.get("rng", []), ckpt.get("data_position", [])
        if rank < len(rngs):
            set_rng_state(rngs[rank], self.env.device)
        print(f"resumed from {path} at step {self.state.global_step}")
        if rank < len(positions) and len(positions) == self.env.world_size:
            return DataPosition(**positions[rank])
        print("warning: world size changed since the checkpoint; data order restarts at a fresh epoch", file=sys.stderr)
        return DataPosition(epoch=int(ckpt.get("epoch", 0)) + 1)

    def _init_from(self, path: str) -> None:
        report = load_checkpoint(self.model, path, strict=True)
        print(f"init_checkpoint: {report.summary()}")
        is_torch_file = os.path.isfile(path) and not path.endswith(".safetensors")
        raw = torch.load(path, map_location="cpu", weights_only=True) if is_torch_file else {}
        if isinstance(raw, dict) and isinstance(raw.get("optimizer"), dict):
            self._load_optimizer(raw["optimizer"], reset_schedule=True)

    def _load_optimizer(self, sd: dict[str, Any], reset_schedule: bool) -> None:
        """Load LAMB state; for a new phase keep the moments but restart the step counter and LR."""
        if reset_schedule:
            for group in sd["param_groups"]:
                group["step"] = 0
                group["lr"] = self.args.learning_rate
                group.pop("initial_lr", None)
        try:
            self.optimizer.load_state_dict(sd)
        except (ValueError, KeyError) as exc:
            raise InputError(f"optimizer state does not fit this model: {exc}") from None
        if reset_schedule:
            for group in self.optimizer.param_groups:
                group["initial_lr"] = self.args.learning_rate
            self.scheduler.base_lrs = [self.args.learning_rate for _ in self.optimizer.param_groups]

    # ---- checkpointing ---------------------------------------------------------------------

    def checkpoint_name_step(self) -> int:
        offset = self.args.phase1_end_step if self.args.phase2 else 0
        return self.state.global_step + offset

    def save_checkpoint(self) -> None:
        if self.args.skip_checkpoint:
            return
        positions = gather_plain(asdict(self.stream.position))
        rngs = gather_plain(rng_state(self.env.device))
        if not self.env.is_main:
            return
        step = self.checkpoint_name_step()
        path = os.path.join(self.args.output_dir, f"ckpt_{step}.pt")
        pos0 = positions[0]
        files_epoch = list(self.files)
        random.Random(self.args.seed + pos0["epoch"]).shuffle(files_epoch)
        ckpt = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "master params": [p.detach() for p in self.model.parameters()],
            "files": [pos0["slot"]] + files_epoch,
            "epoch": pos0["epoch"],
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs,
            "data_position": positions,
            "run_state": asdict(self.state),
            "phase": self.state.phase,
            "config": self.config.to_dict(),
            "args": {k: v for k, v in vars(self.args).items() if isinstance(v, (str, int, float, bool, type(None)))},
        }
        self.logger.log("PARAMETER", {"checkpoint_step": step})
        utils.atomic_torch_save(ckpt, path)
        self.written.append(path)
        self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        keep = self.args.keep_checkpoints
        while keep > 0 and len(self.written) > keep:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.written.pop(0))

    # ---- one optimizer step ----------------------------------------------------------------

    def micro_step(self, batch: list[torch.Tensor], sync: bool) -> tuple[float, float, float]:
        """Forward and backward of one micro-batch; returns (loss, mlm, nsp) of the micro-batch."""
        input_ids, segment_ids, input_mask, labels, nsp_labels = (t.to(self.env.device, non_blocking=True) for t in batch)
        positions = None
        if self.args.dense_seq_output:
            positions, labels = masked_positions_from_labels(labels, self.max_pred)
        no_sync = self.forward_model.no_sync if isinstance(self.forward_model, DDP) and not sync else contextlib.nullcontext
        with no_sync(), utils.autocast_context(self.precision, self.env.device):
            scores, nsp_scores = self.forward_model(input_ids, segment_ids, input_mask, positions)
            loss, mlm, nsp = self.criterion(scores, nsp_scores, labels, nsp_labels)
            # The manual all-reduce path divides once at reduction time; DDP averages over ranks itself.
            scaled = loss if self.args.allreduce_post_accumulation else loss / self.accum
            self.scaler.scale(scaled).backward()
        return loss.detach(), mlm.detach(), nsp.detach()

    def allreduce_gradients(self) -> None:
        """The original's post-accumulation all-reduce: one flat buffer, mean over ranks and micro-steps."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        dtype = torch.float16 if self.args.allreduce_post_accumulation_fp16 else torch.float32
        flat = torch.cat([g.reshape(-1).to(dtype) for g in grads])
        flat.div_(self.env.world_size * self.accum)
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def optimizer_step(self) -> bool:
        """Scheduler then LAMB (the original's order). False when fp16 overflow skipped the update."""
        if self.args.allreduce_post_accumulation:
            self.allreduce_gradients()
        self.scheduler.step()  # sets the LR of the update about to happen from the count of successful ones
        before = self.optimizer.param_groups[0]["step"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        applied = self.optimizer.param_groups[0]["step"] != before
        if applied:
            self.state.global_step += 1
        else:
            self.state.skipped_steps += 1
            self.logger.log("PARAMETER", {"loss_scale": self.scaler.get_scale(), "skipped_steps": self.state.skipped_steps})
        return applied

    # ---- the loop ----------------------------------------------------------------------------

    def train(self, evaluator: Any | None = None) -> dict[str, float]:
        args, env = self.args, self.env
        self.model.train()
        steps_target = args.max_steps if args.steps_this_run < 0 else min(args.max_steps, self.state.global_step + args.steps_this_run)
        start_step = self.state.global_step
        global_batch = self.micro_batch * self.accum * env.world_size
        window: list[torch.Tensor] = []
        mlm_window: list[torch.Tensor] = []
        history: dict[str, float] = {}
        progress = make_progress(args, env, start_step, steps_target)
        train_start = self.train_start_time = time.time()  # also the origin of seconds_to_target
        log_start, log_samples = train_start, 0
        micro = 0
        batches = iter(self.stream)
        self.logger.log("PARAMETER", {"train_start": True, "batch_size_per_gpu": self.micro_batch,
                                      "learning_rate": args.learning_rate, "precision": self.precision})
        while self.state.global_step < steps_target and not self.stop_requested:
            losses = []
            for i in range(self.accum):
                losses.append(self.micro_step(next(batches), sync=(i == self.accum - 1)))
                micro += 1
            applied = self.optimizer_step()
            self.state.samples_seen += global_batch
            log_samples += global_batch
            step_loss = torch.stack([x[0] for x in losses]).mean()
            window.append(step_loss)
            mlm_window.append(torch.stack([x[1] for x in losses]).mean())
            if progress is not None:
                progress.update(1 if applied else 0)
            if applied and self.state.global_step % args.log_freq == 0:
                elapsed = time.time() - log_start
                history = self._log_step(window, mlm_window, step_loss, log_samples / max(elapsed, 1e-9))
                window, mlm_window, log_start, log_samples = [], [], time.time(), 0
            if evaluator is not None and evaluator.due(self.state.samples_seen, self.state.global_step) and evaluator.run(self):
                break
            if applied and args.num_steps_per_checkpoint > 0 and self.state.global_step % args.num_steps_per_checkpoint == 0:
                self.save_checkpoint()
            self.stop_requested = self._stop_agreed()
        raw_time = time.time() - train_start
        if progress is not None:
            progress.close()
        if window:
            history = self._log_step(window, mlm_window, window[-1], 0.0)
        if not args.skip_checkpoint and (not self.written or not self.written[-1].endswith(f"ckpt_{self.checkpoint_name_step()}.pt")):
            self.save_checkpoint()
        done = self.state.global_step - start_step
        return {
            "raw_train_time": raw_time,
            "training_sequences_per_second": (done + self.state.skipped_steps) * global_batch / max(raw_time, 1e-9),
            "final_loss": utils.all_reduce_mean(history.get("average_loss", float("nan")), env.device),
            "final_mlm_loss": history.get("mlm_loss", float("nan")),
            "global_step": self.state.global_step,
            "skipped_steps": self.state.skipped_steps,
            "stopped_by_signal": self.stop_requested,
        }

    def _log_step(self, window, mlm_window, step_loss, seq_per_s: float) -> dict[str, float]:
        average = torch.stack(window).mean().item()
        record = {
            "average_loss": average,
            "step_loss": float(step_loss),
            "mlm_loss": torch.stack(mlm_window).mean().item(),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "loss_scale": self.scaler.get_scale() if self.scaler.is_enabled() else 1.0,
            "seq_per_s": seq_per_s,
        }
        mfu = model_flops_utilization(self.config, self.args, self.env.device, seq_per_s / self.env.world_size,
                                      self.seq_len, self.max_pred)
        if mfu is not None:
            record["mfu"] = mfu
        epoch = self.stream.position.epoch
        self.logger.log((epoch, self.checkpoint_name_step()), record)
        self.tb_log(record)
        return record

    def tb_log(self, record: dict[str, float]) -> None:
        writer = getattr(self, "tb_writer", None)
        if writer is not None:
            for k, v in record.items():
                writer.add_scalar(f"train/{k}", v, self.checkpoint_name_step())

    def _stop_agreed(self) -> bool:
        """A signal seen by any rank stops every rank at the same step."""
        flag = float(self.stop_requested)
        if self.env.distributed:
            t = torch.tensor([flag], device=self.env.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = t.item()
        return bool(flag)


def make_progress(args: argparse.Namespace, env: utils.DistEnv, start: int, total: int):
    if args.disable_progress_bar or not env.is_main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="Iteration", unit="step", dynamic_ncols=True, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Throughput accounting
# --------------------------------------------------------------------------------------------

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def training_flops_per_sequence(config: BertConfig, seq_len: int, masked: int | None) -> float:
    """Forward + backward FLOPs (3× forward) of one sequence; MLM head on `masked` positions (None = all)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token_layer = 2 * (4 * h * h + 2 * h * i)
    attention = 2 * 2 * seq_len * seq_len * h
    head_positions = seq_len if masked is None else masked
    head = head_positions * 2 * (h * h + h * config.padded_vocab_size)
    forward = layers * (per_token_layer * seq_len + attention) + head + 2 * h * h
    return 3.0 * forward


def model_flops_utilization(config, args, device: torch.device, seq_per_s_per_rank: float, seq_len: int,
                            max_pred: int) -> float | None:
    if device.type != "cuda" or seq_per_s_per_rank <= 0:
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    if peak is None:
        return None
    masked = max_pred if args.dense_seq_output else None
    return training_flops_per_sequence(config, seq_len, masked) * seq_per_s_per_rank / peak


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def install_stop_handlers(trainer: Trainer) -> None:
    """SIGTERM / SIGUSR1 (SLURM preemption) → finish the current step, save, exit cleanly."""

    def handler(signum, _frame):
        trainer.stop_requested = True
        print(f"received signal {signum}: saving a checkpoint and stopping", file=sys.stderr, flush=True)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> dict[str, float]:
    e2e_start = time.time()
    args = parse_args(argv)
    env = utils.init_distributed(args.device)
    try:
        validate_args(args, env)
        os.makedirs(args.output_dir, exist_ok=True)
        logger = utils.Logger(args.json_summary, enabled=env.is_main)
        logger.log("PARAMETER", {"Config": [str(args)], "SEED": args.seed})
        trainer = Trainer(args, env, logger)
        install_stop_handlers(trainer)
        if args.tensorboard_dir and env.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError("--tensorboard_dir needs the tensorboard package (pip install tensorboard)") from None
            trainer.tb_writer = SummaryWriter(args.tensorboard_dir)
        evaluator = build_evaluator(args, trainer)
        summary = trainer.train(evaluator)
        trainer.stream.close()
        summary["e2e_train_time"] = time.time() - e2e_start
        logger.log((), {k: summary[k] for k in ("e2e_train_time", "training_sequences_per_second", "final_loss", "raw_train_time")})
        if env.is_main:
            finish_outputs(args, trainer, summary)
        logger.close()
        return summary
    finally:
        utils.cleanup_distributed()


def build_evaluator(args: argparse.Namespace, trainer: Trainer):
    if not args.eval_dir:
        return None
    from run_pretraining_inference import PeriodicEvaluator

    return PeriodicEvaluator.from_args(args, trainer)


def finish_outputs(args: argparse.Namespace, trainer: Trainer, summary: dict[str, Any]) -> None:
    png = args.loss_curve or os.path.splitext(args.json_summary)[0] + "_loss.png"
    try:
        utils.plot_loss_curve(args.json_summary, png)
        summary["loss_curve"] = png
    except Exception as exc:  # noqa: BLE001 - a plot must never fail a finished training run
        print(f"warning: could not draw the loss curve: {exc}", file=sys.stderr)
    latest = trainer.written[-1] if trainer.written else "none"
    print(f"final_loss {summary['final_loss']:.4f} after {summary['global_step']} steps; "
          f"{summary['training_sequences_per_second']:.1f} sequences/s; "
          f"checkpoint {latest}; loss curve {summary.get('loss_curve', 'none')}", flush=True)
    if math.isnan(summary["final_loss"]):
        print("warning: final loss is NaN", file=sys.stderr)


if __name__ == "__main__":
    utils.run_main(main)
