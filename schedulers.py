"""Learning-rate schedules with linear warm-up, as the original's `schedulers.py`.

Every schedule is a function of the training progress p = position / total_steps and of the warm-up
proportion w (a fraction of total_steps, not a step count):

    PolyWarmUpScheduler      p < w: base·p/w    else base·(1 − p)^degree          (pretraining)
    LinearWarmUpScheduler    p < w: base·p/w    else base·max((p − 1)/(w − 1), 0)  (fine-tuning)
    ConstantWarmUpScheduler  p < w: base·p/w    else base
    CosineWarmUpScheduler    p < w: base·p/w    else base·0.5·(1 + cos(π·(p − w)/(1 − w)))

All of them give 0 once p ≥ 1.

Stepping order (as in the original): at every gradient-accumulation boundary call `scheduler.step()`
**before** `optimizer.step()`. Then the k-th update (k = 1, 2, ...) runs with p = k/total_steps:

* `PolyWarmUpScheduler` does not count its own calls. Each `step()` sets the position to the
  optimizer's completed-update counter + 1 (`param_groups[0]['step']` for `optimization.Lamb`, which
  starts at 0). Before the k-th successful update that counter is k − 1, so the position is k. An update
  that is skipped (fp16 overflow: `GradScaler.step` does not call the optimizer, or `Lamb` refuses a
  non-finite gradient) leaves the counter alone, so the retry uses the same p again; the run still
  performs exactly `total_steps` updates along the schedule.
* The other schedulers count their calls, like the original: construction leaves the position at 0
  (lr = 0 with warm-up), the k-th `step()` moves it to k. A skipped update still advances them.

Deliberate choices, documented for users of the original:

* The polynomial decay is not rescaled to start at the end of warm-up (the original's behaviour, kept
  so published recipes reproduce): the lr climbs to ≈ base at p = w, then drops to base·√(1 − w)
  (≈ 0.846·base for w = 0.2843 in phase 1) and decays to 0 at p = 1.
* The original's `CosineWarmUpScheduler` computed 0.5·(1 + cos(π + p)) (and called `torch.cos` on a
  Python float, so it crashed); it was unused. Ours is the standard half-cosine from base at p = w to 0
  at p = 1.
* The original's `PolyWarmUpScheduler` fell back to position 1 when the optimizer had no per-group
  `step` (any optimizer but apex's LAMB), freezing the lr. Ours then reads the per-parameter `step`
  of the first parameter's state, which `torch.optim.Adam`/`AdamW` keep.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from input_checks import InputError

# --------------------------------------------------------------------------------------------
# Schedule factors: multipliers of the base lr as a function of progress p and warm-up fraction w.
# optimization.BertAdam uses the same functions for its built-in schedule.
# --------------------------------------------------------------------------------------------


def linear_warmup_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return progress / warmup
    if warmup >= 1.0:  # the warm-up covers the whole run; p ≥ 1 here
        return 0.0
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


def constant_warmup_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return progress / warmup
    return 1.0


def poly_warmup_factor(progress: float, warmup: float, degree: float = 0.5) -> float:
    if progress < warmup:
        return progress / warmup
    if progress >= 1.0:  # (1 − p)^0.5 is complex past the end; the original would have crashed
        return 0.0
    return (1.0 - progress) ** degree


def cosine_warmup_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return progress / warmup
    if progress >= 1.0:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup)))


# --------------------------------------------------------------------------------------------
# Schedulers
# --------------------------------------------------------------------------------------------


class WarmUpScheduler(LRScheduler):
    """Base: lr = base_lr · factor(position / total_steps, warmup) for every param group.

    `step()` is meant to be called before `optimizer.step()` (see the module docstring), so it does
    not emit PyTorch's "scheduler stepped before optimizer" warning.
    """

    def __init__(self, optimizer: Optimizer, warmup: float, total_steps: int, last_epoch: int = -1) -> None:
        if not 0.0 <= warmup <= 1.0:
            raise InputError(f"warm-up proportion must be in [0, 1], got {warmup}")
        if total_steps <= 0:
            raise InputError(f"total_steps must be a positive number of updates, got {total_steps}")
        self.warmup = float(warmup)
        self.total_steps = int(total_steps)
        super().__init__(optimizer, last_epoch)

    def factor(self, progress: float) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        scale = self.factor(self.last_epoch / self.total_steps)
        return [float(base) * scale for base in self.base_lrs]

    def _next_position(self) -> int:
        return self.last_epoch + 1

    def step(self, epoch: int | None = None) -> None:
        """Move to the next position (or to `epoch` when given) and set every group's lr."""
        self._step_count += 1
        self.last_epoch = self._next_position() if epoch is None else int(epoch)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]


class PolyWarmUpScheduler(WarmUpScheduler):
    """Pretraining schedule; the position follows the optimizer's count of completed updates."""

    def __init__(self, optimizer: Optimizer, warmup: float, total_steps: int, degree: float = 0.5,
                 last_epoch: int = -1) -> None:
        self.degree = float(degree)
        super().__init__(optimizer, warmup, total_steps, last_epoch)

    def factor(self, progress: float) -> float:
        return poly_warmup_factor(progress, self.warmup, self.degree)

    def _next_position(self) -> int:
        return completed_updates(self.optimizer) + 1


class LinearWarmUpScheduler(WarmUpScheduler):
    """Fine-tuning schedule: linear warm-up, then linear decay to 0 at total_steps."""

    def factor(self, progress: float) -> float:
        return linear_warmup_factor(progress, self.warmup)


class ConstantWarmUpScheduler(WarmUpScheduler):
    """Linear warm-up, then the base lr (0 is never reached)."""

    def factor(self, progress: float) -> float:
        return constant_warmup_factor(progress, self.warmup)


class CosineWarmUpScheduler(WarmUpScheduler):
    """Linear warm-up, then a half cosine from base_lr at the end of warm-up to 0 at total_steps."""

    def factor(self, progress: float) -> float:
        return cosine_warmup_factor(progress, self.warmup)


def completed_updates(optimizer: Optimizer) -> int:
    """The optimizer's own count of completed updates (0 before the first one).

    LAMB keeps it per param group (`param_groups[0]['step']`, the original's layout); torch's Adam
    family keeps a `step` per parameter state.
    """
    group = optimizer.param_groups[0]
    if "step" in group:
        return int(group["step"])
    for param in group["params"]:
        step = optimizer.state.get(param, {}).get("step")
        if step is not None:
            return int(step)
    return 0


SCHEDULERS: dict[str, Callable[..., WarmUpScheduler]] = {
    "poly": PolyWarmUpScheduler,
    "linear": LinearWarmUpScheduler,
    "constant": ConstantWarmUpScheduler,
    "cosine": CosineWarmUpScheduler,
}


def build_scheduler(name: str, optimizer: Optimizer, warmup: float, total_steps: int, **kwargs: Any) -> WarmUpScheduler:
    """`name` is one of poly, linear, constant, cosine (the class names are accepted too)."""
    key = name.lower().removesuffix("warmupscheduler")
    if key not in SCHEDULERS:
        raise InputError(f"unknown lr scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[key](optimizer, warmup, total_steps, **kwargs)
