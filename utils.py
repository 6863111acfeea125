"""Shared helpers: distributed setup, rank queries, dllogger-compatible logging, atomic file I/O.

Every script imports these from here; nothing in this file knows about BERT. torch is imported
inside the functions that need it, so the data-preparation workers start without it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------------
# Distributed setup
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------

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


def resolve_precision(precision: str | None, fp16_flag: bool = False, device: Any = "cpu", notes: Any = None) -> str:
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
                          "matrix products run about 10x slower than fp32 here; --precision auto picks fp32", sys.stderr)
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


# --------------------------------------------------------------------------------------------
# Logging: dllogger-compatible JSON lines plus a readable stdout line
# --------------------------------------------------------------------------------------------


def format_step(step: Any) -> str:
    if isinstance(step, str):
        return step
    if isinstance(step, (tuple, list)):
        parts = []
        names = ("Training Epoch", "Training Iteration", "Validation Iteration")
        for name, value in zip(names, step, strict=False):
            parts.append(f"{name}: {value}")
        return " ".join(parts)
    return str(step)


def _jsonable(value: Any) -> Any:
    """Tensors and numpy scalars as plain numbers (checked by module so torch need not be imported)."""
    module = type(value).__module__
    if module.startswith("torch") and hasattr(value, "numel"):
        return value.item() if value.numel() == 1 else value.tolist()
    if module == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


class Logger:
    """A small stand-in for NVIDIA's dllogger with the same file format (`DLLL {...}` lines).

    Only rank 0 writes. `step` is "PARAMETER", a tuple (epoch, iteration[, val_iteration]) or () for
    the final summary, as in the original.
    """

    def __init__(self, json_path: str | os.PathLike | None, enabled: bool = True, stdout: bool = True):
        self.enabled = enabled
        self.stdout = stdout and enabled
        self.start = time.time()
        self._fh = None
        self.path = Path(json_path) if json_path else None
        if enabled and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, record: dict) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write("DLLL " + json.dumps(record) + "\n")
            self._fh.flush()
        except OSError as exc:  # a full disk must not end a training run over a log line
            print(f"warning: {self.path}: cannot write the log ({exc.strerror}); from now on it goes to stdout only",
                  file=sys.stderr, flush=True)
            with contextlib.suppress(OSError):  # closing flushes the same unwritable line again
                self._fh.close()
            self._fh = None

    def _base(self, kind: str) -> dict:
        now = time.time()
        return {
            "timestamp": f"{now:.6f}",
            "datetime": _dt.datetime.now().isoformat(sep=" "),
            "elapsedtime": f"{now - self.start:.6f}",
            "type": kind,
        }

    def log(self, step: Any, data: dict[str, Any]) -> None:
        if not self.enabled:
            return
        data = {k: _jsonable(v) for k, v in data.items()}
        record = self._base("LOG")
        record.update(step=list(step) if isinstance(step, tuple) else step, data=data)
        self._write(record)
        if self.stdout:
            fields = " ".join(f"{k} : {_fmt(v)}" for k, v in data.items())
            prefix = format_step(step)
            print(f"DLL {record['datetime']} - {prefix} {fields}".replace("  ", " "), flush=True)

    def metadata(self, metric: str, meta: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = self._base("METADATA")
        record.update(metric=metric, metadata=meta)
        self._write(record)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_dllogger(path: str | os.PathLike) -> list[dict]:
    """Parse a dllogger JSON-lines file (ours or NVIDIA's) into records."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("DLLL "):
                records.append(json.loads(line[5:]))
    return records


# --------------------------------------------------------------------------------------------
# Atomic file output
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success fsync and rename it into place.

    A crash leaves only a `.tmp-*` file, which no reader ever picks up.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}.", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; give outputs the usual mode
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _ErrorKeepingWriter(io.RawIOBase):
    """A file for torch.save that remembers the OSError of a failed write: torch reports a full disk only
    as `[enforce fail at inline_container.cc...] unexpected pos`, losing "No space left on device"."""

    def __init__(self, fh: Any):
        super().__init__()
        self.fh, self.error = fh, None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise


