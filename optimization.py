"""Optimizers: LAMB with the original's NVLAMB semantics (pretraining), BertAdam and AdamW
(fine-tuning), and the original's parameter groups.

`Lamb` reproduces what apex's `FusedLAMB` executed in the original's pretraining, with
`torch._foreach_*` multi-tensor ops instead of a CUDA extension. `BertAdam` reproduces the original's
fine-tuning optimizer, quirks included, so its recipes give the same numbers.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from input_checks import InputError
from schedulers import constant_warmup_factor, cosine_warmup_factor, linear_warmup_factor, poly_warmup_factor

# Substrings of parameter names that exempt a parameter from weight decay.
PRETRAINING_NO_DECAY = ("bias", "gamma", "beta", "LayerNorm")
FINETUNE_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")

NamedParams = Iterable[tuple[str, nn.Parameter]]

# --------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------


def _trainable_named_parameters(model_or_named_params: nn.Module | NamedParams) -> list[tuple[str, nn.Parameter]]:
    named = (model_or_named_params.named_parameters() if isinstance(model_or_named_params, nn.Module)
             else model_or_named_params)
    return [(name, param) for name, param in named if param.requires_grad]


def _decay_groups(named: Sequence[tuple[str, nn.Parameter]], no_decay: Sequence[str],
                  weight_decay: float) -> list[dict[str, Any]]:
    """[decay group, no-decay group], in the order the parameters come; both always present, so a
    checkpoint's optimizer state has the original's two groups."""
    exempt = [any(marker in name for marker in no_decay) for name, _ in named]
    return [
        {"params": [p for (_, p), skip in zip(named, exempt, strict=True) if not skip], "weight_decay": weight_decay},
        {"params": [p for (_, p), skip in zip(named, exempt, strict=True) if skip], "weight_decay": 0.0},
    ]


def pretraining_param_groups(model: nn.Module | NamedParams, weight_decay: float = 0.01) -> list[dict[str, Any]]:
    """The original's pretraining groups: no decay for names containing bias, gamma, beta or LayerNorm.

    Tied weights appear once (named_parameters de-duplicates them); frozen parameters are left out.
    """
    return _decay_groups(_trainable_named_parameters(model), PRETRAINING_NO_DECAY, weight_decay)


def finetune_param_groups(model: nn.Module | NamedParams, weight_decay: float = 0.01,
                          skip_pooler: bool = False) -> list[dict[str, Any]]:
    """The original's fine-tuning groups (no decay for bias, LayerNorm.bias, LayerNorm.weight).

    `skip_pooler` leaves out the pooler, as the original's SQuAD does: the QA head never uses it.
    """
    named = _trainable_named_parameters(model)
    if skip_pooler:
        named = [(name, param) for name, param in named if "pooler" not in name]
    return _decay_groups(named, FINETUNE_NO_DECAY, weight_decay)


# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


def _math_dtype(tensor: torch.Tensor) -> torch.dtype:
    """16-bit parameters are updated in fp32 (and keep fp32 state); fp32/fp64 in their own precision."""
    return torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype


def _upcast(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t if t.dtype == _math_dtype(t) else t.to(_math_dtype(t)) for t in tensors]


def _params_with_grad(group: dict[str, Any]) -> list[torch.Tensor]:
    params = [p for p in group["params"] if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            raise RuntimeError("this optimizer does not support sparse gradients")
    return params


def _buckets(params: list[torch.Tensor], multi_tensor: bool) -> list[list[torch.Tensor]]:
    """Lists of same-device, same-dtype tensors for the foreach ops (one tensor each when not foreach)."""
    if not multi_tensor:
        return [[p] for p in params]
    by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        by_kind.setdefault((p.device, p.dtype), []).append(p)
    return list(by_kind.values())


class _Fp32StateMixin:
    """Keeps the moments of 16-bit parameters in fp32 across `load_state_dict`.

    torch's loader casts every floating state tensor to its parameter's dtype, which would round the
    fp32 moments of a bf16/fp16 parameter; this restores them from the saved values.
    """

    _fp32_state_keys: tuple[str, ...] = ()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        saved_ids = chain.from_iterable(group["params"] for group in state_dict["param_groups"])
        params = chain.from_iterable(group["params"] for group in self.param_groups)  # type: ignore[attr-defined]
        for saved_id, param in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(saved_id, {})
            if _math_dtype(param) == param.dtype:
                continue
            for key in self._fp32_state_keys:
                if key in saved:
                    self.state[param][key] = saved[key].to(  # type: ignore[attr-defined]
                        device=param.device, dtype=_math_dtype(param), copy=True)


# --------------------------------------------------------------------------------------------
# LAMB
# --------------------------------------------------------------------------------------------


class Lamb(_Fp32StateMixin, Optimizer):
    """LAMB as apex's FusedLAMB ran it in the original's pretraining ("NVLAMB").

    One `step()`:

    1. every group's `step` counter t is incremented (starts at 0, so the first update has t = 1);
    2. G = L2 norm over the gradients of all parameters of all groups;
    3. ĝ = g · min(1, max_grad_norm / G) (no pre-normalisation when max_grad_norm ≤ 0);
    4. m ← β1·m + (1 − β1)·ĝ, v ← β2·v + (1 − β2)·ĝ² (with grad_averaging=False the m term is ĝ);
    5. m̂ = m / (1 − β1ᵗ), v̂ = v / (1 − β2ᵗ) (when bias_correction);
    6. u = m̂ / (√v̂ + eps) + λ·w, λ the group's weight decay (decoupled, added to the update);
    7. per tensor, r = ‖w‖/‖u‖ (1 when either norm is 0), applied only in groups with λ ≠ 0 unless
       use_nvlamb, which applies it to every tensor;
    8. w ← w − lr·r·u.

    `max_grad_norm` is global, the constructor's value for all groups (as apex's).

    bf16/fp16 parameters are updated in fp32 and their moments (`exp_avg`, `exp_avg_sq`) kept in fp32;
    the result is rounded into the parameter (there is no separate fp32 master copy).

    A non-finite G (an inf/NaN gradient) skips the whole step: parameters and moments are left
    untouched and the update does not count for bias correction.

    Nothing in `step()` waits for the device: G, the clipping factor, the skip flag and each group's
    update count t are device tensors, and no small tensor is copied from the host. The host learns of
    a skipped step when it asks (`settle()`, `last_step_skipped`, `skipped_steps`, `last_grad_norm`,
    `state_dict()`: one read then): until then `group["step"]` counts the step as taken, afterwards it
    counts completed updates only. Under a GradScaler (fp16) the scaler skips overflowed steps itself.

    foreach=True updates all same-device, same-dtype tensors of a group together; its temporaries
    are then the size of that whole bucket. foreach=False goes tensor by tensor (same results, less
    peak memory, more kernel launches). fused (None = wherever it applies: fp32 CPU or CUDA
    parameters, bias correction and grad averaging on; see `fused_lamb_setting`) computes the Adam
    direction with torch's fused Adam kernel: about half the passes over memory, a persistent update
    buffer the size of the parameters, and `.grad` is left pre-normalised. Results agree with the
    other paths to float rounding.
    """

    _fp32_state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, bias_correction: bool = True,
                 grad_averaging: bool = True, max_grad_norm: float = 1.0, use_nvlamb: bool = False,
                 foreach: bool = True, fused: bool | None = None) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"invalid epsilon: {eps}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid betas: {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, grad_averaging=grad_averaging,
                        max_grad_norm=max_grad_norm, use_nvlamb=use_nvlamb, foreach=foreach, step=0)
        super().__init__(params, defaults)
        self.fused = fused
        # Per-parameter buffers for the fused path's update direction: reused every step (not saved),
        # because a fresh 0.4 GB allocation per step at BERT-base costs page faults on every touch.
        self._update_buffers: dict[torch.Tensor, torch.Tensor] = {}
        self._device_scalars: _DeviceScalars | None = None
        self._skipped_steps = 0

    # ---- what the host reads, when it asks ----------------------------------------------------

    def settle(self) -> int:
        """Read how many steps the device skipped since the last call (one host wait) and correct
        `group["step"]` for them; returns that number."""
        scalars = self._device_scalars
        if scalars is None:
            return 0
        late = int(scalars.unsettled_skips.item())
        if late:
            scalars.unsettled_skips.zero_()
            self._skipped_steps += late
            for index, group in enumerate(self.param_groups):
                group["step"] -= late
                scalars.host_steps[index] -= late
        return late

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for a non-finite gradient norm so far (reads the device)."""
        self.settle()
        return self._skipped_steps

    @property
    def last_step_skipped(self) -> bool:
        """Whether the latest step was skipped (reads the device)."""
        self.settle()
        return self._device_scalars is not None and bool(self._device_scalars.found_inf)

    @property
    def last_grad_norm(self) -> float | None:
        """G of the latest step (reads the device; for logging)."""
        return None if self._device_scalars is None else float(self._device_scalars.grad_norm)

    def state_dict(self) -> dict[str, Any]:
        self.settle()  # a checkpoint holds the count of completed updates
        return super().state_dict()

    # ---- the step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params_by_group = [_params_with_grad(group) for group in self.param_groups]
        grads = [p.grad for p in chain.from_iterable(params_by_group)]
        if not grads:
            return loss
        scalars = self._scalars_on(grads[0].device)
        grad_norm = _global_grad_norm(grads, scalars.device)
        found_inf = (~torch.isfinite(grad_norm)).to(torch.float32)
        scalars.record(grad_norm, found_inf)
        max_norm = self.defaults["max_grad_norm"]
        clips = max_norm > 0.0
        # G / max_grad_norm where G exceeds it, else 1 (the fused kernel divides by it); its inverse
        # scales the gradients on the other paths.
        divisor = torch.where(grad_norm > max_norm, grad_norm / max_norm, 1.0) if clips else torch.ones_like(grad_norm)
        divisor = divisor.to(torch.float32)
        for index, (group, params) in enumerate(zip(self.param_groups, params_by_group, strict=True)):
            update_count = scalars.advance(index, group, found_inf)
            for bucket in _buckets(params, group["foreach"]):
                if self._use_fused(group, bucket):
                    self._update_bucket_fused(group, bucket, update_count, divisor, found_inf)
                else:
                    self._update_bucket(group, bucket, update_count, divisor, found_inf)
        return loss

    def _scalars_on(self, device: torch.device) -> _DeviceScalars:
        if self._device_scalars is None or self._device_scalars.device != device:
            self._device_scalars = _DeviceScalars(device)
        return self._device_scalars

    def _use_fused(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        """The fused path covers fp32 tensors on CPU/CUDA with bias correction and grad averaging (the
        pretraining settings). fused=None ("auto") takes it wherever it applies, CPU and CUDA;
        fused=False never; fused=True insists and raises where it does not apply."""
        eligible = (hasattr(torch, "_fused_adamw_") and group["foreach"] and group["bias_correction"]
                    and group["grad_averaging"]
                    and all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params))
        if self.fused is None:
            return eligible
        if self.fused and not eligible:
            raise ValueError("fused LAMB needs foreach, bias_correction, grad_averaging and fp32 CPU/CUDA parameters")
        return self.fused

    def _state_lists(self, params: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        for p in params:
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, dtype=_math_dtype(p), memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=_math_dtype(p), memory_format=torch.preserve_format)
        return [self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params]

    def _update_bucket(self, group: dict[str, Any], params: list[torch.Tensor], update_count: torch.Tensor,
                       divisor: torch.Tensor, found_inf: torch.Tensor) -> None:
        beta1, beta2 = group["betas"]
        decay, lr = group["weight_decay"], float(group["lr"])
        exp_avgs, exp_avg_sqs = self._state_lists(params)
        weights = _upcast(list(params))
        skip = found_inf.bool()
        # ĝ = g / divisor, 0 on a skipped step (so the moments below stay as they are).
        grads = [torch.where(skip, 0.0, g.to(_math_dtype(g))) for g in (p.grad for p in params)]
        torch._foreach_div_(grads, divisor)

        grad_weight = (1.0 - beta1) if group["grad_averaging"] else 1.0
        torch._foreach_mul_(exp_avgs, torch.where(skip, 1.0, beta1).to(torch.float32))
        torch._foreach_add_(exp_avgs, grads, alpha=grad_weight)
        torch._foreach_mul_(exp_avg_sqs, torch.where(skip, 1.0, beta2).to(torch.float32))
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        del grads

        # u = (m/bias1) / (sqrt(v/bias2) + eps) + λw is computed as step_size·u' with
        # u' = m / (sqrt(v) + eps·sqrt(bias2)) + (λ/step_size)·w: one division instead of three, and
        # step_size cancels in the trust ratio (‖w‖/‖u‖ · u = ‖w‖/‖u'‖ · u'). Division is the slow
        # elementwise op on CPU, and every pass here walks all parameters. The bias corrections come
        # from the device's update count (at least 1, so a skipped first step stays finite).
        t = update_count.to(torch.float64).clamp(min=1.0)
        ones = torch.ones_like(t)
        bias1 = 1.0 - torch.pow(beta1, t) if group["bias_correction"] else ones
        bias2 = 1.0 - torch.pow(beta2, t) if group["bias_correction"] else ones
        step_size = bias2.sqrt() / bias1
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        # alpha picks the overload that reads the 0-dim tensor on the device (without it, `.item()`)
        torch._foreach_add_(denominators, (group["eps"] * bias2.sqrt()).to(torch.float32), alpha=1.0)
        updates = torch._foreach_div(exp_avgs, denominators)
        del denominators
        if decay != 0.0:
            torch._foreach_add_(updates, torch._foreach_mul(weights, (decay / step_size).to(torch.float32)))
        if decay != 0.0 or group["use_nvlamb"]:
            ratios = _trust_ratios(weights, updates, fallback=step_size.to(torch.float32))
            torch._foreach_mul_(updates, [torch.where(skip, 0.0, r) for r in ratios])
            torch._foreach_add_(weights, updates, alpha=-lr)
        else:
            torch._foreach_mul_(updates, torch.where(skip, 0.0, -lr * step_size).to(torch.float32))
            torch._foreach_add_(weights, updates)
        for param, weight in zip(params, weights, strict=True):
            if weight is not param:
                param.copy_(weight)

    def _update_bucket_fused(self, group: dict[str, Any], params: list[torch.Tensor], update_count: torch.Tensor,
                             divisor: torch.Tensor, found_inf: torch.Tensor) -> None:
        """The same update with torch's fused Adam kernel computing the Adam direction in one pass.

        torch._fused_adamw_ updates m and v and then does `p -= lr·m̂/(√v̂ + eps)`; run on a buffer
        holding λ·w with lr = -1 it leaves u = m̂/(√v̂ + eps) + λ·w there. Pre-normalisation is its
        `grad_scale` (gradients are divided by G/max_grad_norm; the kernel leaves `.grad` divided);
        its `found_inf` leaves moments and buffer untouched on a skipped step.
        """
        beta1, beta2 = group["betas"]
        decay, lr = group["weight_decay"], float(group["lr"])
        exp_avgs, exp_avg_sqs = self._state_lists(params)
        updates = [self._update_buffer(p) for p in params]
        if decay != 0.0:
            for update, param in zip(updates, params, strict=True):
                torch.mul(param, decay, out=update)
        else:
            torch._foreach_zero_(updates)
        torch._fused_adamw_(updates, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], [update_count] * len(params),
                            lr=-1.0, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"],
                            amsgrad=False, maximize=False, grad_scale=divisor, found_inf=found_inf)
        skip = found_inf.bool()
        if decay == 0.0 and not group["use_nvlamb"]:
            torch._foreach_add_(params, updates, alpha=-lr)  # the buffer stayed 0 on a skipped step
            return
        ratios = [torch.where(skip, 0.0, r) for r in _trust_ratios(params, updates)]
        if params[0].device.type == "cpu":  # host scalars are free here: one pass per tensor instead of two
            for param, update, ratio in zip(params, updates, torch.stack(ratios).tolist(), strict=True):
                param.add_(update, alpha=-lr * ratio)
        else:
            torch._foreach_mul_(updates, ratios)
            torch._foreach_add_(params, updates, alpha=-lr)

    def _update_buffer(self, param: torch.Tensor) -> torch.Tensor:
        buffer = self._update_buffers.get(param)
        if buffer is None:
            buffer = self._update_buffers[param] = torch.empty_like(param, memory_format=torch.preserve_format)
        return buffer


