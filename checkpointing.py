"""Checkpoints of a pretraining run: finding, saving, pruning and restoring `ckpt_<step>.pt`.

A `Checkpointer` is built with the objects whose state a checkpoint holds (model, optimizer,
scheduler, grad scaler) and owns the run's counters (`RunState`). The loop calls three things:

* `restore(...)` once before training: resume from the newest readable checkpoint in the output
  folder (or `resume_step`'s), start phase 2 from phase 1's last checkpoint, or take the weights
  (and LAMB moments) of an init checkpoint. It returns this rank's data position as stored — plain
  data (`{"epoch", "slot", "offset"}`) — or None for a fresh start; the data stream is the caller's.
* `save(position, epoch_files)` at checkpoint steps (on every rank: positions and RNG states are
  gathered; rank 0 writes) and `save_unless_current()` at the end.
* `name_step()`: the step a checkpoint is named after (phase-2 steps are offset by phase 1's end).

File layout (the original's keys plus ours): `model`, `optimizer`, `master params`, `files` (slot
followed by the epoch's shard order), `epoch`, `scaler`, `scheduler`, `rng` and `data_position`
(one per rank), `run_state`, `phase`, `config`, `args`. Written to a temp file and renamed; read
with `weights_only=True`.

Failures (docs/reliability.md): a damaged checkpoint (empty, cut short, foreign) is skipped on
resume with one warning line naming it; a save refuses non-finite weights and reports a failed write
(e.g. "No space left on device") as one line on every rank; each save first removes the temp files
of saves killed half-way and then keeps the `keep` newest `ckpt_<step>.pt` of the folder; phase 2
starts only from a phase-1 checkpoint that reached its last step.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

import atomic_io
import distributed
import run_log
from checkpoint_io import CheckpointError, first_non_finite, load_checkpoint, load_checkpoint_file
from input_checks import InputError

# Flags that set the shape of the LR schedule; a resume may change its length and peak, not these.
SCHEDULE_SHAPE_FLAGS = ("lr_scheduler", "warmup_proportion")
CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
# What atomic_io.atomic_path leaves behind when a save is killed half-way: `.tmp-ckpt_<step>.pt.<random>`.
TMP_PATTERN = re.compile(r"^\.tmp-ckpt_\d+\.pt\.")


def plain_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as plain values: what a checkpoint stores under 'args' (loading with weights_only=True
    accepts plain types only)."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}


class CheckpointWriteError(InputError):
    """A checkpoint that could not be written (full disk, non-finite weights): one line, nothing half-written."""


@dataclass
class RunState:
    global_step: int = 0  # successful optimizer updates in this phase
    skipped_steps: int = 0
    samples_seen: int = 0  # global training samples in this phase (for evaluation cadence)
    phase: int = 1


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def checkpoint_steps(output_dir: str) -> list[int]:
    """Steps of the `ckpt_<step>.pt` files in `output_dir`, newest first."""
    steps = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        m = CKPT_PATTERN.match(name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps, reverse=True)


def read_checkpoint(path: str) -> dict[str, Any] | None:
    """The checkpoint, or None when the file is damaged (e.g. cut short by a crash)."""
    try:
        ckpt = load_checkpoint_file(path)  # the one checked reader: empty, cut-short, foreign → CheckpointError
    except CheckpointError as exc:
        print(f"warning: skipping unreadable checkpoint {exc}", file=sys.stderr)
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


# --------------------------------------------------------------------------------------------
# Per-rank state
# --------------------------------------------------------------------------------------------


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
    if distributed.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * distributed.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` (plain data) on every rank."""
    if distributed.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------------------------
# The checkpointer
# --------------------------------------------------------------------------------------------


