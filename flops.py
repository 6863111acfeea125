"""Model FLOPs of BERT pretraining and model FLOPs utilisation (MFU) on a GPU.

FLOPs count the matrix multiplications of one training step (forward + backward = 3 × forward) of
one sequence; MFU divides the achieved FLOPs per second by the card's bf16 dense peak.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from modeling import BertConfig

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def training_flops_per_sequence(config: BertConfig, seq_len: int, masked: int | None) -> float:
    """Forward + backward FLOPs (3× forward) of one sequence; MLM head on `masked` positions (None = all)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token_layer = 2 * (4 * h * h + 2 * h * i)
    attention = 2 * 2 * seq_len * seq_len * h
    head_positions = seq_len if masked is None else masked
    head = head_positions * 2 * (h * h + h * config.padded_vocab_size)
    forward = layers * (per_token_layer * seq_len + attention) + head + 2 * h * h
    return 3.0 * forward


def model_flops_utilization(config: BertConfig, device: torch.device, seq_per_s_per_rank: float, seq_len: int,
                            masked: int | None) -> float | None:
    """Fraction of the GPU's bf16 peak achieved; None off CUDA, for an unknown card or before any step."""
    if device.type != "cuda" or seq_per_s_per_rank <= 0:
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    if peak is None:
        return None
    return training_flops_per_sequence(config, seq_len, masked) * seq_per_s_per_rank / peak
