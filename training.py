"""Training plumbing shared by the pretraining Trainer (`run_pretraining.py`) and the fine-tuning loop
(`finetuning.py`): the fp16 grad scaler, DDP wrapping and its no-sync context, the progress bar,
"main process first", and where feature caches go.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils import DistEnv, barrier

COMPATIBILITY_GROUP = "accepted for compatibility with the original (no effect)"  # argparse group title
LOSS_SCALE_HELP = ("fp16 loss scaling: 0 = dynamic (starts high, halves on overflow, doubles after 2000 clean "
                   "steps); a positive value = this static scale, never changed (overflowing steps are skipped)")


# --------------------------------------------------------------------------------------------
# Loss scaling
# --------------------------------------------------------------------------------------------


def make_grad_scaler(precision: str, device: torch.device, loss_scale: float = 0.0,
                     init_scale: float = 2.0**16) -> torch.amp.GradScaler:
    """The GradScaler of `--loss_scale`: enabled for fp16 only (a disabled scaler passes everything through).

    0 = dynamic scaling starting at `init_scale`; > 0 = a static scale that never grows or shrinks
    (a step whose gradients overflow is still skipped).
    """
    enabled = precision == "fp16"
    if loss_scale > 0:
        scaler = torch.amp.GradScaler(device.type, init_scale=loss_scale, enabled=enabled)
        # The constructor insists on factors that move the scale; a static scale is factors of 1.
        scaler.set_growth_factor(1.0)
        scaler.set_backoff_factor(1.0)
        return scaler
    return torch.amp.GradScaler(device.type, init_scale=init_scale, growth_interval=2000, enabled=enabled)


# --------------------------------------------------------------------------------------------
# Data parallelism
# --------------------------------------------------------------------------------------------


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """`model` in DistributedDataParallel when several processes train; the model itself otherwise."""
    if not env.distributed:
        return model
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def broadcast_parameters(model: nn.Module) -> None:
    """Rank 0's weights on every rank (for the manual all-reduce path, which has no DDP wrapper to do it)."""
    for p in model.parameters():
        dist.broadcast(p.data, 0)


def ddp_module(model: nn.Module) -> DistributedDataParallel | None:
    """The DistributedDataParallel inside `model`, also when `torch.compile` wrapped it; None if there is none."""
    while not isinstance(model, DistributedDataParallel):
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule keeps the original here
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return model


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce for this backward unless `sync` (the last micro-batch of an update).

    Reaches the DDP module through a `torch.compile` wrapper: otherwise every micro-batch would be reduced.
    """
    ddp = ddp_module(model)
    return ddp.no_sync() if ddp is not None and not sync else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Process coordination and progress
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def main_process_first(is_main: bool, enabled: bool = True) -> Iterator[None]:
    """Rank 0 runs the body first (e.g. builds and caches features); the other ranks then run it (read the cache).

    Every rank must enter it (`enabled` False: no waiting, for code that only some ranks run).
    """
    if enabled and not is_main:
        barrier()
    yield
    if enabled and is_main:
        barrier()


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool, desc: str, total: int | None = None,
                 initial: int = 0, unit: str = "it") -> Any:
    """A tqdm bar on stderr; when disabled, the iterable itself (None without one)."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Feature caches (fine-tuning)
# --------------------------------------------------------------------------------------------


def feature_cache_dir(cache_dir: str | None, default: str | os.PathLike, skip_cache: bool) -> Path | None:
    """`cache_dir` (created), else `default`; None (no cache) when that folder is not writable."""
    folder = Path(cache_dir) if cache_dir else Path(default)
    if cache_dir:
        folder.mkdir(parents=True, exist_ok=True)
    if not skip_cache and not os.access(folder, os.W_OK):
        print(f"warning: {folder} is not writable; features are not cached (use --cache_dir)", flush=True)
        return None
    return folder
