"""BERT-large pretraining on one GPU, measured through the real training loop, as JSON lines.

    python benchmarks/bench_gpu.py --out results/gpu/bench.jsonl            # on a CUDA machine
    python benchmarks/bench_gpu.py --out /tmp/dry.jsonl --dry-run           # tiny model on the CPU
    python benchmarks/bench_gpu.py --preflight --out F                      # versions and tools, one record
    python benchmarks/bench_gpu.py --summarize --out F                      # the summary of what F holds

benchmarks/gpu.sh runs the preflight, tests/test_cuda.py, this benchmark, then the summary. Every record
is one JSON line, appended and flushed as soon as it is known, so a run cut short keeps what it measured.
This process only plans: each row runs in a subprocess of its own with its own time limit (a crash, a
CUDA fault or a hang loses that row only), and the SDPA probe runs last, in its own process too.

- `plan`: the rows in order of value, the preset's micro-batches, the stated time estimates;
- `row`: one configuration (phase, precision, eager/compiled, padded/packed, fused/foreach LAMB)
  timed through `run_pretraining.Trainer`'s own micro-step and optimizer step on synthetic shards
  in the real format whose real-token counts follow WikiText-2 shards (data/synthetic_shards.py):
  micro-step and optimizer-step times, sequences/s at the preset's accumulation, MFU on real and on
  padded FLOPs, peak memory, graphs compiled / compile seconds / recompiles, fp16's skipped steps and
  final loss scale, and whether a whole optimizer step (accumulation included) synchronised with the
  host (CUDA sync debug mode "error");
- `kernels`: the 15 kernels with the most device time over one accumulation window, per (phase, packed);
- `skipped`: a row left out (its projected time does not fit what is left, or a path this build does
  not have), with the reason; `failed`: a row whose process failed, crashed or ran past its limit;
- `sdpa`: which scaled-dot-product-attention backends accept the model's attention inputs;
- `summary` (--summarize): per row sequences/s, MFU and peak memory, packed ÷ padded and compiled ÷
  eager per phase, the test groups' results.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cpu_info
import torch

import distributed
import run_log
import run_pretraining
from bert_kernels import flash_varlen_available, flash_varlen_problem
from data.synthetic_shards import write_synthetic_shard
from flops import peak_flops as peak_flops_of
from precision import apply_tf32

ROOT = Path(__file__).resolve().parents[1]

TINY_CONFIG = {"vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "intermediate_size": 128, "max_position_embeddings": 128, "type_vocab_size": 2, "hidden_act": "gelu",
               "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}


@dataclass(frozen=True)
class Phase:
    name: str
    seq: int
    max_pred: int
    micro: int  # sequences per micro-batch (the preset's)
    accum: int  # micro-batches per optimizer step (the preset's)


@dataclass(frozen=True)
class Row:
    phase: str
    precision: str = "bf16"
    compiled: bool = False
    unpadded: bool = False
    lamb: str = "fused"


    def label(self) -> str:
        layout = "packed" if self.unpadded else "padded"
        mode = "compiled" if self.compiled else "eager"
        return f"{self.phase} {self.precision} {layout} {mode}" + (" foreach-LAMB" if self.lamb == "foreach" else "")


# In order of value: the two rows each phase's goals compare (packed + compiled, the new way; padded +
# eager, the original's way), then packed eager (compiled ÷ eager and packed ÷ padded without the
# compiler), fp16, foreach LAMB, and padded compiled last.
ROWS = (
    Row("phase2", compiled=True, unpadded=True), Row("phase2"),
    Row("phase1", compiled=True, unpadded=True), Row("phase1"),
    Row("phase2", unpadded=True), Row("phase1", unpadded=True),
    Row("phase1", precision="fp16"), Row("phase2", precision="fp16", unpadded=True),
    Row("phase1", lamb="foreach"),
    Row("phase2", compiled=True), Row("phase1", compiled=True),
)


@dataclass(frozen=True)
class Estimates:
    """Stated seconds a row takes, for the time budget: its process start, model build and eager warm-up
    plus timed windows (`row_s`), one compile of model + loss, forward and backward (`compile_s`), and
    one profiled window (`profile_s`). A row is skipped when its projection does not fit what is left;
    after a row has run, its measured seconds replace the estimate for rows of the same kind."""

    row_s: float
    compile_s: float
    profile_s: float


# BERT-large on one H100: inductor compiles model + loss in about 1-2.5 minutes on an H100 host; an
# eager row (start-up, shards, warm-up, 4 windows of 8 micro-steps) about half a minute.
GPU_ESTIMATES = Estimates(row_s=40.0, compile_s=150.0, profile_s=10.0)
# The dry run: the tiny model on the CPU, compiled rows with the capture-only "eager" backend.
DRY_RUN_ESTIMATES = Estimates(row_s=15.0, compile_s=5.0, profile_s=3.0)


class JsonLines:
    """Appends one JSON object per line and flushes it at once (a timeout keeps every finished record)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, kind: str, **data: Any) -> None:
        record = {"kind": kind, "time": round(time.time(), 3), **data}
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        print(json.dumps(record), flush=True)

    def close(self) -> None:
        self.fh.close()


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------


