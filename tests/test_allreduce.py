"""Bug 1: the fp16 post-accumulation all-reduce on 2 real gloo ranks must not overflow."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training import allreduce_post_accumulation

WORLD, ACCUM = 2, 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, fp16: bool, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        # Loss-scaled gradients summed over 64 micro-steps: each micro-step adds ~2000 (scale 2^11 × ~1),
        # so the sums reach ~1.3e5, beyond fp16's 65504, while the means (~2000) are far inside it.
        per_micro = torch.tensor([2000.0 + rank, -1500.0, 0.25 * (rank + 1), 1024.0])
        grads = [(per_micro * ACCUM).clone(), (per_micro[:2] * ACCUM).reshape(1, 2).clone()]
        allreduce_post_accumulation(grads, WORLD * ACCUM, fp16)
        results[rank] = [g.clone() for g in grads]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fp16", [True, False], ids=["fp16", "fp32"])
def test_post_accumulation_allreduce_means_large_scaled_gradients_without_overflow(fp16):
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.start_processes(_rank, args=(_free_port(), fp16, results), nprocs=WORLD, start_method="spawn", join=True)
    mean = torch.tensor([2000.5, -1500.0, 0.375, 1024.0])
    for rank in range(WORLD):
        first, second = results[rank]
        assert torch.isfinite(first).all() and torch.isfinite(second).all()
        tolerance = 1e-3 if fp16 else 1e-6  # fp16 rounds to 11 significant bits on the wire
        torch.testing.assert_close(first, mean, rtol=tolerance, atol=1e-3)
        torch.testing.assert_close(second, mean[:2].reshape(1, 2), rtol=tolerance, atol=1e-3)
