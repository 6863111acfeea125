"""Device-specific fast paths behind the small interface the model calls.

The model (`modeling.py`) only calls:

* `linear(x, weight, bias)` — F.linear; fp32 on the CPU goes through oneDNN when that backend is on;
* `dropout(x, p, training)` — inverted dropout; on the CPU with a cheaper mask;
* `attention(q, k, v, layout, dropout_p)` — multi-head attention over the padded layout (a boolean
  padding mask or None) or over packed real tokens (`PackedTokens`); `padding_mask` builds the mask;
* `PackedTokens` and `should_pack` — where the real tokens of a padded batch are, and whether the
  encoder should run on them only (the CPU);
* `PackedSequences` — a batch packed on the host before it reaches the device (real tokens only from
  the embeddings on, with the sequences' offsets; `batch_packing.pack_batch` builds it), and
  `varlen_attention` over it: FlashAttention's variable-length kernel with dropout on CUDA
  (`flash_varlen_problem` says where it cannot run), a block-diagonal SDPA reference for tests.

Why two packed layouts: `PackedTokens` is found inside the model from a padded batch's mask, which is
free on the CPU (the mask is already there) but would cost a host sync per step on a GPU; so on CUDA
the batch is packed on the host instead (`PackedSequences`), before it is copied to the device.
Scripts expose the library choice through `add_kernel_arguments` and `configure_kernels`. This module
imports torch and input_checks only.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from input_checks import InputError

# --------------------------------------------------------------------------------------------
# Backend choice (flags and environment)
# --------------------------------------------------------------------------------------------

# fp32 matrix products on the CPU: "onednn" sends them to oneDNN, "aten" leaves them to torch's BLAS
# (MKL on x86). Which is faster depends on the CPU's vector width, not on the vendor: where torch runs
# its AVX-512 kernels (Zen 4, Zen 5, Intel since Skylake-SP) oneDNN's fp32 GEMM is as fast as MKL's or
# faster (2.4x on a Zen 5, 10-25% on a Zen 4's forward product); on AVX2-only CPUs (Zen 3 and older,
# most laptops) MKL's is faster, by 10-45% on the gradient products of a Zen 3. So "auto" is a fixed
# rule on torch's CPU capability (`default_cpu_gemm`), never a timing: a timing can differ between two
# processes on one machine, and two libraries round differently, so a run and its resume (or two ranks)
# would not compute the same weights. BERT_CPU_GEMM in the environment sets the default of --cpu_gemm,
# so setups written before the flag keep working.
CPU_GEMM_CHOICES = ("auto", "onednn", "aten")
CPU_GEMM_ENV = "BERT_CPU_GEMM"


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def default_cpu_gemm(capability: str | None = None) -> tuple[str, str]:
    """The library "auto" picks on this CPU and why, from torch's CPU capability ("AVX512", "AVX2", ...)."""
    capability = capability or torch.backends.cpu.get_cpu_capability()
    if not onednn_linear_available():
        return "aten", "this torch build has no oneDNN linear"
    if capability.startswith("AVX512"):
        return "onednn", f"the CPU runs torch's {capability} kernels, where oneDNN's fp32 GEMM is the faster"
    return "aten", f"the CPU runs torch's {capability} kernels (no AVX-512), where MKL's fp32 GEMM is the faster"


def _resolve_cpu_gemm(choice: str, source: str = CPU_GEMM_ENV) -> str:
    if choice not in CPU_GEMM_CHOICES:
        raise InputError(f"{source}={choice!r}: choose one of {', '.join(CPU_GEMM_CHOICES)}")
    if choice == "auto":
        return default_cpu_gemm()[0]
    if choice == "onednn" and not onednn_linear_available():
        raise InputError(f"{source}=onednn: this torch build has no oneDNN (mkldnn) linear")
    return choice


# None until first use.
_cpu_gemm: str | None = None


def cpu_gemm_backend() -> str:
    """"onednn" or "aten": the library of every fp32 CPU matrix product of a linear (resolved on first use)."""
    global _cpu_gemm
    if _cpu_gemm is None:
        _cpu_gemm = _resolve_cpu_gemm(os.environ.get(CPU_GEMM_ENV, "auto"))
    return _cpu_gemm


