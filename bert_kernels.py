"""Device-specific fast paths behind the small interface the model calls.

The model (`modeling.py`) only calls:

* `linear(x, weight, bias)` — F.linear; fp32 on the CPU goes through oneDNN when that backend is on;
* `dropout(x, p, training)` — inverted dropout; on the CPU with a cheaper mask;
* `attention(q, k, v, layout, dropout_p)` — multi-head attention over the padded layout (a boolean
  padding mask or None) or over packed real tokens (`PackedTokens`); `padding_mask` builds the mask;
* `PackedTokens` and `should_pack` — where the real tokens of a padded batch are, and whether the
  encoder should run on them only.

Faster attention for other devices (a CUDA variable-length flash attention next) plugs into
`packed_attention` / `padded_attention`: the dispatch by device and input kind is there, and nothing in
the model changes. Scripts expose the backend choices through `add_kernel_arguments` and
`configure_kernels`. This module imports torch and utils only.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from utils import InputError

# --------------------------------------------------------------------------------------------
# Backend choice (flags and environment)
# --------------------------------------------------------------------------------------------

# fp32 matrix products on the CPU: "onednn" sends them to oneDNN, "aten" leaves them to torch's BLAS
# (MKL on x86). Which is faster depends on the CPU, not on the vendor: on an AMD Zen 5 MKL's sgemm
# takes a generic path and oneDNN's runs about twice as fast; on an AMD Zen 4 and on Intel CPUs the
# two are close. So "auto" times both on BERT-shaped products once per process (`probe_cpu_gemm_plan`)
# and keeps the faster one for each of a linear's three products (forward, input gradient, weight
# gradient). BERT_CPU_GEMM in the environment sets the default of --cpu_gemm, so setups written
# before the flag keep working.
CPU_GEMM_CHOICES = ("auto", "onednn", "aten")
CPU_GEMM_ENV = "BERT_CPU_GEMM"
GEMM_ROLES = ("forward", "input_grad", "weight_grad")


@dataclass(frozen=True)
class GemmPlan:
    """The library ("onednn" or "aten") for each product of an fp32 CPU linear y = x·Wᵀ + b:
    forward (x·Wᵀ), input_grad (dy·W) and weight_grad (dyᵀ·x)."""

    forward: str
    input_grad: str
    weight_grad: str

    @classmethod
    def uniform(cls, backend: str) -> GemmPlan:
        return cls(backend, backend, backend)

    def summary(self) -> str:
        """"onednn", "aten", or the per-product choice when they differ."""
        chosen = {getattr(self, role) for role in GEMM_ROLES}
        if len(chosen) == 1:
            return chosen.pop()
        return ", ".join(f"{role} {getattr(self, role)}" for role in GEMM_ROLES)


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# Probe shape: 128 tokens of BERT-base through the fused Q/K/V projection (768 → 2304), about 0.45
# GFLOP a product: large enough that the libraries' blocked kernels run as in training, small enough
# that the whole probe (3 products × 2 libraries × 5 calls) takes about 0.2 s on one core.
_PROBE_TOKENS, _PROBE_IN, _PROBE_OUT = 128, 768, 2304
_PROBE_CALLS = 4
# oneDNN must win by this margin to be chosen: on a near tie torch's own BLAS (what nn.Linear uses)
# is kept, so timing noise does not flip the choice between runs on CPUs where the two are equal.
_ONEDNN_MARGIN = 0.95


def _probe_products() -> dict[str, list[Any]]:
    """Per role: [aten call, oneDNN call] computing that product on BERT-shaped operands."""
    g = torch.Generator().manual_seed(0)  # a private generator: the probe must not move the global RNG
    x = torch.randn(_PROBE_TOKENS, _PROBE_IN, generator=g)
    weight = torch.randn(_PROBE_OUT, _PROBE_IN, generator=g)
    bias = torch.randn(_PROBE_OUT, generator=g)
    grad = torch.randn(_PROBE_TOKENS, _PROBE_OUT, generator=g)
    operands = {"forward": (x, weight, bias), "input_grad": (grad, weight.t(), None),
                "weight_grad": (grad.t(), x.t(), None)}
    return {role: [functools.partial(_product, backend, *ops) for backend in ("aten", "onednn")]
            for role, ops in operands.items()}


@functools.lru_cache(maxsize=1)
def probe_cpu_gemm_plan() -> GemmPlan:
    """Time torch's BLAS and oneDNN on each product of a BERT-shaped linear, once per process (cached);
    returns the faster library per product.

    The probe runs on one thread and counts that thread's CPU time, not wall time: on a shared machine
    the wall clock mostly measures other processes, CPU time the library. The calls alternate between
    the libraries and each keeps its fastest."""
    if not onednn_linear_available():
        return GemmPlan.uniform("aten")
    choice = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            for role, calls in _probe_products().items():
                best = [math.inf, math.inf]
                for repeat in range(_PROBE_CALLS + 1):
                    for i, call in enumerate(calls):
                        start = time.thread_time()
                        call()
                        if repeat:  # the first call of each builds its kernel
                            best[i] = min(best[i], time.thread_time() - start)
                choice[role] = "onednn" if best[1] < _ONEDNN_MARGIN * best[0] else "aten"
    finally:
        torch.set_num_threads(threads)
    return GemmPlan(**choice)


def _resolve_cpu_gemm(choice: str, source: str = CPU_GEMM_ENV) -> GemmPlan:
    if choice not in CPU_GEMM_CHOICES:
        raise InputError(f"{source}={choice!r}: choose one of {', '.join(CPU_GEMM_CHOICES)}")
    if choice == "auto":
        return probe_cpu_gemm_plan()
    if choice == "onednn" and not onednn_linear_available():
        raise InputError(f"{source}=onednn: this torch build has no oneDNN (mkldnn) linear")
    return GemmPlan.uniform(choice)


# None until first use: "auto" probes then, with the thread count the script has set by that time.
_cpu_gemm_plan: GemmPlan | None = None


def cpu_gemm_plan() -> GemmPlan:
    """Which library does each fp32 CPU matrix product of a linear (resolved on first use)."""
    global _cpu_gemm_plan
    if _cpu_gemm_plan is None:
        _cpu_gemm_plan = _resolve_cpu_gemm(os.environ.get(CPU_GEMM_ENV, "auto"))
    return _cpu_gemm_plan


def cpu_gemm_backend() -> str:
    """"onednn", "aten", or the per-product choice when "auto" found them to differ (`GemmPlan.summary`)."""
    return cpu_gemm_plan().summary()


def set_cpu_gemm_backend(choice: str | GemmPlan, source: str = CPU_GEMM_ENV) -> str:
    """Pick the fp32 CPU GEMM library ("auto", "onednn", "aten", or a `GemmPlan`); returns the
    choice in use (`cpu_gemm_backend`). Within one process the plan stays fixed unless set again,
    so results within a run are computed the same way throughout."""
    global _cpu_gemm_plan
    _cpu_gemm_plan = choice if isinstance(choice, GemmPlan) else _resolve_cpu_gemm(choice, source)
    return _cpu_gemm_plan.summary()


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    """The kernel flags every script that runs the model shares (one argument group)."""
    g = parser.add_argument_group("kernels")
    g.add_argument("--cpu_gemm", choices=CPU_GEMM_CHOICES, default=None,
                   help="library for fp32 matrix products on the CPU: onednn, aten (torch's BLAS, MKL on x86) or "
                        "auto (times both on BERT-shaped products once at start-up and keeps the faster one "
                        "per product; well under a second). "
                        f"Default: the {CPU_GEMM_ENV} environment variable, else auto")


def configure_kernels(args: argparse.Namespace) -> None:
    """Apply the flags of `add_kernel_arguments`; a flag left out keeps the environment's default."""
    if getattr(args, "cpu_gemm", None) is not None:
        set_cpu_gemm_backend(args.cpu_gemm, source="--cpu_gemm")
    else:
        set_cpu_gemm_backend(os.environ.get(CPU_GEMM_ENV, "auto"), source=CPU_GEMM_ENV)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def plain_inference() -> bool:
    """Under torch.inference_mode and not being traced, compiled or exported: tensors derived from the
    weights may be kept between calls (a graph being recorded must derive them from the weights)."""
    return torch.is_inference_mode_enabled() and not _tracing()


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------