def preset_phases(preset: str) -> tuple[Phase, Phase]:
    """Micro-batch sizes and accumulation of a scripts/configs/pretrain_config.sh preset (per GPU)."""
    script = f'source "{ROOT}/scripts/configs/pretrain_config.sh" && {preset}'
    words = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    batch1, accum1, batch2, accum2 = int(words[0]), int(words[10]), int(words[15]), int(words[19])
    return (Phase("phase1", 128, 20, batch1 // accum1, accum1), Phase("phase2", 512, 80, batch2 // accum2, accum2))


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "device": str(device)}
    for module in ("h5py", "numpy", "transformers"):
        with contextlib.suppress(ImportError):
            info[module] = __import__(module).__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, _ = torch.cuda.mem_get_info(device)
        info.update(card=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    free_memory_gib=round(free / 2**30, 1), sms=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
        with contextlib.suppress(Exception):
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    else:
        info["card"] = platform.processor() or platform.machine()
    info["host_cpu"] = cpu_info.describe_cpu()
    return info


def first_line(cmd: list[str]) -> str:
    """The first line a tool prints (stdout, else stderr), or why there is none."""
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]}: not found"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{cmd[0]}: {exc}"
    return ((proc.stdout or proc.stderr).strip().splitlines() or [f"{cmd[0]}: no output"])[0]


def compiler_toolchain() -> dict[str, Any]:
    """What inductor needs on CUDA besides torch: a C compiler and Python.h (it builds a launcher
    module) and OpenAI's triton package. The repository's own triton/ folder (serving scripts) is on
    sys.path here when the repository root is (gpu.sh puts it on PYTHONPATH); it hands `import triton`
    over to the compiler's package, and `triton_import` shows what that import really gives."""
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    info: dict[str, Any] = {"cc": first_line(["cc", "--version"]),
                            "python_h": str(header) if header.is_file() else "missing"}
    try:
        info["triton_compiler"] = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        info["triton_compiler"] = "not installed"
    try:
        import triton  # noqa: F401 - what inductor's own `import triton` will get

        module = sys.modules["triton"]
        info["triton_import"] = f"{getattr(module, '__version__', '?')} from {Path(module.__file__).parent}"
    except Exception as exc:  # noqa: BLE001 - the failure is the answer being recorded
        info["triton_import"] = f"fails: {type(exc).__name__}: {str(exc)[:160]}"
    return info


def preflight() -> dict[str, Any]:
    """One record of everything a compiled GPU row depends on, before any test or row runs."""
    cuda = torch.cuda.is_available()
    info = environment(torch.device("cuda" if cuda else "cpu"))
    info["nvidia_smi"] = first_line(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.free",
                                     "--format=csv,noheader"])
    info.update(compiler_toolchain())
    return info


def write_shards(base: Path, phase: Phase, rows: int) -> Path:
    folder = base / phase.name
    folder.mkdir(parents=True, exist_ok=True)
    profile = "wikitext_512" if phase.name == "phase2" else "wikitext_128"  # the lengths of real shards
    write_synthetic_shard(folder / "synthetic_training_0.hdf5", rows, phase.seq, phase.max_pred, profile, seed=1)
    return folder


