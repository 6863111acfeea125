"""Host-side batch preparation for packed (unpadded) pretraining: the --unpad flags and their choice,
`pack_batch` (a padded micro-batch → real tokens with their sequences' offsets, on the CPU before the
batch reaches the device) and `masked_positions_from_labels` (fixed-size masked positions from labels).

The device side of packing (the `PackedSequences` layout and attention over it) is `bert_kernels`'.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from bert_kernels import PackedSequences, round_up
from input_checks import InputError

UNPAD_CHOICES = ("auto", "on", "off", "reference")


def add_packing_arguments(parser: argparse.ArgumentParser) -> None:
    """--unpad and --pack_bucket (run_pretraining.py): packed batches of real tokens, see `pack_batch`."""
    parser.add_argument("--unpad", choices=UNPAD_CHOICES, default="auto",
                        help="packed batches, real tokens only from the embeddings on, attention by FlashAttention's "
                             "varlen kernel: auto = where that kernel runs (CUDA sm80+, fp16/bf16, head dim a multiple "
                             "of 8 up to 256), else padded (the choice and its reason are printed once); on = always, "
                             "an error where the kernel cannot run; off = padded batches (the CPU still packs its "
                             "layers); reference = packed batches with a block-diagonal SDPA attention (O(T^2) memory: "
                             "for tests on any device)")
    parser.add_argument("--pack_bucket", type=int, default=512,
                        help="packed token counts are rounded up to a multiple of this, at most the sequence length "
                             "(few distinct shapes, so kernels are reused)")


@dataclass(frozen=True)
class UnpadChoice:
    """What --unpad resolved to: packed batches or not, FlashAttention for them or not, and why."""

    packed: bool
    flash: bool
    reason: str


def choose_unpad(unpad: str, dense_seq_output: bool, flash_problem: str | None) -> UnpadChoice:
    """Resolve --unpad. `flash_problem` is why FlashAttention's varlen kernel cannot run here (None when
    it can, see `flash_varlen_problem`). `on` where it cannot is an InputError rather than a silent
    O(T²) reference; `reference` asks for that reference explicitly (tests)."""
    if unpad not in UNPAD_CHOICES:
        raise InputError(f"--unpad: unknown value {unpad!r}; choose from {', '.join(UNPAD_CHOICES)}")
    if unpad == "off":
        return UnpadChoice(False, False, "padded batches (--unpad off)")
    if not dense_seq_output:
        if unpad != "auto":
            raise InputError(f"--unpad {unpad} needs the masked-only MLM head (drop --no_dense_seq_output)")
        return UnpadChoice(False, False, "padded batches: --no_dense_seq_output needs every position's MLM logits")
    if unpad == "reference":
        return UnpadChoice(True, False,
                           "packed batches with the block-diagonal reference attention (--unpad reference)")
    if flash_problem is None:
        return UnpadChoice(True, True, "packed batches with FlashAttention's varlen kernel")
    if unpad == "on":
        raise InputError(f"--unpad on: FlashAttention's varlen kernel cannot run here: {flash_problem} "
                         "(use --unpad auto or off)")
    return UnpadChoice(False, False,
                       f"padded batches: FlashAttention's varlen kernel cannot run here ({flash_problem})")


def masked_positions_from_labels(labels: torch.Tensor, max_predictions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked positions of a [B, S] label tensor (−1 = not masked) as a fixed-size [B, P] index.

    Fixed P (the shard's max_predictions_per_seq) keeps shapes static — no host sync, compile-friendly.
    Returns (positions, labels at those positions); filler slots carry label −1 and are ignored by the loss.
    """
    p = min(max_predictions, labels.size(1))
    is_masked = (labels != -1).to(torch.float32)
    # Ties among unmasked slots are broken by position so the choice is deterministic.
    score = is_masked * 2 - torch.arange(labels.size(1), device=labels.device, dtype=torch.float32) / labels.size(1)
    positions = score.topk(p, dim=1, sorted=True).indices
    return positions, torch.gather(labels, 1, positions)


def pack_batch(input_ids: torch.Tensor, segment_ids: torch.Tensor, input_mask: torch.Tensor,
               masked_positions: torch.Tensor, bucket: int = 256, flash: bool = False) -> dict[str, Any]:
    """Host-side packing of one padded micro-batch ([B, S] tensors on the CPU; no device involved).

    Real tokens of row b (the first lengths[b] positions: shards are left-aligned) go to
    cu[b] : cu[b+1]; a filler segment of ≥ 1 token rounds T up to a multiple of `bucket`, so the
    token count takes few distinct values (GEMM and compiled kernels are reused across steps).
    The bucket is capped at the sequence length, so the filler is never longer than `max_seqlen`:
    FlashAttention computes only max_seqlen rows of a segment, and uncomputed filler rows would hold
    garbage that reaches the weight gradients (0 · NaN). masked_positions [B, P] (positions in each
    row) become packed indices.
    """
    batch, seq = input_ids.shape
    lengths = input_mask.sum(dim=1)
    real = int(lengths.sum())
    total = round_up(real + 1, min(bucket, seq))
    cu = torch.zeros(batch + 2, dtype=torch.int32)
    cu[1 : batch + 1] = torch.cumsum(lengths, 0)
    cu[batch + 1] = total
    flat = input_mask.reshape(-1).nonzero().squeeze(1)
    fill = total - real

    def packed(values: torch.Tensor) -> torch.Tensor:
        return torch.cat([values.reshape(-1)[flat], values.new_zeros(fill)])

    positions = torch.arange(seq).expand(batch, seq)
    starts = cu[:batch].to(torch.int64)
    # Filler prediction slots (label -1) may name padding positions; point them at the row's [CLS]
    # so every packed index stays inside its own sequence.
    in_row = torch.where(masked_positions < lengths[:, None], masked_positions, 0)
    return {"input_ids": packed(input_ids), "segment_ids": packed(segment_ids),
            "packed": PackedSequences(cu, seq, packed(positions), starts, flash),
            "masked_positions": in_row + starts[:, None]}