class Checkpointer:
    """Saves and restores one pretraining run in `output_dir` (see the module docstring)."""

    def __init__(self, output_dir: str, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler, env: distributed.DistEnv, learning_rate: float,
                 phase2: bool = False, phase1_end_step: int = 0, keep: int = 3, enabled: bool = True,
                 metadata: dict[str, Any] | None = None, logger: run_log.Logger | None = None,
                 allow_missing_optimizer_state: bool = False):
        self.output_dir, self.env, self.learning_rate = output_dir, env, learning_rate
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.phase2, self.name_offset = phase2, phase1_end_step if phase2 else 0
        self.keep, self.enabled = keep, enabled
        self.metadata = metadata or {}  # stored as is, e.g. {"config": ..., "args": ...}
        self.logger = logger
        self.state = RunState(phase=2 if phase2 else 1)
        self.written: list[str] = []  # files this process wrote (rank 0), oldest first: pruned to `keep`
        self.allow_missing_optimizer_state = allow_missing_optimizer_state
        self.resumed_files: list[str] = []  # the shard order stored in the checkpoint resumed from (its 'files')
        self._last_saved_step = -1  # the same on every rank, so that every rank joins the same saves

    def name_step(self) -> int:
        return self.state.global_step + self.name_offset

    @property
    def latest(self) -> str | None:
        return self.written[-1] if self.written else None

    # ---- restore ------------------------------------------------------------------------------

    def restore(self, *, resume: bool, resume_step: int = -1, init_checkpoint: str | None = None
                ) -> dict[str, int] | None:
        """Resume, start phase 2 from phase 1, or initialise from `init_checkpoint`; this rank's data position.

        Checkpoints already in output_dir win over `init_checkpoint`, so a preempted job that is
        resubmitted with the same command continues where it stopped.
        """
        has_checkpoints = bool(checkpoint_steps(self.output_dir))
        if has_checkpoints and not resume:
            raise InputError(f"{self.output_dir} already holds checkpoints; pass --resume_from_checkpoint "
                             "or use another folder")
        if resume and has_checkpoints:
            found = find_resume_checkpoint(self.output_dir, resume_step)
            if found is None:
                raise InputError(f"{self.output_dir}: no readable checkpoint to resume from")
            step, ckpt = found
            return self._resume_from(ckpt, os.path.join(self.output_dir, f"ckpt_{step}.pt"))
        if init_checkpoint:
            self._init_from(init_checkpoint)
        elif self.phase2:  # phase 2 from random weights would waste the whole run
            raise InputError(f"--phase2: nothing to start from: no checkpoint in {self.output_dir} "
                             f"{'' if resume else '(and no --resume_from_checkpoint) '}and no --init_checkpoint; "
                             "run phase 1 there first, or pass --init_checkpoint")
        return None

    def _resume_from(self, ckpt: dict[str, Any], path: str) -> dict[str, int] | None:
        check_resume_entries(ckpt, path)
        load_checkpoint(self.model, path, strict=True, state_dict=ckpt["model"])
        starting_phase2 = self.phase2 and int(ckpt.get("phase", 1)) == 1
        if starting_phase2:
            require_finished_phase1(ckpt, path)
        if "optimizer" in ckpt:
            self._load_optimizer(ckpt["optimizer"], path, reset_schedule=starting_phase2)
        else:
            self._accept_missing_optimizer_state(path)
        if starting_phase2:
            print(f"phase 2: starting from phase-1 checkpoint {path} (LR schedule restarts, LAMB moments carried over)")
            return None
        if ckpt.get("scaler"):
            with entry_error(path, "scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        self.state = RunState(**{**asdict(self.state), **ckpt.get("run_state", {}), "phase": self.state.phase})
        if ckpt.get("scheduler"):
            self._load_schedule(ckpt["scheduler"], ckpt.get("args") or {}, path)
        self.resumed_files = [str(f) for f in ckpt.get("files", [])[1:]]
        self._last_saved_step = self.name_step()
        rank = self.env.rank
        rngs, positions = ckpt.get("rng", []), ckpt.get("data_position", [])
        if rank < len(rngs):
            with entry_error(path, "rng"):
                set_rng_state(rngs[rank], self.env.device)
        print(f"resumed from {path} at step {self.state.global_step}")
        if rank < len(positions) and len(positions) == self.env.world_size:
            return dict(positions[rank])
        print("warning: world size changed since the checkpoint; data order restarts at a fresh epoch", file=sys.stderr)
        return {"epoch": int(ckpt.get("epoch", 0)) + 1}

    def _accept_missing_optimizer_state(self, path: str) -> None:
        """A resume without LAMB's moments is not the run it continues: refused unless the flag says so."""
        if not self.allow_missing_optimizer_state:
            raise InputError(f"{path}: holds no optimizer state; resuming would restart LAMB's moments from zero "
                             "(pass --allow_missing_optimizer_state to accept that)")
        print(f"warning: {path} holds no optimizer state: LAMB's moments start from zero "
              "(--allow_missing_optimizer_state)", file=sys.stderr, flush=True)

    def last_sane_checkpoint(self) -> str:
        """Where to go back to after a divergence, for the error message (see `last_sane_checkpoint`)."""
        return last_sane_checkpoint(self.output_dir) if self.env.is_main else "see rank 0's message"

    def _init_from(self, path: str) -> None:
        report = load_checkpoint(self.model, path, strict=True)
        print(f"init_checkpoint: {report.summary()}")
        is_torch_file = os.path.isfile(path) and not path.endswith(".safetensors")
        raw = load_checkpoint_file(path) if is_torch_file else {}
        if isinstance(raw, dict) and isinstance(raw.get("optimizer"), dict):
            self._load_optimizer(raw["optimizer"], path, reset_schedule=True)

    def _load_optimizer(self, sd: dict[str, Any], path: str, reset_schedule: bool) -> None:
        """Load LAMB state, checked against the model first; for a new phase keep the moments but restart
        the step counter and LR."""
        names = {id(param): name for name, param in self.model.named_parameters()}
        problem = optimizer_state_mismatch(self.optimizer, sd, names)
        if problem:
            raise InputError(f"{path}: optimizer state does not fit this model: {problem}")
        if reset_schedule:
            for group in sd["param_groups"]:
                group["step"] = 0
                group["lr"] = self.learning_rate
                group.pop("initial_lr", None)
        try:
            self.optimizer.load_state_dict(sd)
        except (ValueError, KeyError) as exc:
            raise InputError(f"{path}: optimizer state does not fit this model: {exc}") from None
        if reset_schedule:
            for group in self.optimizer.param_groups:
                group["initial_lr"] = self.learning_rate
            self.scheduler.base_lrs = [self.learning_rate for _ in self.optimizer.param_groups]

    def _load_schedule(self, sd: dict[str, Any], stored_args: dict[str, Any], path: str) -> None:
        """Continue the stored LR schedule; a new --max_steps or --learning_rate rebuilds it around the stored
        step (loading the stored state alone kept the old horizon: a run extended past it trained at LR 0).
        A new schedule shape (--lr_scheduler, --warmup_proportion) would jump the LR mid-run: refused."""
        new_args = self.metadata.get("args") or {}
        for flag in SCHEDULE_SHAPE_FLAGS:
            old, new = stored_args.get(flag), new_args.get(flag)
            if old is not None and new is not None and old != new:
                raise InputError(f"{path} was trained with --{flag} {old}, this run asks for {new}: changing the "
                                 f"shape of the LR schedule mid-run is not supported; resume with --{flag} {old}, "
                                 "or start a new run from it with --init_checkpoint")
        wanted_total, wanted_lrs = self.scheduler.total_steps, list(self.scheduler.base_lrs)
        with entry_error(path, "scheduler"):
            self.scheduler.load_state_dict(sd)
        changes = []
        if self.scheduler.total_steps != wanted_total:
            changes.append(f"--max_steps {self.scheduler.total_steps} -> {wanted_total}")
        if list(self.scheduler.base_lrs) != wanted_lrs:
            changes.append(f"--learning_rate {self.scheduler.base_lrs[0]} -> {wanted_lrs[0]}")
        if not changes or self.state.global_step >= wanted_total:
            return  # unchanged, or already finished: nothing is trained with it
        self.scheduler.total_steps, self.scheduler.base_lrs = wanted_total, wanted_lrs
        for group, lr in zip(self.optimizer.param_groups, wanted_lrs, strict=True):
            group["initial_lr"] = lr
        print(f"resume: {', '.join(changes)}: LR schedule rebuilt for {wanted_total} steps, continuing at step "
              f"{self.state.global_step}", flush=True)

    # ---- save ---------------------------------------------------------------------------------

    def save(self, position: dict[str, int], epoch_files: list[str]) -> None:
        """Write `ckpt_<name_step>.pt` (call on every rank). `position` is this rank's data position;
        `epoch_files` the shard order of its epoch (rank 0's goes into the original's `files` entry)."""
        if not self.enabled:
            return
        step = self.name_step()
        # Every rank holds the same weights, so every rank reaches the same verdict (no rank left waiting).
        self._refuse_non_finite_weights(step)
        positions = gather_plain(dict(position))
        rngs = gather_plain(rng_state(self.env.device))
        self._last_saved_step = step
        failure = self._write(step, positions, rngs, epoch_files) if self.env.is_main else None
        failure = broadcast_from_main(failure)  # every rank stops on a failed write, none waits in a collective
        if failure is not None:
            raise CheckpointWriteError(failure)

    def _write(self, step: int, positions: list[dict[str, int]], rngs: list[Any], epoch_files: list[str]
               ) -> str | None:
        """Rank 0: write the checkpoint and prune; the one-line reason when the file could not be written."""
        path = os.path.join(self.output_dir, f"ckpt_{step}.pt")
        ckpt = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "master params": [p.detach() for p in self.model.parameters()],
            "files": [positions[0]["slot"]] + list(epoch_files),
            "epoch": positions[0]["epoch"],
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs,
            "data_position": positions,
            "run_state": asdict(self.state),
            "phase": self.state.phase,
            **self.metadata,
        }
        if self.logger is not None:
            self.logger.log("PARAMETER", {"checkpoint_step": step})
        remove_killed_saves(self.output_dir)
        try:
            atomic_io.atomic_torch_save(ckpt, path)
        except OSError as exc:  # e.g. a full disk; atomic_torch_save has removed its temp file
            newest = self.written[-1] if self.written else "none from this run"
            return f"cannot write checkpoint {path}: {exc.strerror} (newest complete checkpoint: {newest})"
        self.written.append(path)
        prune_checkpoints(self.output_dir, self.keep, step)
        return None

    def save_unless_current(self, position: dict[str, int], epoch_files: list[str]) -> None:
        """Save at the end of a run unless this step's checkpoint exists already (same answer on every rank)."""
        if self._last_saved_step != self.name_step():
            self.save(position, epoch_files)

    def _refuse_non_finite_weights(self, step: int) -> None:
        """A checkpoint of NaN/inf weights would replace a good one (and be pruned to); stop instead."""
        bad = first_non_finite_parameter(self.model)
        if bad is not None:
            newest = self.written[-1] if self.written else "none from this run"
            raise CheckpointWriteError(f"weights are not finite at step {step} ({bad}); no checkpoint written "
                                       f"(newest complete checkpoint: {newest})")