def build_trainer(row: Row, phase: Phase, data: Path, config: Path, out: Path, device: torch.device,
                  window: int) -> run_pretraining.Trainer:
    """The real Trainer, as run_pretraining.py builds it for these flags."""
    argv = [f"--input_dir={data}", f"--config_file={config}", f"--output_dir={out}", "--do_train",
            f"--json-summary={out / 'dllogger.json'}", f"--train_batch_size={phase.micro * window}",
            f"--gradient_accumulation_steps={window}", f"--max_seq_length={phase.seq}",
            f"--max_predictions_per_seq={phase.max_pred}", f"--precision={row.precision}", "--skip_checkpoint",
            "--disable_progress_bar", f"--device={device.type}", "--max_steps=1000", "--learning_rate=1e-4"]
    # Packed rows use FlashAttention on the GPU; the dry run has no such kernel and takes the reference.
    unpad = ("on" if device.type == "cuda" else "reference") if row.unpadded else "off"
    argv += [f"--compile={'on' if row.compiled else 'off'}", f"--unpad={unpad}",
             f"--fused_lamb={'on' if row.lamb == 'fused' else 'off'}"]
    args = run_pretraining.parse_args(argv)
    env = distributed.DistEnv(device=device)
    run_pretraining.validate_args(args, env)
    if row.unpadded and device.type == "cuda":
        heads = json.loads(config.read_text())
        problem = flash_varlen_problem(device, row.precision, heads["hidden_size"] // heads["num_attention_heads"])
        if problem:
            raise NotImplementedError(f"FlashAttention's varlen kernel cannot run here: {problem}")
    return run_pretraining.Trainer(args, env, run_log.Logger(None, enabled=False))


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


class Clock:
    """Marks on the device's stream (CUDA events) or the host clock (CPU); read once at the end."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Time between consecutive marks."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def run_window(trainer: run_pretraining.Trainer, clock: Clock | None, sync_check: str = "") -> None:
    """One optimizer step as the training loop runs it: `accum` micro-steps, then the LAMB step.

    sync_check "accumulation" or "step" (CUDA): torch's sync debug mode raises on any operation that
    makes the host wait for the device, over the micro-steps only or over the whole step."""
    if clock:
        clock.mark()
    debug = trainer.env.device.type == "cuda" and bool(sync_check)
    if debug:
        torch.cuda.set_sync_debug_mode("error")
    try:
        for i, batch in enumerate(trainer.batches.step(trainer.accum)):
            trainer.micro_step(batch, sync=(i == trainer.accum - 1))
        if debug and sync_check == "accumulation":
            torch.cuda.set_sync_debug_mode(0)
        if clock:
            clock.mark()
        trainer.optimizer_step()
    finally:
        if debug:
            torch.cuda.set_sync_debug_mode(0)
    if clock:
        clock.mark()


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The card's dense peak for this precision, from the training code's table; None when unknown."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device), precision)


def significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def measure_row(row: Row, phase: Phase, trainer: run_pretraining.Trainer, windows: int) -> dict[str, Any]:
    device = trainer.env.device
    compile_start = time.perf_counter()
    run_window(trainer, None)  # warm-up: allocator, cuBLAS handles, compilation
    warmup_s = time.perf_counter() - compile_start
    # fp16's GradScaler reads its overflow flag on the host by design, so there only the micro-steps
    # are checked (and an error inside scaler.step would leave the scaler half-way); elsewhere the
    # whole optimizer step, LAMB included.
    sync_scope = "accumulation" if row.precision == "fp16" else "step"
    sync_error = None
    try:
        run_window(trainer, None, sync_check=sync_scope)
    except RuntimeError as exc:  # the sync debug mode names the operation that synchronised
        sync_error = str(exc).splitlines()[0]
        trainer.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    trainer.flops.take()
    clock = Clock(device)
    for _ in range(windows):
        run_window(trainer, clock)
    spans = clock.seconds()
    work = trainer.flops.take()
    real_flops, padded_flops = work.real_flops, work.padded_flops
    micro_s = sum(spans[0::3]) / (windows * trainer.accum)  # (micro-steps, optimizer step, gap) per window
    optimizer_s = sum(spans[1::3]) / windows
    sequences = windows * trainer.accum * phase.micro
    measured_s = sum(spans[0::3]) + sum(spans[1::3])
    # The preset's accumulation (e.g. 64 micro-steps per LAMB step) from the measured parts.
    preset_step_s = phase.accum * micro_s + optimizer_s
    peak = peak_flops(device, row.precision)
    result: dict[str, Any] = {
        **asdict(row), "micro_batch": phase.micro, "seq": phase.seq, "preset_accum": phase.accum,
        "window_accum": trainer.accum, "windows": windows, "warmup_s": round(warmup_s, 2),
        "packed_batches": trainer.packed, "compiled_step": trainer.compiled,
        "micro_step_ms": round(micro_s * 1e3, 3), "optimizer_step_ms": round(optimizer_s * 1e3, 3),
        "seq_per_s_measured": round(sequences / measured_s, 2),
        "seq_per_s_at_preset_accum": round(phase.accum * phase.micro / preset_step_s, 2),
        "real_token_share": round(work.real_tokens / work.padded_tokens, 4),
        "real_flops_share": round(real_flops / padded_flops, 4),
        "real_tflops_per_s": significant(real_flops / measured_s / 1e12),
        "padded_tflops_per_s": significant(padded_flops / measured_s / 1e12),
        "host_sync": sync_error if device.type == "cuda" else "not checked (CPU)",
        "host_sync_checked_over": sync_scope if device.type == "cuda" else "nothing (CPU)",
        **trainer.compile_stats.as_dict(),
        "lamb_skipped_steps": getattr(trainer.optimizer, "skipped_steps", None),
    }
    if row.precision == "fp16":  # steps the GradScaler skipped (overflow) and where its scale ended
        result.update(fp16_skipped_steps=trainer.state.skipped_steps, final_loss_scale=trainer.scaler.get_scale())
    if peak:
        result["mfu_real"] = round(real_flops / measured_s / peak, 4)
        result["mfu_padded"] = round(padded_flops / measured_s / peak, 4)
    else:
        result["mfu_note"] = "no peak FLOPs known for this device and precision"
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def kernel_table(trainer: run_pretraining.Trainer, rows: int = 15) -> list[dict[str, Any]]:
    """The kernels (CUDA) or operators (CPU) with the most self time over one accumulation window."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.env.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run_window(trainer, None)
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()

    def self_time(event: Any) -> float:
        if cuda:
            return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))
        return float(event.self_cpu_time_total)

    timed = sorted((e for e in events if self_time(e) > 0), key=self_time, reverse=True)
    total = sum(self_time(e) for e in timed) or 1.0
    return [{"name": e.key[:160], "self_ms": round(self_time(e) / 1e3, 3), "calls": e.count,
             "share": round(self_time(e) / total, 4)} for e in timed[:rows]]