def set_cpu_gemm_backend(choice: str, source: str = CPU_GEMM_ENV) -> str:
    """Pick the fp32 CPU GEMM library ("auto", "onednn" or "aten"); returns the library in use."""
    global _cpu_gemm
    _cpu_gemm = _resolve_cpu_gemm(choice, source)
    return _cpu_gemm


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    """The kernel flags every script that runs the model shares (one argument group)."""
    g = parser.add_argument_group("kernels")
    g.add_argument("--cpu_gemm", choices=CPU_GEMM_CHOICES, default=None,
                   help="library for fp32 matrix products on the CPU: onednn, aten (torch's BLAS, MKL on x86) or "
                        "auto (onednn where torch runs AVX-512 kernels, aten elsewhere: the faster of the two there, "
                        "and the same choice in every process). "
                        f"Default: the {CPU_GEMM_ENV} environment variable, else auto")


def configure_kernels(args: argparse.Namespace) -> None:
    """Apply the flags of `add_kernel_arguments`; a flag left out keeps the environment's default."""
    if getattr(args, "cpu_gemm", None) is not None:
        set_cpu_gemm_backend(args.cpu_gemm, source="--cpu_gemm")
    else:
        set_cpu_gemm_backend(os.environ.get(CPU_GEMM_ENV, "auto"), source=CPU_GEMM_ENV)


def _tracing() -> bool:
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export())


def plain_inference() -> bool:
    """Under torch.inference_mode and not being traced, compiled or exported: tensors derived from the
    weights may be kept between calls (a graph being recorded must derive them from the weights)."""
    # _tracing() first: dynamo cannot trace torch.is_inference_mode_enabled (a graph break per layer).
    return not _tracing() and torch.is_inference_mode_enabled()


class StackedParameters:
    """Groups of parameters concatenated along dim 0 (Q, K and V weights for one GEMM). In plain
    inference the result is kept until a parameter changes (in place or replaced): concatenating
    3·hidden² weights every call was ~2% of a batch-1 CPU forward. In training or while a graph is
    recorded it is made afresh, so gradients reach the separate parameters."""

    def __init__(self) -> None:
        self._cache: tuple[tuple[int, ...], list[torch.Tensor]] | None = None

    def __call__(self, *groups: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        params = [p for group in groups for p in group]
        # Inference tensors (weights made under inference_mode) have no version counter to key a cache on.
        if not plain_inference() or any(p.is_inference() for p in params):
            return [torch.cat(group) for group in groups]
        key = tuple(v for p in params for v in (p.data_ptr(), p._version))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, [torch.cat(group) for group in groups])
        return self._cache[1]


# --------------------------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------------------------

