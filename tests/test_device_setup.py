"""Device setup: the process-group arguments per device (distributed.py) and the TF32 switch (precision.py)."""
from __future__ import annotations

import datetime

import pytest
import torch

import distributed
from precision import apply_tf32


def test_nccl_group_is_bound_to_the_rank_gpu():
    options = distributed.process_group_options(torch.device("cuda", 3), rank=3, world_size=8)
    assert options["backend"] == "nccl"
    assert options["device_id"] == torch.device("cuda", 3)
    assert (options["rank"], options["world_size"]) == (3, 8)
    assert options["timeout"] == datetime.timedelta(minutes=30)


def test_gloo_group_has_no_device_id():
    options = distributed.process_group_options(torch.device("cpu"), rank=1, world_size=2)
    assert options["backend"] == "gloo"
    assert "device_id" not in options


@pytest.fixture
def restore_precision_switches():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)
    if hasattr(torch.backends.cudnn, "conv"):
        torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = "ieee"


@pytest.mark.parametrize(("precision", "tf32"), [("tf32", True), ("fp32", False), ("bf16", False)])
def test_tf32_switch_uses_the_per_backend_precision(restore_precision_switches, precision, tf32):
    apply_tf32(precision)
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch < 2.9: legacy flags only
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        return
    expected = "tf32" if tf32 else "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == expected
    assert torch.backends.cudnn.conv.fp32_precision == expected
    assert torch.backends.cudnn.rnn.fp32_precision == expected
    # inductor reads the legacy getter while compiling: it must stay readable and agree
    assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
