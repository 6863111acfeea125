"""Process setup: the `--device` name, the process group under torchrun or SLURM, rank queries,
collectives on Python scalars and seeding. torch is imported inside the functions that need it, so the data-preparation
workers start without it."""
from __future__ import annotations

import datetime as _dt
import os
import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from input_checks import InputError

if TYPE_CHECKING:
    import torch


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: Any = None  # torch.device; CPU when not given

    def __post_init__(self) -> None:
        import torch

        self.device = torch.device(self.device or "cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def discover_ranks() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's variables, else SLURM's, else a single process.

    torchrun's names win: under `srun torchrun ...` the children inherit SLURM_PROCID=0.
    """
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    return rank, local_rank, world_size


DEVICE_NAME = re.compile(r"^(auto|cpu|cuda)$|^cuda:(\d+)$")


def check_device_name(device: str | None) -> int | None:
    """InputError unless `device` is auto, cpu, cuda or cuda:N with such a GPU here (another name, such as
    "gpu" or "tpu:7", used to train on the CPU); the N of cuda:N, else None."""
    import torch

    match = DEVICE_NAME.match(device or "auto")
    if match is None:
        raise InputError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available here")
    index = int(match.group(2)) if match.group(2) is not None else None
    if index is not None and index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    return index


def init_distributed(device: str | None = None) -> DistEnv:
    """Initialise the process group when launched by torchrun or srun; pick the device.

    NCCL on GPU, gloo on CPU. MASTER_ADDR/MASTER_PORT must be set for SLURM launches
    (run.sub exports them); torchrun sets them itself.
    """
    import torch
    import torch.distributed as dist

    rank, local_rank, world_size = discover_ranks()
    index = check_device_name(device)
    if index is not None and world_size > 1:
        raise InputError(f"--device {device} names one GPU for {world_size} processes; pass --device cuda "
                         "(each process takes its local rank's GPU)")
    want_cuda = torch.cuda.is_available() if device in (None, "auto") else device.startswith("cuda")
    if want_cuda:
        torch.cuda.set_device(index if index is not None else local_rank % max(torch.cuda.device_count(), 1))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(**process_group_options(dev, rank, world_size))
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def process_group_options(device: torch.device, rank: int, world_size: int) -> dict[str, Any]:
    """Arguments of `init_process_group` for this rank: NCCL bound to its GPU, or gloo on the CPU.

    `device_id` binds the NCCL communicator to this rank's GPU when the group is created, so a
    barrier or collective never guesses the device (torch warns "using GPU 0 ... device under
    current context" without it, and ranks can then deadlock on the wrong GPU).
    """
    options: dict[str, Any] = {
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "rank": rank,
        "world_size": world_size,
        "timeout": _dt.timedelta(minutes=30),
    }
    if device.type == "cuda":
        options["device_id"] = device
    return options


def _dist():
    import torch.distributed as dist

    return dist


def cleanup_distributed() -> None:
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        # Seen under srun with gloo: a rank exiting straight after destroy sometimes aborted with
        # "terminate called without an active exception" (about 1 run in 5); with the barrier
        # and this short pause, 20 repeated runs passed. The root cause is inside gloo's teardown.
        time.sleep(0.5)


def get_rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    dist = _dist()
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        _dist().barrier()


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a Python scalar over ranks (identity for one process)."""
    if get_world_size() == 1:
        return float(value)
    import torch

    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    _dist().all_reduce(t)
    return float(t.item()) / get_world_size()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    if not -(2**63) <= seed < 2**63 - 2**16:  # torch's generator takes 64 bits (ranks add their rank to it)
        raise InputError(f"--seed must be a whole number of at most 63 bits, got {seed}")

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