def first_non_finite_parameter(model: torch.nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or inf, or None (one reduction per tensor)."""
    return first_non_finite(model.named_parameters())


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_resume_entries(ckpt: dict[str, Any], path: str) -> None:
    """InputError naming the first malformed entry a resume reads besides the weights: counters that are not
    non-negative whole numbers (a negative global_step named files that pruning never removed), RNG states
    that are not byte tensors, data positions that are not plain counts, scheduler or scaler state that is
    not a dict."""
    state = ckpt.get("run_state", {})
    fields = set(RunState.__dataclass_fields__)
    if not isinstance(state, dict) or set(state) - fields or not all(_is_count(v) for v in state.values()):
        raise InputError(f"{path}: entry 'run_state' must map {', '.join(sorted(fields))} to whole numbers >= 0, "
                         f"got {state!r:.200}")
    if not _is_count(ckpt.get("epoch", 0)):
        raise InputError(f"{path}: entry 'epoch' must be a whole number >= 0, got {ckpt.get('epoch')!r:.100}")
    positions = ckpt.get("data_position", [])
    if not isinstance(positions, list) or not all(
            isinstance(p, dict) and all(isinstance(k, str) and _is_count(v) for k, v in p.items()) for p in positions):
        raise InputError(f"{path}: entry 'data_position' must be a list of {{name: whole number >= 0}}, "
                         f"got {positions!r:.200}")
    rngs = ckpt.get("rng", [])
    if not isinstance(rngs, list) or not all(
            isinstance(r, dict) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in r.values())
            and isinstance(r.get("cpu"), torch.Tensor) for r in rngs):
        raise InputError(f"{path}: entry 'rng' must be a list of {{'cpu': byte tensor, ...}} (one per rank)")
    for key in ("scheduler", "scaler"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise InputError(f"{path}: entry '{key}' must be a dict, got {type(ckpt[key]).__name__}")


@contextlib.contextmanager
def entry_error(path: str, entry: str):
    """A state a checkpoint entry cannot be restored into, as one line naming the file and the entry."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: entry '{entry}' cannot be restored: {exc}") from None


