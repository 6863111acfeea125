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
import math
import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from utils import InputError

# --------------------------------------------------------------------------------------------
# Backend choice (flags and environment)
# --------------------------------------------------------------------------------------------

# fp32 matrix products on the CPU: "onednn" sends them to oneDNN, "aten" leaves them to torch's BLAS
# (MKL on x86). On AMD Zen CPUs MKL's sgemm takes its generic path and oneDNN's runs about twice as
# fast (benchmarks/bench_pretraining.py shows both); on Intel CPUs the two are close. "auto" picks
# oneDNN where torch was built with it on x86-64. BERT_CPU_GEMM in the environment sets the default
# of --cpu_gemm, so setups written before the flag keep working.
CPU_GEMM_CHOICES = ("auto", "onednn", "aten")
CPU_GEMM_ENV = "BERT_CPU_GEMM"


def _resolve_cpu_gemm(choice: str, source: str = CPU_GEMM_ENV) -> str:
    if choice not in CPU_GEMM_CHOICES:
        raise InputError(f"{source}={choice!r}: choose one of {', '.join(CPU_GEMM_CHOICES)}")
    onednn_usable = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    if choice == "auto":
        return "onednn" if onednn_usable and platform.machine().lower() in ("x86_64", "amd64") else "aten"
    if choice == "onednn" and not onednn_usable:
        raise InputError(f"{source}=onednn: this torch build has no oneDNN (mkldnn) linear")
    return choice


_cpu_gemm = "unset"


def cpu_gemm_backend() -> str:
    """"onednn" or "aten": which library does fp32 CPU matrix products (resolved on first use)."""
    global _cpu_gemm
    if _cpu_gemm == "unset":
        _cpu_gemm = _resolve_cpu_gemm(os.environ.get(CPU_GEMM_ENV, "auto"))
    return _cpu_gemm


def set_cpu_gemm_backend(choice: str, source: str = CPU_GEMM_ENV) -> str:
    """Pick the fp32 CPU GEMM library ("auto", "onednn" or "aten"); returns the one in use."""
    global _cpu_gemm
    _cpu_gemm = _resolve_cpu_gemm(choice, source)
    return _cpu_gemm


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    """The kernel flags every script that runs the model shares (one argument group)."""
    g = parser.add_argument_group("kernels")
    g.add_argument("--cpu_gemm", choices=CPU_GEMM_CHOICES, default=None,
                   help="library for fp32 matrix products on the CPU: onednn (about 2x faster on AMD Zen), "
                        "aten (torch's BLAS, MKL on x86) or auto (onednn on x86-64 when torch has it). "
                        f"Default: the {CPU_GEMM_ENV} environment variable, else auto")


def configure_kernels(args: argparse.Namespace) -> None:
    """Apply the flags of `add_kernel_arguments`; a flag left out keeps the environment's default."""
    if getattr(args, "cpu_gemm", None) is not None:
        set_cpu_gemm_backend(args.cpu_gemm, source="--cpu_gemm")
    else:
        set_cpu_gemm_backend(os.environ.get(CPU_GEMM_ENV, "auto"), source=CPU_GEMM_ENV)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------

def _onednn_matmul_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) for 2-D fp32 CPU tensors, in oneDNN; a and b may be transposed views."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """F.linear over [N, in] with all three products (forward, input and weight gradients) in oneDNN."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_matmul_t(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _onednn_matmul_t(grad, weight.t()) if ctx.needs_input_grad[0] else None
        grad_w = _onednn_matmul_t(grad.t(), x.t()) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def _onednn_linear_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and x.numel() > 0
            and (bias is None or bias.dtype == torch.float32) and not torch.is_autocast_enabled("cpu")
            and cpu_gemm_backend() == "onednn")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, through oneDNN for fp32 on the CPU when that backend is on (see `cpu_gemm_backend`).

    Autocast (bf16 already goes to oneDNN there), other devices and dtypes, torch.compile (which
    lowers linears itself) and tracing or export (ONNX, TorchScript: the graph must hold F.linear)
    take F.linear.
    """
    if _tracing() or not _onednn_linear_applies(x, weight, bias):
        return F.linear(x, weight, bias)
    if x.dim() == 2:
        return _OneDNNLinear.apply(x, weight, bias)
    rows = x.reshape(-1, x.size(-1))
    return _OneDNNLinear.apply(rows, weight, bias).view(*x.shape[:-1], weight.size(0))


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
