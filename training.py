"""Training plumbing shared by the pretraining Trainer (`run_pretraining.py`) and the fine-tuning loop
(`finetuning.py`): the one optimizer step (`Stepper`), the fp16 grad scaler, DDP wrapping and its
no-sync context, the progress bar, "main process first", where feature caches go, stop signals, the
output folder's lock.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distributed import DistEnv, barrier
from input_checks import InputError
from precision import autocast_context

COMPILE_CHOICES = ("auto", "on", "off")
COMPATIBILITY_GROUP = "accepted for compatibility with the original (no effect)"  # argparse group title
LOSS_SCALE_HELP = ("fp16 loss scaling: 0 = dynamic (starts high, halves on overflow, doubles after 2000 clean "
                   "steps); a positive value = this static scale, never changed (overflowing steps are skipped)")


# --------------------------------------------------------------------------------------------
# Loss scaling
# --------------------------------------------------------------------------------------------


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """--compile / --no_compile (run_pretraining.py)."""
    parser.add_argument("--compile", nargs="?", const="on", default="auto", choices=COMPILE_CHOICES,
                        help="torch.compile the model and the loss as one region: auto = on CUDA only "
                             "(a plain --compile = on)")
    parser.add_argument("--no_compile", dest="compile", action="store_const", const="off", help="same as --compile off")


def compile_wanted(choice: str, device: torch.device) -> bool:
    """--compile: auto = on CUDA only (on the CPU compiling costs more than it saves on short runs)."""
    return choice == "on" or (choice == "auto" and device.type == "cuda")


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


# --------------------------------------------------------------------------------------------
# Gradient all-reduce after accumulation (the original's --allreduce_post_accumulation)
# --------------------------------------------------------------------------------------------


def allreduce_post_accumulation(grads: list[torch.Tensor], divisor: int, fp16: bool) -> None:
    """One flat all-reduce of `grads`, leaving their mean over ranks × micro-steps in place.

    The gradients hold loss-scaled sums over the micro-steps; they are divided by `divisor` in their
    own (fp32) precision before the fp16 cast, as the original's scaling copy does. Casting first
    overflowed: a scaled sum over 64 micro-steps exceeds fp16's 65504 long before the mean does.
    """
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat.div_(divisor)
    wire = flat.to(torch.float16) if fp16 else flat
    dist.all_reduce(wire)
    if wire is not flat:
        flat.copy_(wire)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


# --------------------------------------------------------------------------------------------
# One optimizer step (pretraining and fine-tuning)
# --------------------------------------------------------------------------------------------

LossFn = Callable[[nn.Module, Any], Any]


class Stepper:
    """One optimizer update from k micro-batches: the same for pretraining and fine-tuning.

    `accumulate` (each micro-batch): forward under autocast, then backward of `weight` × the loss
    through the GradScaler; DDP's gradient all-reduce is skipped (`no_sync`) unless `sync` is set,
    i.e. on every micro-batch but the update's last, so gradients cross the network once per update.
    `loss_fn(model, batch)` returns the loss, or a tuple whose first element is the loss to
    backpropagate (the rest is only returned, detached).

    `update` (once k micro-batches are in), in this order:

    1. `allreduce`, when given (pretraining's --allreduce_post_accumulation: one flat all-reduce of
       the accumulated gradients instead of DDP's);
    2. unscale (fp16), so that 3. clipping the global gradient norm (`clip_grad_norm`) sees true gradients;
    4. the scheduler, *before* the optimizer as in the original: it sets the LR of the update about to
       happen from the count of updates made so far;
    5. the optimizer, through the scaler (which skips it when fp16 gradients overflowed), then the
       scaler's update of its scale;
    6. zero_grad.

    `update` returns whether the update was applied as far as the host knows without waiting for the
    device: False when the scaler skipped it (fp16 overflow). LAMB skips a step whose gradient norm is
    not finite on the device; the host learns of it at the next `optimizer.settle()` (pretraining calls
    it on log and checkpoint steps), so that no step waits for the device.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, precision: str,
                 device: torch.device, clip_grad_norm: float | None = None, loss_scale: float = 0.0, *,
                 scaler: torch.amp.GradScaler | None = None, allreduce: Callable[[], None] | None = None):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.precision = precision
        self.device = device
        self.clip_grad_norm = clip_grad_norm
        # disabled (a pass-through) unless fp16
        self.scaler = scaler if scaler is not None else make_grad_scaler(precision, device, loss_scale)
        self.allreduce = allreduce
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._stepped = False
        optimizer.register_step_post_hook(self._mark_stepped)

    def _mark_stepped(self, *_: Any) -> None:
        self._stepped = True

    def accumulate(self, batch: Any, loss_fn: LossFn, weight: float = 1.0, sync: bool = True) -> Any:
        with gradient_sync(self.model, sync):
            with autocast_context(self.precision, self.device):
                out = loss_fn(self.model, batch)
            loss = out[0] if isinstance(out, tuple) else out
            self.scaler.scale(loss.float() * weight).backward()
        return tuple(t.detach() for t in out) if isinstance(out, tuple) else out.detach()

    def update(self) -> bool:
        if self.allreduce is not None:
            self.allreduce()
        self.scaler.unscale_(self.optimizer)
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
        if self.scheduler is not None:
            self.scheduler.step()
        # LAMB counts its updates per group (a skip on the device is subtracted at its next settle());
        # other optimizers apply every step they are called for.
        count = self.optimizer.param_groups[0].get("step")
        self._stepped = False
        self.scaler.step(self.optimizer)  # calls optimizer.step() unless fp16 gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if count is not None:
            return self.optimizer.param_groups[0]["step"] != count
        return self._stepped


