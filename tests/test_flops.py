"""FLOPs and MFU: the peak table keyed by exact GPU names and by precision (bug 4), FLOPs on real tokens."""
from __future__ import annotations

import pytest
import torch
from pretrain_helpers import TINY_MODEL

from flops import (
    GPU_PEAK_TFLOPS,
    FlopsCounter,
    model_flops_utilization,
    peak_flops,
    training_flops,
    training_flops_per_sequence,
)
from modeling import BertConfig


@pytest.mark.parametrize(("name", "precision", "tflops"), [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
    ("NVIDIA H100 PCIe", "bf16", 756.5),  # a substring match gave PCIe and NVL the SXM peak
    ("NVIDIA H100 NVL", "fp16", 835.5),
    ("NVIDIA H100 80GB HBM3", "tf32", 494.7),  # tf32 runs count against the TF32 peak, not bf16's
    ("NVIDIA H100 80GB HBM3", "fp32", 66.9),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA A100-PCIE-40GB", "tf32", 156.0),
    ("NVIDIA A10", "bf16", 125.0),  # "A10" is a prefix of "A100": exact names keep them apart
    ("NVIDIA L40S", "bf16", 362.05),
    ("Tesla V100-SXM2-32GB", "fp16", 125.0),
])
def test_peak_by_exact_name_and_precision(name, precision, tflops):
    assert peak_flops(name, precision) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize(("name", "precision"), [
    ("Tesla V100-SXM2-16GB", "bf16"),  # V100 has no bf16
    ("Tesla V100-SXM2-16GB", "tf32"),
    ("NVIDIA H100 80GB HBM3 (prototype)", "bf16"),  # unknown name: omitted, not guessed
    ("NVIDIA A100", "bf16"),
])
def test_unknown_gpu_or_precision_gives_no_peak(name, precision):
    assert peak_flops(name, precision) is None


def test_every_peak_orders_precisions_as_the_hardware_does():
    for name, peaks in GPU_PEAK_TFLOPS.items():
        if "tf32" in peaks:
            assert peaks["bf16"] == peaks["fp16"] > peaks["tf32"] >= peaks["fp32"], name
        else:
            assert peaks["fp16"] > peaks["fp32"] and "bf16" not in peaks, name


def _config() -> BertConfig:
    return BertConfig.from_dict(TINY_MODEL)


def test_real_token_flops_are_the_per_sequence_flops_of_the_real_lengths():
    config, lengths = _config(), torch.tensor([128, 37, 90, 5])
    expected = sum(training_flops_per_sequence(config, int(n), 20) for n in lengths)
    assert training_flops(config, lengths, 20) == pytest.approx(expected, rel=1e-12)
    expected_all = sum(training_flops_per_sequence(config, int(n), None) for n in lengths)
    assert training_flops(config, lengths, None) == pytest.approx(expected_all, rel=1e-12)


def test_counter_separates_real_and_padded_work_and_resets():
    config = _config()
    counter = FlopsCounter(config, masked=20)
    mask = (torch.arange(128)[None] < torch.tensor([128, 64])[:, None]).long()
    counter.add(mask)
    work = counter.take()
    assert (work.real_tokens, work.padded_tokens) == (192, 256)
    assert work.padded_flops == pytest.approx(2 * training_flops_per_sequence(config, 128, 20))
    assert work.real_flops == pytest.approx(training_flops_per_sequence(config, 128, 20)
                                            + training_flops_per_sequence(config, 64, 20))
    assert counter.take().real_flops == 0.0


def test_counter_counts_a_trimmed_batch_at_its_own_width():
    """A length-binned batch trimmed to 64 columns is computed at 64, not at the shard's 128."""
    config = _config()
    counter = FlopsCounter(config, masked=20)
    counter.add((torch.arange(64)[None] < torch.tensor([64, 40])[:, None]).long())
    work = counter.take()
    assert work.padded_tokens == 128
    assert work.padded_flops == pytest.approx(2 * training_flops_per_sequence(config, 64, 20))


def test_mfu_is_omitted_off_cuda():
    assert model_flops_utilization(1e15, 1.0, torch.device("cpu"), "bf16") is None