class _DeviceScalars:
    """LAMB's per-step scalars on the parameters' device: the latest G and skip flag, the skips the host
    has not read yet, and each group's update count t (what bias correction uses)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.grad_norm = torch.zeros((), device=device)
        self.found_inf = torch.zeros((), device=device)
        self.unsettled_skips = torch.zeros((), device=device)
        self.update_counts: dict[int, torch.Tensor] = {}
        self.host_steps: dict[int, int] = {}  # group["step"] as this object last left it

    def record(self, grad_norm: torch.Tensor, found_inf: torch.Tensor) -> None:
        self.grad_norm, self.found_inf = grad_norm, found_inf
        self.unsettled_skips.add_(found_inf)

    def advance(self, index: int, group: dict[str, Any], found_inf: torch.Tensor) -> torch.Tensor:
        """group["step"] += 1 (on the host, taken as applied until `Lamb.settle`); t += 1 on the device
        unless the step is skipped. Returns t. A count set from outside (a loaded checkpoint, phase 2's
        reset) is taken over with a fill on the device, not a copy from the host."""
        if self.host_steps.get(index) != group["step"]:
            self.update_counts[index] = torch.full((), float(group["step"]), dtype=torch.float32, device=self.device)
        count = self.update_counts[index]
        count.add_(1.0 - found_inf)
        group["step"] += 1
        self.host_steps[index] = group["step"]
        return count


def _trust_ratios(weights: list[torch.Tensor], updates: list[torch.Tensor],
                  fallback: float | torch.Tensor = 1.0) -> list[torch.Tensor]:
    """‖w‖/‖u‖ per tensor as 0-dim tensors (no host sync); `fallback` where either norm is zero."""
    weight_norms = torch.stack(torch._foreach_norm(weights))
    update_norms = torch.stack(torch._foreach_norm(updates))
    usable = (weight_norms > 0) & (update_norms > 0)
    ratios = torch.where(usable, weight_norms / update_norms, fallback)
    return list(ratios.unbind())


def _global_grad_norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """L2 norm over all gradients (any dtypes; other devices' partial norms are moved to `device`),
    accumulated in fp32 per bucket and in float64 across buckets, as a 0-dim tensor on `device`."""
    partial_norms = []
    for bucket in _buckets(grads, multi_tensor=True):
        norms = torch._foreach_norm(bucket, 2, dtype=_math_dtype(bucket[0]))
        partial_norms.append(torch.linalg.vector_norm(torch.stack(norms)).to(device, torch.float64))
    return torch.linalg.vector_norm(torch.stack(partial_norms))


FUSED_LAMB_CHOICES = ("auto", "on", "off")


def add_lamb_arguments(parser: argparse.ArgumentParser) -> None:
    """--use_nvlamb and --fused_lamb (run_pretraining.py)."""
    parser.add_argument("--use_nvlamb", action="store_true", help="apply the LAMB trust ratio to every tensor")
    parser.add_argument("--fused_lamb", choices=FUSED_LAMB_CHOICES, default="auto",
                        help="LAMB's Adam direction with torch's fused kernel: auto = wherever it applies (CPU and "
                             "CUDA)")


def fused_lamb_setting(choice: str) -> bool | None:
    """`--fused_lamb {auto,on,off}` as `Lamb(fused=...)`: auto (None) = the fused kernel wherever torch
    has it for the parameters (CPU and CUDA), on = always (error where it cannot), off = foreach."""
    if choice not in FUSED_LAMB_CHOICES:
        raise InputError(f"--fused_lamb: unknown value {choice!r}; choose from {', '.join(FUSED_LAMB_CHOICES)}")
    return {"auto": None, "on": True, "off": False}[choice]


def _apex_fused_lamb() -> type[Optimizer] | None:
    try:
        from apex.optimizers import FusedLAMB  # type: ignore[import-not-found]
    except ImportError:
        return None
    return FusedLAMB


def build_lamb(params: Iterable[Any], lr: float, use_apex: bool = False, **kwargs: Any) -> Optimizer:
    """`Lamb`, or apex's `FusedLAMB` (same math and state layout) when asked for and importable.

    apex's optimizer does not skip non-finite steps itself; use it under a GradScaler.
    """
    fused_lamb = _apex_fused_lamb() if use_apex else None
    if fused_lamb is None:
        return Lamb(params, lr=lr, **kwargs)
    kwargs.pop("foreach", None)
    return fused_lamb(params, lr=lr, **kwargs)


# --------------------------------------------------------------------------------------------
# Fine-tuning: BertAdam and AdamW
# --------------------------------------------------------------------------------------------

SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "warmup_linear": linear_warmup_factor,
    "warmup_constant": constant_warmup_factor,
    "warmup_cosine": cosine_warmup_factor,
    "warmup_poly": poly_warmup_factor,
}


class BertAdam(_Fp32StateMixin, Optimizer):
    """The original's fine-tuning optimizer, kept so its recipes reproduce.

    Per parameter tensor, in this order:

    * its own gradient is clipped to norm `max_grad_norm` (g · min(1, max/(‖g‖ + 1e-6)); per tensor,
      not global; the gradient in `.grad` is left as it is);
    * m ← b1·m + (1 − b1)·g, v ← b2·v + (1 − b2)·g² — **no bias correction**;
    * u = m / (√v + e) + weight_decay·w (decoupled decay, added to the update);
    * w ← w − lr_t·u with lr_t = lr·schedule(step / t_total, warmup) when t_total ≠ −1, else lr;
    * step += 1 — the schedule sees the count *before* the update, so with warm-up the first update
      has lr 0, as in the original.

    State keys are the original's (`next_m`, `next_v`, `step` per parameter). Schedules come from
    `schedulers.py`; two fixes there reach BertAdam: `warmup_cosine` is the standard half cosine
    (the original's crashed on a float) and `warmup_poly` gives 0 past t_total instead of a complex
    number. warmup = −1 (the default) means no warm-up: the original fed −1 into the schedule
    formula, which made `warmup_linear` start at lr/2.
    """

    _fp32_state_keys = ("next_m", "next_v")

    def __init__(self, params: Iterable[Any], lr: float, warmup: float = -1, t_total: int = -1,
                 schedule: str = "warmup_linear", b1: float = 0.9, b2: float = 0.999, e: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate: {lr}")
        if schedule not in SCHEDULES:
            raise ValueError(f"invalid schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (0.0 <= warmup < 1.0 or warmup == -1):
            raise ValueError(f"invalid warmup: {warmup} (a proportion in [0, 1), or -1)")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"invalid b1/b2: {b1}, {b2}")
        if e < 0.0:
            raise ValueError(f"invalid epsilon: {e}")
        defaults = dict(lr=lr, schedule=schedule, warmup=warmup, t_total=t_total, b1=b1, b2=b2, e=e,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @staticmethod
    def scheduled_lr(group: dict[str, Any], step: int) -> float:
        """The lr the update after `step` completed updates of a tensor uses."""
        if group["t_total"] == -1:
            return float(group["lr"])
        schedule = SCHEDULES[group["schedule"]]
        return float(group["lr"]) * schedule(step / group["t_total"], max(group["warmup"], 0.0))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in _params_with_grad(group):
                self._update_tensor(group, param)
        return loss

    def _update_tensor(self, group: dict[str, Any], param: torch.Tensor) -> None:
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["next_m"] = torch.zeros_like(param, dtype=_math_dtype(param), memory_format=torch.preserve_format)
            state["next_v"] = torch.zeros_like(param, dtype=_math_dtype(param), memory_format=torch.preserve_format)
        grad = param.grad.to(_math_dtype(param))
        if group["max_grad_norm"] > 0:
            clip = (group["max_grad_norm"] / (torch.linalg.vector_norm(grad) + 1e-6)).clamp(max=1.0)
            grad = grad * clip
        next_m, next_v = state["next_m"], state["next_v"]
        next_m.mul_(group["b1"]).add_(grad, alpha=1.0 - group["b1"])
        next_v.mul_(group["b2"]).addcmul_(grad, grad, value=1.0 - group["b2"])
        weight = param.to(_math_dtype(param))
        update = next_m / (next_v.sqrt() + group["e"])
        if group["weight_decay"] > 0.0:
            update.add_(weight, alpha=group["weight_decay"])
        weight.add_(update, alpha=-self.scheduled_lr(group, state["step"]))
        if weight is not param:
            param.copy_(weight)
        state["step"] += 1


def _fast_adamw_options(groups: list[dict[str, Any]]) -> dict[str, bool]:
    """fused=True (one kernel for all tensors) when every parameter is on CUDA or on the CPU.

    On the CPU torch otherwise defaults to its per-tensor loop, which on BERT-base takes ~10x longer
    per step than the fused kernel (benchmarks/bench_squad.py).
    """
    params = [p for group in groups for p in group["params"]]
    if params and (all(p.is_cuda for p in params) or all(p.device.type == "cpu" for p in params)):
        return {"fused": True}
    return {}


def build_finetune_optimizer(model_or_named_params: nn.Module | NamedParams, lr: float, weight_decay: float = 0.01,
                             kind: str = "adamw", skip_pooler: bool = False, warmup: float = -1,
                             t_total: int = -1) -> Optimizer:
    """The fine-tuning optimizer over the original's two parameter groups.

    kind="adamw": torch.optim.AdamW (betas 0.9/0.999, eps 1e-6, with bias correction; `warmup` and
    `t_total` unused — pair it with a scheduler). kind="bertadam": the original's BertAdam with its
    built-in schedule from `warmup` and `t_total`.
    """
    groups = finetune_param_groups(model_or_named_params, weight_decay, skip_pooler)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=weight_decay,
                                 **_fast_adamw_options(groups))
    if kind == "bertadam":
        return BertAdam(groups, lr=lr, warmup=warmup, t_total=t_total, weight_decay=weight_decay)
    raise InputError(f"unknown fine-tuning optimizer {kind!r}; choose adamw or bertadam")