def _onednn_matmul_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) for 2-D fp32 CPU tensors, in oneDNN; a and b may be transposed views."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def _product(backend: str, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) in the given library; a and b may be transposed views."""
    return _onednn_matmul_t(a, b, bias) if backend == "onednn" else F.linear(a, b, bias)


class _OneDNNLinear(torch.autograd.Function):
    """F.linear over [N, in] with each of its three products (forward, input and weight gradients) in
    the library the `GemmPlan` names (at least one of them oneDNN)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                plan: GemmPlan) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.plan = plan
        return _product(plan.forward, x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _product(ctx.plan.input_grad, grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_w = _product(ctx.plan.weight_grad, grad.t(), x.t()) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def _onednn_linear_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.numel() > 0
            and (bias is None or bias.dtype == torch.float32) and not torch.is_autocast_enabled("cpu")
            and cpu_gemm_plan() != GemmPlan.uniform("aten"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with fp32 CPU products in oneDNN where the `GemmPlan` says so (see `cpu_gemm_plan`).

    Autocast (bf16 already goes to oneDNN there), other devices and dtypes, an all-aten plan,
    torch.compile (which lowers linears itself) and tracing or export (ONNX, TorchScript: the graph
    must hold F.linear) take F.linear.
    """
    if _tracing() or not _onednn_linear_applies(x, weight, bias):
        return F.linear(x, weight, bias)
    plan = cpu_gemm_plan()
    if x.dim() == 2:
        return _OneDNNLinear.apply(x, weight, bias, plan)
    rows = x.reshape(-1, x.size(-1))
    return _OneDNNLinear.apply(rows, weight, bias, plan).view(*x.shape[:-1], weight.size(0))


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------