def probe_sdpa(device: torch.device, config: dict[str, Any], phase: Phase) -> dict[str, Any]:
    """Which SDPA backends take BERT's attention inputs (boolean padding mask, dropout 0.1, bf16)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, dim = config["num_attention_heads"], config["hidden_size"] // config["num_attention_heads"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(phase.micro, heads, phase.seq, dim, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    lengths = torch.randint(phase.seq // 4, phase.seq + 1, (phase.micro,), device=device)
    mask = (torch.arange(phase.seq, device=device)[None] < lengths[:, None])[:, None, None, :]
    result: dict[str, Any] = {"shape": list(q.shape), "dtype": str(dtype)}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            result[name.lower()] = "not in this torch"
            continue
        for label, attn_mask in (("padding_mask", mask), ("no_mask", None)):
            try:
                with sdpa_kernel(backend):
                    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.1)
                    out.sum().backward()
                result[f"{name.lower()}/{label}"] = "ok"
            except Exception as exc:  # noqa: BLE001 - a refusal is the answer being recorded
                result[f"{name.lower()}/{label}"] = "refused: " + (str(exc).splitlines() or [""])[0][:120]
    result["flash_varlen_for_packed_batches"] = flash_varlen_available(device, "bf16")
    for op in ("_flash_attention_forward", "_flash_attention_backward"):
        packet = getattr(torch.ops.aten, op, None)
        result[f"schema{op}"] = str(packet.default._schema) if packet is not None else "missing"
    result["default_kernels"] = _default_sdpa_kernels(q, k, v, mask, device)
    return result


def _default_sdpa_kernels(q, k, v, mask, device: torch.device) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1)
    names = [e.key for e in prof.key_averages()]
    attention = ("flash", "fmha", "attention", "efficient", "cudnn")
    return [n[:120] for n in names if any(s in n.lower() for s in attention)][:8]


# --------------------------------------------------------------------------------------------
# The plan (this process) and the rows (one subprocess each)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every row process needs, written once by the planner (`setup.json` in its work folder)."""

    device: str
    preset: str
    phases: list[dict[str, Any]]
    config: str
    data: dict[str, str]
    window: int
    windows: int