def _onednn_matmul_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T (+ bias) for 2-D fp32 CPU tensors, in oneDNN; a and b may be transposed views."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """F.linear over [N, in] with its three products (forward, input and weight gradients) in oneDNN."""

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


def fuse_qkv_products(x: torch.Tensor) -> bool:
    """Whether attention's Q, K and V come from one GEMM over the stacked weights (else three).

    One wide product wins on GPUs and in oneDNN. In torch's BLAS on the CPU (MKL, the library `auto` picks
    without AVX-512) three products of width H ran 15-17% faster than one of width 3H at 3,072 rows and
    the same at 384 (AMD Zen 3, BERT-base). A graph being traced, compiled or exported keeps the fused
    form, so an exported model is the same whichever CPU exported it.
    """
    return (_tracing() or x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
            or cpu_gemm_backend() != "aten")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with fp32 CPU products in oneDNN where `cpu_gemm_backend` says so.

    Autocast (bf16 already goes to oneDNN there), other devices and dtypes, the aten library,
    torch.compile (which lowers linears itself) and tracing or export (ONNX, TorchScript: the graph
    must hold F.linear) take F.linear.
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
    """[B, S] 1/0 mask → boolean [B, 1, 1, S] for SDPA (None stays None)."""
    if attention_mask is None:
        return None
    return attention_mask.to(torch.bool)[:, None, None, :]  # not .bool(): TorchScript compiles this function


def attention_layout(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """`padding_mask`, or None when nothing is padded on the CPU: SDPA's CPU kernel runs faster without a
    mask, and the check is one reduction there (on a GPU it would wait for the device; a traced or
    exported graph must keep taking the mask)."""
    mask = padding_mask(attention_mask)
    if mask is not None and mask.device.type == "cpu" and not _tracing() and bool(mask.all()):
        return None
    return mask


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


@dataclass
class PackedSequences:
    """Where each sequence's real tokens lie in a packed [T, ...] layout (built on the host, `pack_batch`).

    cu_seqlens: int32 [B + 2]: sequence b holds tokens cu_seqlens[b] : cu_seqlens[b + 1]; the last
    segment is filler (at least one token) that rounds T up to a bucket, so shapes repeat across steps.
    max_seqlen: an upper bound of any segment's length (the shard's sequence length): a host int, so
    the kernel launch needs no device-to-host read. flash: attention runs FlashAttention's varlen
    kernel (decided on the host: CUDA, fp16/bf16, sm80+, see `flash_varlen_available`), else the
    block-diagonal reference.
    """

    cu_seqlens: torch.Tensor
    max_seqlen: int
    position_ids: torch.Tensor  # [T] position of each token in its sequence (0 for filler)
    first_token: torch.Tensor  # [B] packed index of each sequence's [CLS]
    flash: bool = False

    def to(self, device: torch.device, non_blocking: bool = False) -> PackedSequences:
        return PackedSequences(self.cu_seqlens.to(device, non_blocking=non_blocking), self.max_seqlen,
                               self.position_ids.to(device, non_blocking=non_blocking),
                               self.first_token.to(device, non_blocking=non_blocking), self.flash)

    def pin_memory(self) -> PackedSequences:
        return PackedSequences(self.cu_seqlens.pin_memory(), self.max_seqlen, self.position_ids.pin_memory(),
                               self.first_token.pin_memory(), self.flash)

    def as_fields(self) -> dict[str, Any]:
        """The fields as batch entries (so a batch of plain tensors can carry them to the device)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_fields(cls, batch: dict[str, Any]) -> PackedSequences | None:
        """Inverse of `as_fields`; None for a padded batch."""
        return cls(**{f.name: batch[f.name] for f in fields(cls)}) if "cu_seqlens" in batch else None


def mark_token_count_dynamic(*token_tensors: torch.Tensor) -> None:
    """Tell torch.compile that dim 0 of these packed [T, ...] tensors (the token count T) varies.

    Without it dynamo compiles a graph specialised to the first T and recompiles everything with T
    dynamic at the second (minutes each for BERT-large with inductor); marked, the first compile is
    already dynamic in T and serves every later batch. Call on the tensors the compiled region takes."""
    for tensor in token_tensors:
        torch._dynamo.mark_dynamic(tensor, 0)


# FlashAttention-2's kernels are built for head dims that are multiples of 8, up to 256.
FLASH_MAX_HEAD_DIM = 256


def flash_head_dim_problem(head_dim: int) -> str | None:
    """Why FlashAttention's kernel cannot take this head dim (None when it can)."""
    if head_dim % 8 or not 0 < head_dim <= FLASH_MAX_HEAD_DIM:
        return (f"head dim {head_dim} (hidden_size / num_attention_heads) must be a multiple of 8 "
                f"and at most {FLASH_MAX_HEAD_DIM}")
    return None


def flash_varlen_problem(device: torch.device, precision: str, head_dim: int | None = None) -> str | None:
    """Why FlashAttention's variable-length kernel cannot run for this device, training precision and
    head dim (None when it can): it needs CUDA sm80+ (Ampere and later), fp16/bf16 autocast, torch's
    flash kernels enabled and a head dim it was built for."""
    if precision not in ("fp16", "bf16"):
        return f"precision {precision}: the kernel computes in fp16/bf16 only"
    if head_dim is not None and flash_head_dim_problem(head_dim):
        return flash_head_dim_problem(head_dim)
    if device.type != "cuda":
        return f"device {device.type}: the kernel runs on CUDA only"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    if not hasattr(torch.ops.aten, "_flash_attention_forward"):
        return "this torch build has no aten._flash_attention_forward"
    if not torch.backends.cuda.flash_sdp_enabled():
        return "torch's flash attention kernels are disabled (torch.backends.cuda.enable_flash_sdp)"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return f"compute capability {major}.{minor} (the kernel needs 8.0 or later)"
    return None