# Weights above this in absolute value are taken for a diverged run's: orders of magnitude above what BERT's
# initialisation (std 0.02) and LAMB's trust-ratio-bounded updates lead to. Such a checkpoint is not recommended.
SANE_WEIGHT_LIMIT = 1e4


def last_sane_checkpoint(output_dir: str) -> str:
    """The newest `ckpt_<step>.pt` of `output_dir` whose weights are all finite and below SANE_WEIGHT_LIMIT, with
    the reason each newer one was passed over (their weights had already diverged); "none" when there is none."""
    passed_over = []
    for step in checkpoint_steps(output_dir):
        path = os.path.join(output_dir, f"ckpt_{step}.pt")
        try:
            weights = load_checkpoint_file(path).get("model", {})
        except (CheckpointError, AttributeError):
            continue
        tensors = [(k, v) for k, v in weights.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        bad = first_non_finite(tensors)
        largest = max((float(v.abs().max()) for _, v in tensors if v.numel()), default=0.0) if bad is None else None
        if bad is None and largest <= SANE_WEIGHT_LIMIT:
            return path + (f" (newer ones have diverged weights: {'; '.join(passed_over)})" if passed_over else "")
        passed_over.append(f"ckpt_{step}.pt {'holds NaN/inf in ' + bad if bad else f'has weights up to {largest:.3g}'}")
    return "none" + (f" ({'; '.join(passed_over)})" if passed_over else "")


def optimizer_state_mismatch(optimizer: torch.optim.Optimizer, state_dict: Any,
                             names: dict[int, str] | None = None) -> str | None:
    """The first entry of a saved optimizer state that does not fit `optimizer`'s parameters, or None.

    torch's loader checks only the group sizes and pairs saved moments with parameters by position, so
    two swapped moments of different shapes reached the fused kernel, which wrote out of bounds (a
    segfault). Checked here: the layout, the number of groups and of parameters per group, and that every
    tensor saved for a parameter is floating point with the parameter's shape (0-d step counters aside)
    and that no moment is missing. `names` maps id(parameter) to its name for the message.
    """
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict) \
            or not isinstance(state_dict.get("param_groups"), list):
        return "not an optimizer state (needs 'state' and 'param_groups')"
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        return f"{len(saved_groups)} parameter groups, the model has {len(optimizer.param_groups)}"
    moment_keys = getattr(optimizer, "_fp32_state_keys", ())
    for g, (saved, group) in enumerate(zip(saved_groups, optimizer.param_groups, strict=True)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
            return f"parameter group {g} has no 'params' list"
        if len(saved["params"]) != len(group["params"]):
            return f"parameter group {g} holds {len(saved['params'])} parameters, the model's {len(group['params'])}"
        step = saved.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 <= step < 2**53:
            return f"parameter group {g} 'step' is {step!r}, not a count of steps"
        for saved_id, param in zip(saved["params"], group["params"], strict=True):
            where = f"parameter group {g}, {(names or {}).get(id(param), f'parameter id {saved_id}')}"
            problem = _param_state_mismatch(state_dict["state"].get(saved_id, {}), param, moment_keys)
            if problem:
                return f"{where}: {problem}"
    return None


def _param_state_mismatch(entry: Any, param: torch.Tensor, moment_keys: tuple[str, ...]) -> str | None:
    if not isinstance(entry, dict):
        return f"state is a {type(entry).__name__}, not a dict"
    if entry and moment_keys and not all(key in entry for key in moment_keys):
        missing = [key for key in moment_keys if key not in entry]
        return f"{missing[0]!r} is missing"
    for key, value in entry.items():
        if not isinstance(value, torch.Tensor) or (value.dim() == 0 and key not in moment_keys):
            continue
        if not value.is_floating_point():
            return f"{key!r} has dtype {value.dtype}, not a floating-point type"
        if value.shape != param.shape:
            return f"{key!r} has shape {list(value.shape)}, the parameter {list(param.shape)}"
    return None


def require_finished_phase1(ckpt: dict[str, Any], path: str) -> None:
    """Phase 2 starts only from a phase 1 that reached its last step (not one stopped by a signal)."""
    args, state = ckpt.get("args") or {}, ckpt.get("run_state") or {}
    if "max_steps" not in args or "global_step" not in state:
        return  # a checkpoint from elsewhere: nothing recorded to check against
    done, target = int(state["global_step"]), int(args["max_steps"])
    if done < target:
        raise InputError(f"{path}: phase 1 stopped at step {done} of {target}; finish phase 1 first "
                         "(rerun it with --resume_from_checkpoint), or start phase 2 with --init_checkpoint")


def remove_killed_saves(output_dir: str) -> None:
    """Temp files of saves killed half-way (`.tmp-ckpt_<step>.pt.*`): only rank 0 writes here, so none is live."""
    for name in os.listdir(output_dir):
        if TMP_PATTERN.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, name))


def prune_checkpoints(output_dir: str, keep: int, current_step: int) -> None:
    """Keep the `keep` newest `ckpt_<step>.pt` of the folder (0 = all), whichever job or phase wrote them.

    Phase-2 names are offset by phase 1's end, so phase 1's last checkpoint goes only once `keep`
    newer ones exist, i.e. once phase 2 has checkpoints of its own to resume from. Files named
    after a later step than the one just saved (left by a rewind with --resume_step) are not touched.
    """
    if keep <= 0:
        return
    older = [step for step in checkpoint_steps(output_dir) if step <= current_step]
    for step in older[keep:]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(output_dir, f"ckpt_{step}.pt"))