def projected_s(row: Row, estimates: Estimates, measured: dict[bool, float], profile: bool) -> tuple[float, str]:
    """Seconds a row is expected to take and on what that rests: the measured seconds of the latest
    row of the same kind (compiled or eager) when there is one, else the stated estimates."""
    extra = estimates.profile_s if profile else 0.0
    if row.compiled in measured:
        return measured[row.compiled] + extra, "measured on an earlier row of the same kind"
    stated = estimates.row_s + (estimates.compile_s if row.compiled else 0.0) + extra
    basis = f"stated: {estimates.row_s:.0f} s a row" + (
        f" + {estimates.compile_s:.0f} s compile" if row.compiled else "")
    return stated, basis + (f" + {estimates.profile_s:.0f} s profile" if profile else "")


def time_limit_s(projected: float, left: float) -> float:
    """A row's own limit: twice its projection (compile times vary) plus a minute, within what is left."""
    return min(left, 2.0 * projected + 60.0)


def budget_decision(row: Row, elapsed: float, budget: float, estimates: Estimates, measured: dict[bool, float],
                    profile: bool) -> tuple[float | None, str]:
    """(time limit, basis) for a row that fits what is left of the budget, (None, reason) for one that does not."""
    projected, basis = projected_s(row, estimates, measured, profile)
    left = budget - elapsed
    if projected > left:
        return None, (f"time budget: {elapsed:.0f} of {budget:.0f} s used, {left:.0f} s left; "
                      f"needs ~{projected:.0f} s ({basis})")
    return time_limit_s(projected, left), f"~{projected:.0f} s ({basis})"


def records_of(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def run_subprocess(out: JsonLines, out_path: Path, cmd: list[str], limit_s: float, log: Path,
                   what: dict[str, Any]) -> tuple[bool, float]:
    """Run one row (or the probe) in its own process with its own limit; (measured, seconds). A process
    that ends without recording an outcome (a crash, a timeout) is recorded as `failed` here, with the
    end of its log."""
    before = len(records_of(out_path))
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        # A session of its own, so that a timeout also ends the compile workers inductor started.
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | str = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = f"killed after its limit of {limit_s:.0f} s"
    seconds = time.perf_counter() - start
    outcomes = {r.get("kind") for r in records_of(out_path)[before:]} & {"row", "sdpa", "failed", "skipped"}
    if outcomes:
        return bool(outcomes & {"row", "sdpa"}), seconds
    tail = log.read_text(encoding="utf-8", errors="replace")[-1500:]
    out.write("failed", **what, error=f"process: {rc}" if not isinstance(rc, int) else f"process exit code {rc}",
              seconds=round(seconds, 1), log=str(log), log_tail=tail)
    return False, seconds


def plan_and_run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out_path = Path(args.out)
    out = JsonLines(out_path)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        out.write("error", message="no CUDA device visible; use --dry-run on a CPU machine")
        return 2
    estimates = DRY_RUN_ESTIMATES if args.dry_run else GPU_ESTIMATES
    budget = args.budget_s
    logs = out_path.parent / "bench_rows"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        setup = prepare(args, device, Path(tmp))
        setup_file = Path(tmp) / "setup.json"
        setup_file.write_text(json.dumps(asdict(setup)))
        selected = [int(i) for i in args.rows.split(",")] if args.rows else list(range(len(ROWS)))
        out.write("plan", rows=[f"{i}: {ROWS[i].label()}" for i in selected], budget_s=budget,
                  estimates=asdict(estimates), preset=setup.preset, phases=setup.phases)
        measured: dict[bool, float] = {}
        profiled: set[tuple[str, bool]] = set()
        for index in selected:
            row = ROWS[index]
            key = (row.phase, row.unpadded)
            profile = key not in profiled
            limit, why = budget_decision(row, time.perf_counter() - start, budget, estimates, measured, profile)
            if limit is None:
                out.write("skipped", index=index, label=row.label(), **asdict(row), reason=why)
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(out_path), "--row", str(index),
                   "--setup", str(setup_file)] + (["--profile"] if profile else [])
            if args.crash_row == index:
                cmd.append("--crash")
            ok, seconds = run_subprocess(out, out_path, cmd, limit, logs / f"row{index}.log",
                                         {"index": index, "label": row.label(), **asdict(row), "limit_s": round(limit),
                                          "projected": why})
            if ok:
                measured[row.compiled] = seconds - (estimates.profile_s if profile else 0.0)
                if any(r.get("kind") == "kernels" and r.get("index") == index and r.get("top")
                       for r in records_of(out_path)):
                    profiled.add(key)
        # The probe last and alone: whatever it does to its CUDA context cannot reach a row.
        probe_limit = min(120.0, max(budget - (time.perf_counter() - start), 30.0))
        run_subprocess(out, out_path, [sys.executable, str(Path(__file__).resolve()), "--out", str(out_path),
                                       "--probe_sdpa", "--setup", str(setup_file)],
                       probe_limit, logs / "sdpa.log", {"index": "sdpa", "label": "SDPA probe"})
    out.write("done", seconds=round(time.perf_counter() - start, 1))
    out.close()
    return 0