def flash_varlen_available(device: torch.device, precision: str, head_dim: int | None = None) -> bool:
    """Whether FlashAttention's variable-length kernel can run here (see `flash_varlen_problem`)."""
    return flash_varlen_problem(device, precision, head_dim) is None


class FlashVarlenAttention(torch.autograd.Function):
    """aten's FlashAttention-2 forward/backward over packed [T, heads, d] tensors with cu_seqlens.

    Chosen because it keeps attention dropout in torch 2.11 and 2.13 alike (the dropout mask is
    regenerated in backward from the Philox state the forward returns). The public varlen helper
    (torch.nn.attention.varlen) fixes dropout at 0; nested jagged tensors through SDPA also reach
    this kernel but need the batch's max length (a device-to-host read unless carried along) and
    add wrapper work around every attention call. Arguments are passed positionally up to
    `return_debug_mask`, plus `scale`: those have had the same meaning in every release since 2.1.
    Both ops have meta kernels, so torch.compile traces through this function.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int, dropout_p: float, scale: float) -> torch.Tensor:
        out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, dropout_p, False, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, rng_state, unused)
        ctx.max_seqlen, ctx.dropout_p, ctx.scale = max_seqlen, dropout_p, scale
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        q, k, v, out, lse, cu_seqlens, rng_state, unused = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad_out.contiguous(), q, k, v, out, lse, cu_seqlens, cu_seqlens, ctx.max_seqlen, ctx.max_seqlen,
            ctx.dropout_p, False, rng_state, unused, scale=ctx.scale)
        return dq, dk, dv, None, None, None, None


def block_diagonal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             dropout_p: float, scale: float) -> torch.Tensor:
    """The same attention through SDPA with a [T, T] block-diagonal mask: each token attends to its
    own sequence only. The reference the varlen kernel is checked against and the CPU stand-in for
    tests (O(T²) memory, no host reads, so it also compiles); not a production path."""
    tokens = torch.arange(q.size(0), device=q.device, dtype=cu_seqlens.dtype)
    segment = torch.searchsorted(cu_seqlens, tokens, right=True)
    mask = segment[:, None] == segment[None, :]
    out = F.scaled_dot_product_attention(*(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), attn_mask=mask,
                                         dropout_p=dropout_p, scale=scale)
    return out[0].transpose(0, 1)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packed: PackedSequences,
                     dropout_p: float) -> torch.Tensor:
    """Attention within each packed sequence: q, k, v [T, heads, d] → [T, heads, d]."""
    scale = 1.0 / math.sqrt(q.size(-1))
    if packed.flash:
        problem = flash_head_dim_problem(q.size(-1))  # the raw op would fail deep in the kernel, or worse
        if problem:
            raise ValueError(f"FlashAttention varlen: {problem}")
        return FlashVarlenAttention.apply(q, k, v, packed.cu_seqlens, packed.max_seqlen, dropout_p, scale)
    return block_diagonal_attention(q, k, v, packed.cu_seqlens, dropout_p, scale)


def gather_positions(sequence: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[B, S, H] gathered at [B, P] positions → [B, P, H]."""
    index = positions.unsqueeze(-1).expand(-1, -1, sequence.size(-1))
    return torch.gather(sequence, 1, index)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def should_pack(x: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Run the encoder on packed real tokens? On the CPU, when the batch has padding. (On GPUs finding the
    tokens would cost a host sync per step: there batches come packed from the host, `PackedSequences`;
    traced graphs keep the plain layout.)"""
    return mask is not None and x.device.type == "cpu" and not _tracing() and not bool(mask.all())


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: torch.Tensor | PackedTokens | PackedSequences | None,
    dropout_p: float,
) -> torch.Tensor:
    """Multi-head attention; all attention in the model goes through here.

    Padded: q, k, v are [B, heads, S, d] and `layout` is a boolean [B, 1, 1, S] mask (True where a key
    may be attended) or None; returns [B, heads, S, d].
    Packed: q, k, v are [T, heads, d] (the real tokens) and `layout` is their `PackedTokens` (the CPU
    encoder's packing of a padded batch) or `PackedSequences` (batches packed on the host, attention
    per sequence: FlashAttention's varlen kernel on CUDA); returns [T, heads, d].
    """
    if isinstance(layout, PackedSequences):
        return varlen_attention(q, k, v, layout, dropout_p)
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