# CPU dropout masks come from 15-bit lanes of 64-bit random words: four lanes per draw of the
# generator, where bernoulli_ makes one draw per element and takes most of dropout's time. A lane is
# dropped when below round(p·2¹⁵), so the rate is p to within 2⁻¹⁶, and survivors are scaled by
# 1/(1 − that rate) so the expectation is exact.
_MASK_LEVELS = 1 << 15


def _cpu_dropout_scale_mask(x: torch.Tensor, dropped_levels: int) -> torch.Tensor:
    """0 where dropped, 1/(1 − rate) where kept, in x's dtype and shape, from the default CPU generator;
    rate = dropped_levels / 2¹⁵."""
    count = x.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each
    lanes = words.view(torch.int16)[:count].view(x.shape)
    keep = torch.bitwise_and(lanes, _MASK_LEVELS - 1) >= dropped_levels
    return keep.to(x.dtype).mul_(_MASK_LEVELS / (_MASK_LEVELS - dropped_levels))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout; on the CPU with a mask from `_cpu_dropout_scale_mask` (about 2x faster than
    F.dropout there, forward and backward), elsewhere and under tracing F.dropout."""
    if not training or p == 0.0:
        return x
    dropped_levels = round(p * _MASK_LEVELS)
    if x.device.type != "cpu" or not 0.0 < p < 1.0 or dropped_levels >= _MASK_LEVELS or _tracing():
        return F.dropout(x, p, training)
    return x * _cpu_dropout_scale_mask(x, dropped_levels)




# --------------------------------------------------------------------------------------------
# Attention: one entry point, dispatched by input kind (padded or packed) and device
# --------------------------------------------------------------------------------------------


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, S] 1/0 mask → boolean [B, 1, 1, S] for SDPA, or None when nothing is padded."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


@dataclass
class PackedTokens:
    """Where the real tokens of a padded [B, S] batch are, for layers that run on real tokens only.

    Every per-token operation (linears, LayerNorm, dropout, GELU) then costs nothing for padding;
    `attention` receives Q/K/V as [T, heads, d].
    """

    index: torch.Tensor  # [T] flat positions b·S + s of the real tokens
    mask: torch.Tensor  # boolean [B, 1, 1, S], as `padding_mask` gives
    batch: int
    seq: int

    @classmethod
    def from_mask(cls, mask: torch.Tensor, multiple: int = 64) -> PackedTokens:
        """Real tokens plus the first few padding positions, up to a multiple of `multiple` tokens:
        GEMM libraries build a kernel per shape, and a new token count every step would rebuild
        them every step (15-30% slower GEMMs); padding that rides along is computed and ignored,
        as in the padded layout."""
        batch, seq = mask.size(0), mask.size(-1)
        flat = mask.reshape(-1)
        index = flat.nonzero().squeeze(1)
        fill = min((-index.numel()) % multiple, flat.numel() - index.numel())
        if fill:
            index = torch.cat([index, (~flat).nonzero().squeeze(1)[:fill]]).sort().values
        return cls(index, mask, batch, seq)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, ...] → [T, ...]"""
        return x.reshape(self.batch * self.seq, *x.shape[2:]).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[T, ...] → [B, S, ...], zeros at the padding"""
        padded = x.new_zeros(self.batch * self.seq, *x.shape[1:]).index_copy(0, self.index, x)
        return padded.view(self.batch, self.seq, *x.shape[1:])


def should_pack(x: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Run the encoder on packed real tokens? On the CPU, when the batch has padding. (On GPUs
    finding the tokens costs a host sync per step and padding is cheaper there until a variable-length
    attention kernel lands; traced graphs keep the plain layout.)"""
    return mask is not None and x.device.type == "cpu" and not _tracing() and not bool(mask.all())


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor | PackedTokens | None, dropout_p: float
) -> torch.Tensor:
    """Multi-head attention; all attention in the model goes through here.

    Padded: q, k, v are [B, heads, S, d] and `layout` is a boolean [B, 1, 1, S] mask (True where a key
    may be attended) or None; returns [B, heads, S, d].
    Packed: q, k, v are [T, heads, d] (the real tokens) and `layout` is their `PackedTokens`; returns
    [T, heads, d].
    """
    if isinstance(layout, PackedTokens):
        return packed_attention(q, k, v, layout, dropout_p)
    return padded_attention(q, k, v, layout, dropout_p)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedTokens,
                     dropout_p: float) -> torch.Tensor:
    """Attention over [T, heads, d] real tokens.

    Variable-length kernels (a CUDA flash attention with the sequences' offsets) belong here, chosen
    by device. The portable path below scatters Q/K/V back to the padded layout for batched products.
    """
    q, k, v = (packed.pad(t).transpose(1, 2) for t in (q, k, v))
    context = padded_attention(q, k, v, packed.mask, dropout_p)
    return packed.pack(context.transpose(1, 2))


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     dropout_p: float) -> torch.Tensor:
    """Attention over [B, heads, S, d] with a boolean key mask.

    With dropout on the CPU, SDPA has no fused kernel and runs its math path anyway; the same math is
    written out here so the probabilities go through the faster CPU `dropout`. Elsewhere SDPA picks
    its backend (flash, memory-efficient or math) for the device.
    """
    if dropout_p > 0.0 and q.device.type == "cpu" and not _tracing():
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(1.0 / math.sqrt(q.size(-1)))
        if mask is not None:
            scores = scores.masked_fill_(~mask, float("-inf"))
        return torch.matmul(dropout(scores.softmax(-1), dropout_p, True), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