def atomic_torch_save(obj: Any, final: str | os.PathLike) -> None:
    """torch.save to a temp file renamed into place; a failed write (e.g. a full disk) is an OSError whose
    filename is `final`, and nothing is left behind."""
    import torch

    with atomic_path(final) as tmp, open(tmp, "wb", buffering=0) as fh:
        writer = _ErrorKeepingWriter(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise OSError(writer.error.errno, writer.error.strerror, str(final)) from None


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(final: str | os.PathLike, obj: Any, indent: int = 4) -> None:
    atomic_write_text(final, json.dumps(obj, indent=indent) + "\n")


def die(message: str, code: int = 2) -> NoReturn:
    """Exit with one clear line on stderr (bad input, not a bug)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class InputError(ValueError):
    """Bad user input (a file, line or key that is wrong). Scripts print it as one line and exit 2."""


def allow_csv_fields_of(text: str) -> str:
    """`text`, after raising the csv module's field limit (131,072 characters) to its length: a long GLUE or
    SWAG field is text to read (and truncate to --max_seq_length), not an error. The text is in memory already."""
    import csv

    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    return text


def read_text_file(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """A whole input text file; InputError naming the file (and the line of a bad byte) instead of a traceback."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def read_json_file(path: str | os.PathLike, what: str = "file") -> Any:
    """A whole JSON file; InputError naming the file and, for a syntax error, its line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def check_number_ranges(ranges: dict[str, tuple[float, float, bool, float]]) -> None:
    """InputError for the first flag whose value is not finite or outside its range.

    `ranges`: {flag: (value, lowest allowed, whether the lowest itself is allowed, highest)}."""
    for flag, (value, low, low_ok, high) in ranges.items():
        inside = (value >= low if low_ok else value > low) and value <= high
        if not (math.isfinite(value) and inside):
            bound = f"{'>=' if low_ok else '>'} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise InputError(f"{flag} must be a finite number {bound}, got {value}")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_can_create_in(folder: Path, flag: str, path: Path) -> None:
    """InputError unless a file can be created in `folder` (tried for real: root ignores permission bits)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot write in {folder} ({exc.strerror})") from None


def _check_folder_usable(folder: Path, flag: str, shown: Path) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise InputError(f"{flag} {shown}: {'not a folder' if existing == shown else f'{existing} is not a folder'}")
    _check_can_create_in(existing, flag, shown)


def check_output_dir(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """An output folder that exists or can be created; InputError before any work otherwise."""
    path = Path(path)
    _check_folder_usable(path, flag, path)
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--output_file") -> Path:
    """An output file path whose folder is usable and that is not itself a folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder, expected a file name")
    _check_folder_usable(path.parent, flag, path)
    return path


def check_at_least_one(value: float, flag: str) -> None:
    """InputError unless `value` is a number above 0 (batch sizes, counts)."""
    if not value > 0:
        raise InputError(f"{flag} must be at least 1, got {value}")


def run_main(main: Any, argv: list[str] | None = None) -> None:
    """Call `main(argv)`; turn an InputError into a one-line message instead of a traceback."""
    try:
        main(argv)
    except InputError as exc:
        die(str(exc))


def plot_loss_curve(json_path: str | os.PathLike, png_path: str | os.PathLike, title: str | None = None) -> Path:
    """Draw training loss (and evaluation points, when logged) from a dllogger file into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_x, train_y, eval_x, eval_y = [], [], [], []
    for rec in read_dllogger(json_path):
        data, step = rec.get("data", {}), rec.get("step")
        if not isinstance(step, list) or len(step) < 2:
            continue
        if "average_loss" in data:
            train_x.append(step[1])
            train_y.append(data["average_loss"])
        if "eval_mlm_accuracy" in data:
            eval_x.append(step[1])
            eval_y.append(data["eval_mlm_accuracy"])
    if not train_x:
        raise ValueError(f"{json_path}: no average_loss records to plot")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(train_x, train_y, label="training loss (MLM + NSP)", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if eval_x:
        ax2 = ax.twinx()
        ax2.plot(eval_x, eval_y, "o-", color="tab:orange", label="eval MLM accuracy")
        ax2.set_ylabel("MLM accuracy")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left" if eval_x else "best")
    ax.set_title(title or Path(json_path).name)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(png_path)


# --------------------------------------------------------------------------------------------
# Which CPU a measurement ran on
# --------------------------------------------------------------------------------------------

# AMD CPU family → core generation. A model name such as "AMD EPYC" can hide both a Zen 4 and a
# Zen 5, and their fp32 GEMM speeds differ by 2x in MKL, so benchmarks print the family too.
# Family 25 holds Zen 3 and Zen 4; only Zen 4 has AVX-512.
_AMD_GENERATIONS = {23: "Zen/Zen 2", 26: "Zen 5"}

# Benchmark clocks: wall time, or this process's CPU time, which on a shared machine leaves out the
# time other processes held the core (meaningful with one thread: idle or spinning workers of
# several threads would be counted too).
BENCHMARK_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _cpu_fields() -> dict[str, str]:
    """`lscpu`'s "key: value" lines (LC_ALL=C), else /proc/cpuinfo's first processor, else {}."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        try:
            out = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split("\n\n")[0]
        except OSError:
            return {}
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def benchmark_precisions(asked: list[str], device_type: str) -> tuple[list[str], dict[str, str]]:
    """The precisions worth timing here, and why the others are skipped: bf16 on a CPU that only emulates
    it times torch's scalar fallback (about 10x slower than fp32), which says nothing about either model."""
    if device_type == "cpu" and "bf16" in asked and not cpu_runs_bf16_natively():
        return [p for p in asked if p != "bf16"], {"bf16": "this CPU has no native bf16 (no AVX-512 BF16 or AMX)"}
    return asked, {}


def describe_cpu(fields: dict[str, str] | None = None) -> str:
    """One line naming this CPU for benchmark output, e.g.
    "AMD EPYC (AMD Zen 4: family 25, model 17; 2 logical CPUs; AVX-512, AVX-512 BF16)".

    `fields` are lscpu's (or /proc/cpuinfo's) "key: value" pairs with lower-case keys; by default
    read from this machine."""
    import platform

    fields = _cpu_fields() if fields is None else fields
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    family, model = fields.get("cpu family"), fields.get("model")
    vendor = fields.get("vendor id") or fields.get("vendor_id") or ""
    flags = set(fields.get("flags", "").split())
    details = []
    if family is not None:
        generation = ""
        if vendor == "AuthenticAMD" and family.isdigit():
            generation = _AMD_GENERATIONS.get(int(family), "")
            if int(family) == 25:
                generation = "Zen 4" if "avx512f" in flags else "Zen 3"
        where = f"family {family}" + (f", model {model}" if model is not None else "")
        details.append(f"AMD {generation}: {where}" if generation else where)
    cpus = fields.get("cpu(s)") or str(os.cpu_count() or "?")
    extras = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"),
                                        ("amx_tile", "AMX")) if flag in flags]
    if flags and not flags & {"avx512_bf16", "amx_bf16"}:
        extras.append("no native bf16")
    details.append("; ".join(filter(None, [f"{cpus} logical CPUs", ", ".join(extras)])))
    return f"{name} ({'; '.join(details)})"
