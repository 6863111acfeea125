"""Numeric precision of a run: the --precision choices, what auto means on this device, autocast and
the TF32 switch."""
from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

from distributed import discover_ranks

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "tf32", "fp16", "bf16")
PRECISION_HELP = ("auto (the default: on the CPU bf16 where oneDNN runs it natively, else fp32; fp32 on a GPU; "
                  "fp16 with the original's --fp16/--amp), fp32, tf32, fp16 (autocast + GradScaler) or bf16 (autocast)")


def cpu_runs_bf16_natively() -> bool:
    """Whether oneDNN has bf16 instructions on this CPU (AVX-512 BF16 or AMX). Without them every bf16
    matrix product falls back to a scalar kernel, about 10-20x slower than fp32 on the same CPU."""
    import torch

    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and probe is not None and probe())


def auto_precision(device_type: str) -> tuple[str, str]:
    """What --precision auto means on this device, and why."""
    if device_type != "cpu":
        return "fp32", f"on {device_type} auto keeps the original's default; ask for bf16 or fp16 explicitly"
    if cpu_runs_bf16_natively():
        return "bf16", "oneDNN runs bf16 natively on this CPU: AVX-512 BF16 or AMX"
    return "fp32", "this CPU has no native bf16, no AVX-512 BF16 or AMX: bf16 would run about 10x slower than fp32"


def _say_on_main_rank(message: str, stream: Any = None) -> None:
    if discover_ranks()[0] == 0:
        print(message, file=stream or sys.stdout, flush=True)


def resolve_precision(precision: str | None, fp16_flag: bool = False, device: Any = "cpu",
                      notes: Any = None) -> str:
    """The precision a run uses: `--precision` when given (auto or absent: see `auto_precision`); the
    original's `--fp16`/`--amp` map to fp16 unless `--precision` names another. Says what auto chose and
    why on `notes` (stdout by default; a script whose stdout is its answer passes stderr), and warns on
    stderr when bf16 is asked for on a CPU that only emulates it."""
    if precision not in (None, "auto") and precision not in PRECISIONS:
        raise ValueError(f"--precision: unknown value {precision!r}; choose from {', '.join(PRECISIONS)}")
    device_type = device if isinstance(device, str) else device.type
    device_type = device_type.split(":")[0]
    if precision in (None, "auto"):
        if fp16_flag:
            return "fp16"
        chosen, why = auto_precision(device_type)
        _say_on_main_rank(f"precision auto: {chosen} ({why})", notes)
        return chosen
    if precision == "bf16" and device_type == "cpu" and not cpu_runs_bf16_natively():
        _say_on_main_rank("warning: --precision bf16 on a CPU without native bf16 (no AVX-512 BF16 or AMX): its "
                          "matrix products run about 10x slower than fp32 here; --precision auto picks fp32",
                          sys.stderr)
    return precision


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for bf16/fp16, nothing for fp32/tf32 (tf32 is a backend switch, see `apply_tf32`)."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def apply_tf32(precision: str) -> None:
    """TF32 tensor-core math for fp32 matmuls and convolutions when precision is tf32, IEEE fp32 otherwise.

    Matmuls: `set_float32_matmul_precision("high")` is what sets `torch.backends.cuda.matmul.
    fp32_precision` to "tf32" on torch ≥ 2.9 (the legacy `allow_tf32` flag before). Setting that
    attribute directly instead leaves torch's legacy precision out of step with it, and then
    `torch.get_float32_matmul_precision()` raises — inductor calls it when compiling. Convolutions:
    cuDNN's `conv`/`rnn` `fp32_precision` where torch has them, the deprecated `allow_tf32` before.
    """
    import torch

    enabled = precision == "tf32"
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    cudnn = torch.backends.cudnn
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        cudnn.conv.fp32_precision = cudnn.rnn.fp32_precision = "tf32" if enabled else "ieee"
    else:
        cudnn.allow_tf32 = enabled