def prepare(args: argparse.Namespace, device: torch.device, base: Path) -> Setup:
    """Phases (the preset's micro-batches), the model config and the synthetic shards, made once."""
    if args.dry_run:
        phases = (Phase("phase1", 64, 10, 4, 64), Phase("phase2", 128, 20, 2, 128))
        config = base / "tiny.json"
        config.write_text(json.dumps(TINY_CONFIG))
        window, windows, preset = 2, 1, "dry run"
    else:
        name = torch.cuda.get_device_name(device)
        preset = args.preset or ("dgxh100_8gpu_bf16" if ("H100" in name or "H200" in name) else "dgxa100_8gpu_bf16")
        phases = preset_phases(preset)
        config = ROOT / "bert_config.json"
        window, windows = args.window_accum, args.windows
    # warm-up, sync check, timed windows, profile, and a spare
    data = {p.name: str(write_shards(base, p, (window * (windows + 4) + 1) * p.micro)) for p in phases}
    return Setup(device.type, preset, [asdict(p) for p in phases], str(config), data, window, windows)


def load_setup(path: str) -> tuple[Setup, dict[str, Phase], torch.device]:
    setup = Setup(**json.loads(Path(path).read_text()))
    phases = {p["name"]: Phase(**p) for p in setup.phases}
    return setup, phases, torch.device(setup.device)


