"""Model FLOPs of BERT pretraining and model FLOPs utilisation (MFU) on a GPU.

FLOPs count the matrix multiplications of one training step (forward + backward = 3 × forward).
They are counted on the real tokens of each sequence (what a padding-free run must compute) and on
the padded batch (what the padded layout computes); MFU divides the FLOPs achieved per second by
the card's dense peak for the run's precision, looked up by the exact GPU name.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from modeling import BertConfig

# Dense peak TFLOP/s per precision (no sparsity), keyed by the exact `torch.cuda.get_device_name()`.
# tf32 runs count against the TF32 tensor-core peak, fp32 runs against the plain FP32 peak; a missing
# entry (V100 has no bf16 or tf32) means no MFU is logged. Source: NVIDIA's datasheets.
_H100_SXM = {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}
_H100_NVL = {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}
_A100 = {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}
_V100_SXM2 = {"fp16": 125.0, "fp32": 15.7}
_V100_PCIE = {"fp16": 112.0, "fp32": 14.0}
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100 80GB HBM3e": _H100_SXM,
    "NVIDIA H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "NVIDIA H100 NVL": _H100_NVL,
    "NVIDIA H200": _H100_SXM,
    "NVIDIA H200 NVL": _H100_NVL,
    "NVIDIA GH200 480GB": _H100_SXM,
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "NVIDIA L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "NVIDIA L40S": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "NVIDIA L40": {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5},
    "Tesla V100-SXM2-16GB": _V100_SXM2,
    "Tesla V100-SXM2-32GB": _V100_SXM2,
    "Tesla V100-PCIE-16GB": _V100_PCIE,
    "Tesla V100-PCIE-32GB": _V100_PCIE,
    "Tesla V100S-PCIE-32GB": {"fp16": 130.0, "fp32": 16.4},
    "Tesla T4": {"fp16": 65.0, "fp32": 8.1},
}


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of this exact GPU for this precision, or None when unknown (MFU is then omitted)."""
    value = GPU_PEAK_TFLOPS.get(device_name.strip(), {}).get(precision)
    return None if value is None else value * 1e12


def training_flops_per_sequence(config: BertConfig, seq_len: int, masked: int | None) -> float:
    """Forward + backward FLOPs (3× forward) of one sequence; MLM head on `masked` positions (None = all)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token_layer = 2 * (4 * h * h + 2 * h * i)
    attention = 2 * 2 * seq_len * seq_len * h
    head_positions = seq_len if masked is None else masked
    head = head_positions * 2 * (h * h + h * config.padded_vocab_size)
    forward = layers * (per_token_layer * seq_len + attention) + head + 2 * h * h
    return 3.0 * forward


def training_flops(config: BertConfig, lengths: torch.Tensor, masked: int | None) -> float:
    """Σ of `training_flops_per_sequence` over sequences of these real lengths (the work on real tokens)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    lengths = lengths.to(torch.float64)
    tokens, squares, count = float(lengths.sum()), float((lengths * lengths).sum()), lengths.numel()
    head_positions = tokens if masked is None else masked * count
    head = head_positions * 2 * (h * h + h * config.padded_vocab_size)
    forward = layers * (2 * (4 * h * h + 2 * h * i) * tokens + 4 * h * squares) + head + 2 * h * h * count
    return 3.0 * forward


@dataclass
class WorkDone:
    real_flops: float = 0.0  # training FLOPs on the real tokens (what a padding-free run must compute)
    padded_flops: float = 0.0  # the same for the padded batches (what the padded layout computes)
    real_tokens: int = 0
    padded_tokens: int = 0


class FlopsCounter:
    """Work of the micro-batches counted since the last `take()`, from their masks on the host."""

    def __init__(self, config: BertConfig, masked: int | None):
        self.config, self.masked = config, masked
        self.work = WorkDone()

    def add(self, input_mask: torch.Tensor) -> None:
        """Count one micro-batch from its [B, S] attention mask (a host tensor: no device read); S is the
        width the batch is computed at (the shard's length, or its bin's edge with --bin_size)."""
        lengths = input_mask.sum(dim=1)
        self.work.real_flops += training_flops(self.config, lengths, self.masked)
        width = input_mask.size(1)
        self.work.padded_flops += training_flops_per_sequence(self.config, width, self.masked) * input_mask.size(0)
        self.work.real_tokens += int(lengths.sum())
        self.work.padded_tokens += input_mask.numel()

    def take(self) -> WorkDone:
        done, self.work = self.work, WorkDone()
        return done


def model_flops_utilization(flops: float, seconds: float, device: torch.device, precision: str) -> float | None:
    """FLOPs done per second on this rank's GPU over its peak for `precision`; None off CUDA, before any
    step, or for a GPU/precision without a known peak (noted once on stderr)."""
    if device.type != "cuda" or seconds <= 0 or flops <= 0:
        return None
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name, precision)
    if peak is None:
        _note_once(f"MFU not logged: no {precision} peak known for GPU {name!r} (flops.GPU_PEAK_TFLOPS)")
        return None
    return flops / seconds / peak


_NOTES_GIVEN: set[str] = set()


def _note_once(message: str) -> None:
    if message not in _NOTES_GIVEN:
        _NOTES_GIVEN.add(message)
        print(f"note: {message}", file=sys.stderr, flush=True)