# --------------------------------------------------------------------------------------------
# Compilation and host-to-device batches
# --------------------------------------------------------------------------------------------

COMPILE_BACKEND_ENV = "BERT_COMPILE_BACKEND"


class CompileStats:
    """Counts the graphs a torch.compile backend is handed and the seconds it spends on them: a second
    graph for one region is a recompile (or a graph break), and each costs minutes with inductor on
    BERT-large. `wrap(backend)` returns the counting backend."""

    def __init__(self) -> None:
        self.graphs = 0
        self.seconds = 0.0

    def wrap(self, backend: Any) -> Any:
        inner = torch._dynamo.lookup_backend(backend) if isinstance(backend, str) else backend

        def counting_backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
            start = time.perf_counter()
            try:
                return inner(graph, example_inputs)
            finally:
                self.graphs += 1
                self.seconds += time.perf_counter() - start

        return counting_backend

    def as_dict(self) -> dict[str, Any]:
        return {"graphs_compiled": self.graphs, "recompiles": max(0, self.graphs - 1),
                "backend_compile_s": round(self.seconds, 2)}


def compile_module(module: nn.Module, stats: CompileStats | None = None) -> nn.Module:
    """torch.compile with inductor, or the dynamo backend named by BERT_COMPILE_BACKEND (e.g. "eager"
    or "aot_eager": graph capture without code generation, for tests and dry runs on slow machines);
    `stats` counts the graphs compiled and the backend's seconds."""
    backend: Any = os.environ.get(COMPILE_BACKEND_ENV, "inductor")
    return torch.compile(module, backend=stats.wrap(backend) if stats is not None else backend)


class DeviceBatches:
    """Micro-batches prepared on the host and put on the device without the host waiting for it.

    `step(k)` yields the k micro-batches of one optimizer step. Each raw batch from `source` goes
    through `prepare` on the host (a dict of integer tensors and plain values); its tensors are
    gathered into one pinned buffer, copied with non_blocking and split again on the device (views
    with the original shapes and dtypes), so the host never blocks on the copy. Micro-batch i + 1 is
    prepared while the device runs micro-batch i (its kernels are queued when the generator resumes);
    nothing past the step's k-th micro-batch is read, so the source's position at a checkpoint is exact.
    """

    def __init__(self, source: Iterable[Any], prepare: Any, device: torch.device):
        self.source = iter(source)
        self.prepare, self.device = prepare, device

    def step(self, count: int) -> Iterator[dict[str, Any]]:
        for _ in range(count):
            host = self.prepare(next(self.source))
            yield host if self.device.type == "cpu" else self.to_device(host)

    def to_device(self, host: dict[str, Any]) -> dict[str, Any]:
        names = [k for k, v in host.items() if isinstance(v, torch.Tensor)]
        parts = [host[k] for k in names]
        sizes = [p.numel() for p in parts]
        buffer = torch.empty(sum(sizes), dtype=torch.int64, pin_memory=self.device.type == "cuda")
        torch.cat([p.reshape(-1).to(torch.int64) for p in parts], out=buffer)
        flat = buffer.to(self.device, non_blocking=True).split(sizes)
        return {**host, **{k: v.view(p.shape).to(p.dtype) for k, v, p in zip(names, flat, parts, strict=True)}}


