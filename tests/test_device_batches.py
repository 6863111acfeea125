"""training.DeviceBatches: host-prepared micro-batches, one buffer per micro-batch, exact stream position."""
from __future__ import annotations

import torch

from training import DeviceBatches


def test_step_reads_exactly_its_micro_batches_and_prepares_each():
    source = iter(range(100))
    seen = []

    def prepare(item):
        seen.append(item)
        return {"x": torch.tensor([item])}

    batches = DeviceBatches(source, prepare, torch.device("cpu"))
    assert [int(b["x"]) for b in batches.step(3)] == [0, 1, 2]
    assert seen == [0, 1, 2] and next(source) == 3, "nothing beyond the step's micro-batches is read"
    assert [int(b["x"]) for b in batches.step(2)] == [4, 5]


def test_one_buffer_round_trip_keeps_values_shapes_and_dtypes():
    host = {"ids": torch.arange(12).view(3, 4), "cu": torch.tensor([0, 5, 9], dtype=torch.int32),
            "mask": torch.ones(2, 2, dtype=torch.int8), "labels": torch.tensor([-1, 7]), "max_seqlen": 128,
            "flash": True, "none": None}
    moved = DeviceBatches([], lambda b: b, torch.device("cpu")).to_device(host)
    for key in ("ids", "cu", "mask", "labels"):
        assert moved[key].dtype == host[key].dtype and torch.equal(moved[key], host[key]), key
    assert (moved["max_seqlen"], moved["flash"], moved["none"]) == (128, True, None)
