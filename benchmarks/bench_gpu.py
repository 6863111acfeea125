"""BERT-large pretraining on one GPU, measured through the real training loop, as JSON lines.

    python benchmarks/bench_gpu.py --out results/gpu/bench.jsonl            # on a CUDA machine
    python benchmarks/bench_gpu.py --out /tmp/dry.jsonl --dry-run           # tiny model on the CPU

benchmarks/gpu.sh runs it after tests/test_cuda.py. Every record is one JSON line, appended and
flushed as soon as it is known, so a run cut short keeps what it measured:

- `env`: versions, card, capability, memory;
- `sdpa`: which scaled-dot-product-attention backends accept the model's real attention inputs
  (padding mask, dropout) and which kernel the default dispatch runs;
- `row`: one configuration (phase, precision, eager/compiled, padded/unpadded, fused/foreach LAMB)
  timed through `run_pretraining.Trainer`'s own micro-step and optimizer step on synthetic shards
  in the real format whose real-token counts follow WikiText-2 shards (data/synthetic_shards.py):
  micro-step and optimizer-step times, sequences/s at the preset's accumulation, MFU on real and on
  padded FLOPs, peak memory, and whether the accumulation loop synchronised with the host (CUDA
  sync debug mode set to "error" around one window of micro-steps);
- `kernels`: the 15 kernels with the most device time over one accumulation window, per phase;
- `skipped`: a row left out (time budget, or a path this build does not have), with the reason.

Rows run most important first and each is skipped when the remaining --budget_s cannot hold it.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
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
from bert_kernels import flash_varlen_available
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


# Most important first: the goals (bf16 phase 1/2, compiled, unpadded), then fp16, then foreach LAMB.
ROWS = (
    Row("phase1"), Row("phase2"),
    Row("phase2", unpadded=True),
    Row("phase1", compiled=True), Row("phase2", compiled=True, unpadded=True), Row("phase2", compiled=True),
    Row("phase1", precision="fp16"), Row("phase2", precision="fp16", unpadded=True),
    Row("phase1", lamb="foreach"), Row("phase1", compiled=True, unpadded=True),
)


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
    for module in ("h5py", "numpy", "transformers", "triton"):
        with contextlib.suppress(ImportError):
            info[module] = __import__(module).__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(card=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    sms=props.multi_processor_count, cudnn=torch.backends.cudnn.version())
    else:
        info["card"] = platform.processor() or platform.machine()
    info["host_cpu"] = cpu_info.describe_cpu()
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
    argv += [f"--compile={'on' if row.compiled else 'off'}", f"--unpad={'on' if row.unpadded else 'off'}",
             f"--fused_lamb={'on' if row.lamb == 'fused' else 'off'}"]
    args = run_pretraining.parse_args(argv)
    env = distributed.DistEnv(device=device)
    run_pretraining.validate_args(args, env)
    if row.unpadded and device.type == "cuda" and not flash_varlen_available(device, row.precision):
        raise NotImplementedError(f"FlashAttention's varlen kernel does not run here for {row.precision}")
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


def run_window(trainer: run_pretraining.Trainer, clock: Clock | None, sync_check: bool = False) -> None:
    """One optimizer step as the training loop runs it: `accum` micro-steps, then the LAMB step."""
    if clock:
        clock.mark()
    debug = trainer.env.device.type == "cuda" and sync_check
    if debug:
        torch.cuda.set_sync_debug_mode("error")
    try:
        for i, batch in enumerate(trainer.batches.step(trainer.accum)):
            trainer.micro_step(batch, sync=(i == trainer.accum - 1))
    finally:
        if debug:
            torch.cuda.set_sync_debug_mode(0)
    if clock:
        clock.mark()
    trainer.optimizer_step()
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
    sync_error = None
    try:
        run_window(trainer, None, sync_check=True)
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
        "host_sync_in_accumulation": sync_error if device.type == "cuda" else "not checked (CPU)",
    }
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
# Main
# --------------------------------------------------------------------------------------------


def estimated_cost_s(row: Row, compiled_phases: set[tuple[str, bool]], dry_run: bool) -> float:
    """Rough seconds a row needs (build + warm-up + timing); compilation dominates the first compiled row."""
    if dry_run:
        return 1.0
    cost = 25.0
    if row.compiled and (row.phase, row.unpadded) not in compiled_phases:
        cost += 100.0
    return cost


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON-lines file (appended)")
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, small batches: checks the script")
    p.add_argument("--budget_s", type=float, default=300.0, help="skip rows that would end after this many seconds")
    p.add_argument("--preset", default=None, help="pretrain_config.sh preset for micro-batch sizes "
                   "(default: dgxh100_8gpu_bf16 on H100/H200, else dgxa100_8gpu_bf16)")
    p.add_argument("--window_accum", type=int, default=8, help="micro-steps per timed optimizer step")
    p.add_argument("--windows", type=int, default=2, help="timed optimizer steps per row")
    p.add_argument("--rows", default=None, help="comma-separated row indices to run (default: all, in order)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    out = JsonLines(Path(args.out))
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:  # compiled rows capture their graphs without inductor's code generation (minutes on a CPU)
        os.environ.setdefault("BERT_COMPILE_BACKEND", "eager")
    if device.type == "cuda" and not torch.cuda.is_available():
        out.write("error", message="no CUDA device visible; use --dry-run on a CPU machine")
        return 2
    env_info = environment(device)
    out.write("env", **env_info)
    apply_tf32("bf16")
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        base = Path(tmp)
        if args.dry_run:
            phases = (Phase("phase1", 64, 10, 4, 64), Phase("phase2", 128, 20, 2, 128))
            config = base / "tiny.json"
            config.write_text(json.dumps(TINY_CONFIG))
            window, windows = 2, 1
        else:
            name = env_info.get("card", "")
            preset = args.preset or ("dgxh100_8gpu_bf16" if ("H100" in name or "H200" in name) else "dgxa100_8gpu_bf16")
            phases = preset_phases(preset)
            out.write("preset", name=preset, phases=[asdict(p) for p in phases])
            config = ROOT / "bert_config.json"
            window, windows = args.window_accum, args.windows
        by_name = {p.name: p for p in phases}
        model_config = json.loads(config.read_text())
        out.write("sdpa", phase="phase2", **probe_sdpa(device, model_config, by_name["phase2"]))
        data = {p.name: write_shards(base, p, (window * (windows + 3) + 1) * p.micro) for p in phases}
        selected = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else list(ROWS)
        profiled: set[str] = set()
        compiled: set[tuple[str, bool]] = set()
        for row in selected:
            phase = by_name[row.phase]
            elapsed = time.perf_counter() - start
            cost = estimated_cost_s(row, compiled, args.dry_run)
            if elapsed + cost > args.budget_s:
                out.write("skipped", **asdict(row), reason=f"time budget: {elapsed:.0f} s used, ~{cost:.0f} s needed")
                continue
            run_dir = base / f"run_{len(compiled)}_{time.monotonic_ns()}"
            trainer = None
            try:
                trainer = build_trainer(row, phase, data[row.phase], config, run_dir, device, window)
                out.write("row", **measure_row(row, phase, trainer, windows))
                if row.compiled:
                    compiled.add((row.phase, row.unpadded))
                if row.phase not in profiled and not row.compiled:
                    out.write("kernels", phase=row.phase, row=asdict(row), top=kernel_table(trainer))
                    profiled.add(row.phase)
            except NotImplementedError as exc:
                out.write("skipped", **asdict(row), reason=str(exc))
            except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                out.write("failed", **asdict(row),
                          error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          traceback=traceback.format_exc()[-2000:])
            finally:
                if trainer is not None:
                    trainer.stream.close()
                del trainer
                if row.compiled:  # dynamo's caches keep the compiled model (and its ~5 GB of state) alive
                    torch._dynamo.reset()
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    out.write("done", seconds=round(time.perf_counter() - start, 1))
    out.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