def run_row(args: argparse.Namespace) -> int:
    """One row, in its own process: build the Trainer, measure, profile when asked."""
    if args.crash:  # for tests/test_gpu_script.py: a row whose process dies must lose that row only
        os.abort()
    out = JsonLines(Path(args.out))
    setup, phases, device = load_setup(args.setup)
    row, phase = ROWS[args.row], phases[ROWS[args.row].phase]
    if device.type == "cpu":  # compiled rows capture their graphs without inductor's code generation (minutes on a CPU)
        os.environ.setdefault("BERT_COMPILE_BACKEND", "eager")
    apply_tf32("bf16")
    trainer = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench_row_") as run_dir:
            trainer = build_trainer(row, phase, Path(setup.data[row.phase]), Path(setup.config), Path(run_dir),
                                    device, setup.window)
            result = measure_row(row, phase, trainer, setup.windows)
            out.write("row", index=args.row, label=row.label(), pid=os.getpid(), **result)
            if args.profile:
                write_kernel_table(out, args.row, row, trainer)
    except NotImplementedError as exc:
        out.write("skipped", index=args.row, label=row.label(), **asdict(row), reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded; the planner goes on with the next row
        out.write("failed", index=args.row, label=row.label(), **asdict(row),
                  error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  traceback=traceback.format_exc()[-2000:])
        return 1
    finally:
        if trainer is not None:
            trainer.stream.close()
        out.close()
    return 0


def write_kernel_table(out: JsonLines, index: int, row: Row, trainer: run_pretraining.Trainer) -> None:
    """The row's kernel table; a profiler failure is recorded with it and leaves the measured row alone."""
    where = {"index": index, "phase": row.phase, "packed": row.unpadded, "label": row.label()}
    try:
        out.write("kernels", **where, top=kernel_table(trainer))
    except Exception as exc:  # noqa: BLE001 - the row itself was measured
        out.write("kernels", **where, top=[], error=f"{type(exc).__name__}: {str(exc)[:300]}")


def run_probe(args: argparse.Namespace) -> int:
    out = JsonLines(Path(args.out))
    setup, phases, device = load_setup(args.setup)
    config = json.loads(Path(setup.config).read_text())
    out.write("sdpa", phase="phase2", **probe_sdpa(device, config, phases["phase2"]))
    out.close()
    return 0


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------

SUMMARY_FIELDS = ("seq_per_s_at_preset_accum", "mfu_real", "mfu_padded", "peak_memory_gib", "graphs_compiled",
                  "backend_compile_s", "warmup_s", "host_sync")


def ratio(rows: dict[str, dict[str, Any]], pairs: list[tuple[Row, Row]]) -> dict[str, Any] | None:
    """sequences/s of the first pair (numerator row, denominator row) that was measured."""
    for top, bottom in pairs:
        a, b = rows.get(top.label()), rows.get(bottom.label())
        if a and b and b["seq_per_s_at_preset_accum"] > 0:
            return {"value": round(a["seq_per_s_at_preset_accum"] / b["seq_per_s_at_preset_accum"], 3),
                    "of": f"{top.label()} / {bottom.label()}"}
    return None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row the headline measures; per phase packed ÷ padded and compiled ÷ eager (like against like
    where both were measured, else packed + compiled against the original's padded + eager)."""
    rows = {r["label"]: r for r in records if r.get("kind") == "row"}
    per_row = {label: {k: r[k] for k in SUMMARY_FIELDS if k in r} for label, r in rows.items()}
    ratios = {}
    for phase in ("phase1", "phase2"):
        packed_c, padded_c = Row(phase, compiled=True, unpadded=True), Row(phase, compiled=True)
        packed_e, padded_e = Row(phase, unpadded=True), Row(phase)
        ratios[phase] = {
            "packed/padded": ratio(rows, [(packed_c, padded_c), (packed_e, padded_e), (packed_c, padded_e)]),
            "compiled/eager": ratio(rows, [(packed_c, packed_e), (padded_c, padded_e)]),
        }
    tests = {r["group"]: r["rc"] for r in records if r.get("kind") == "tests" and "group" in r}
    return {"rows": per_row, "ratios": ratios, "tests": tests,
            "skipped": [f"{r.get('label', r.get('file', '?'))}: {r.get('reason', '')}"
                        for r in records if r.get("kind") == "skipped"],
            "failed": [f"{r.get('label', '?')}: {r.get('error', '')}" for r in records if r.get("kind") == "failed"]}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON-lines file (appended)")
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, small batches: checks the script")
    p.add_argument("--budget_s", type=float, default=300.0,
                   help="seconds for all rows: a row whose projected time does not fit what is left is skipped")
    p.add_argument("--preset", default=None, help="pretrain_config.sh preset for micro-batch sizes "
                   "(default: dgxh100_8gpu_bf16 on H100/H200, else dgxa100_8gpu_bf16)")
    p.add_argument("--window_accum", type=int, default=8, help="micro-steps per timed optimizer step")
    p.add_argument("--windows", type=int, default=2, help="timed optimizer steps per row")
    p.add_argument("--rows", default=None, help="comma-separated row indices to run (default: all, in order)")
    p.add_argument("--preflight", action="store_true", help="write one `preflight` record and stop")
    p.add_argument("--summarize", action="store_true", help="write the `summary` record of --out and stop")
    p.add_argument("--script_seconds", type=float, default=None, help="with --summarize: the whole script's seconds")
    inner = p.add_argument_group("inner (the planner starts these processes)")
    inner.add_argument("--row", type=int, default=None, help="measure this row only (needs --setup)")
    inner.add_argument("--setup", default=None, help="the planner's setup.json")
    inner.add_argument("--profile", action="store_true", help="with --row: also write its kernel table")
    inner.add_argument("--probe_sdpa", action="store_true", help="the SDPA probe only (needs --setup)")
    inner.add_argument("--crash_row", type=int, default=None, help="for tests: that row's process aborts")
    inner.add_argument("--crash", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.preflight:
        out = JsonLines(Path(args.out))
        out.write("preflight", **preflight())
        out.close()
        return 0
    if args.summarize:
        out = JsonLines(Path(args.out))
        summary = summarize(records_of(Path(args.out)))
        if args.script_seconds is not None:
            summary["script_seconds"] = round(args.script_seconds)
        out.write("summary", **summary)
        out.close()
        return 0
    if args.row is not None:
        return run_row(args)
    if args.probe_sdpa:
        return run_probe(args)
    return plan_and_run(args)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
