"""Which CPU a measurement ran on, the benchmarks' clocks, and which precisions are worth timing here."""
from __future__ import annotations

import os
import time
from pathlib import Path

import precision

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
    if device_type == "cpu" and "bf16" in asked and not precision.cpu_runs_bf16_natively():
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