class PretrainingLoss(torch.nn.Module):
    """Model and loss as one module, so that torch.compile sees them as one region."""

    def __init__(self, model: torch.nn.Module, criterion: torch.nn.Module):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, input_mask: torch.Tensor | None,
                positions: torch.Tensor | None, labels: torch.Tensor, nsp_labels: torch.Tensor,
                packed: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if packed is None:
            scores, nsp_scores = self.model(input_ids, segment_ids, input_mask, positions)
        else:
            scores, nsp_scores = self.model(input_ids, segment_ids, None, positions, packed=packed)
        return self.criterion(scores, nsp_scores, labels, nsp_labels)


class TrainingDiverged(InputError):
    """Every recent step had a non-finite loss: going on would only skip steps (or save NaN weights)."""


# fp16 with loss scaling legitimately skips a few overflowing steps while the dynamic scale comes down
# (from 2^20 to 1 takes 20); 100 in a row means the weights or the data are broken. fp32, tf32 and
# bf16 have no scale to lower: a non-finite gradient repeats, so stop sooner.
SKIP_LIMITS = {"fp16": 100}
UNSCALED_SKIP_LIMIT = 10


def skip_limit(precision: str) -> int:
    """Optimizer steps with non-finite gradients in a row after which training stops with an error."""
    return SKIP_LIMITS.get(precision, UNSCALED_SKIP_LIMIT)


class DivergenceGuard:
    """Counts optimizer steps in a row that were skipped (non-finite gradients) or whose loss was not finite
    (e.g. shards without a masked-LM label: the gradients stay finite, the loss is NaN throughout); `update`
    is True once the limit is reached."""

    def __init__(self, precision: str):
        self.limit, self.in_a_row = skip_limit(precision), 0

    def update(self, applied: bool, loss_finite: bool = True) -> bool:
        self.in_a_row = 0 if applied and loss_finite else self.in_a_row + 1
        return self.in_a_row >= self.limit


def tensorboard_writer(directory: str | None, is_main: bool) -> Any:
    """A SummaryWriter on the main process when a directory is given, else None."""
    if not directory or not is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("--tensorboard_dir needs the tensorboard package (pip install tensorboard)") from None
    return SummaryWriter(directory)


def install_stop_handlers(on_signal: Callable[[int], None]) -> None:
    """SIGTERM and SIGUSR1 (SLURM's warning before preemption or the time limit) call `on_signal(signum)`."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, lambda signum, _frame: on_signal(signum))


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank when `flag` is true on any (a stop one rank saw stops all at the same step)."""
    if not env.distributed:
        return flag
    t = torch.tensor([float(flag)], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# In the output folder while a run writes there; it holds the pid of that run.
LOCK_NAME = ".lock"
_held_locks: dict[str, IO[str]] = {}  # resolved folder -> its open lock file, for this process


def lock_output_dir(folder: str | os.PathLike) -> IO[str]:
    """Hold an exclusive lock on `folder` until `release_output_locks` or the end of the process, or
    InputError naming the run that holds it. Two runs on one folder deleted each other's checkpoint temp
    files and interleaved their logs. flock goes with the process, so a SIGKILLed run leaves no stale
    lock (only the file, which the next run takes over). A process may lock the same folder again."""
    key = os.path.realpath(folder)
    if key in _held_locks:
        return _held_locks[key]
    path = os.path.join(key, LOCK_NAME)
    while True:
        lock = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until released
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise InputError(f"{folder} is in use by pid {holder} (another run writes there): wait for it to end "
                             "or use another folder") from None
        if _same_file(lock, path):
            break
        lock.close()  # the run that held it removed the file as we opened it: lock the new one
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    if not _held_locks:
        atexit.register(release_output_locks)
    _held_locks[key] = lock
    return lock


def _same_file(lock: IO[str], path: str) -> bool:
    try:
        return os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def release_output_locks() -> None:
    """Remove and unlock this process's output-folder locks (at the end of a run; also at exit)."""
    while _held_locks:
        key, lock = _held_locks.popitem()
        with contextlib.suppress(OSError):
            os.remove(os.path.join(key, LOCK_NAME))  # while still locked: no other run holds this file
        lock.close()
