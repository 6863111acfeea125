"""Benchmarks name the CPU they ran on: speed ratios differ by CPU generation."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, script_env
from cpu_info import benchmark_precisions, describe_cpu

import precision

ZEN4_LSCPU = {"model name": "AMD EPYC", "vendor id": "AuthenticAMD", "cpu family": "25", "model": "17",
              "cpu(s)": "2", "flags": "fpu avx2 avx512f avx512_bf16"}


def test_amd_family_and_generation_are_named():
    assert describe_cpu(ZEN4_LSCPU) == ("AMD EPYC (AMD Zen 4: family 25, model 17; 2 logical CPUs; "
                                        "AVX-512, AVX-512 BF16)")
    zen3 = {**ZEN4_LSCPU, "flags": "fpu avx2", "model": "1"}
    assert describe_cpu(zen3) == "AMD EPYC (AMD Zen 3: family 25, model 1; 2 logical CPUs; no native bf16)"
    zen5 = {**ZEN4_LSCPU, "cpu family": "26", "model": "2"}
    assert describe_cpu(zen5).startswith("AMD EPYC (AMD Zen 5: family 26, model 2;")


def test_intel_and_cpuinfo_fields_keep_the_numbers_without_a_generation():
    cpuinfo = {"model name": "Intel(R) Xeon(R) Platinum 8480+", "vendor_id": "GenuineIntel", "cpu family": "6",
               "model": "143", "flags": "avx512f avx512_bf16 amx_bf16 amx_tile"}
    text = describe_cpu(cpuinfo)
    assert text.startswith("Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143; ")
    assert text.endswith("AVX-512, AVX-512 BF16, AMX)")


def test_this_machine_is_described_with_lscpu_model_name_and_family():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, env={**script_env(), "LC_ALL": "C"}).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    text = describe_cpu()
    assert text.startswith(fields["Model name"])
    if "CPU family" in fields:
        assert f"family {fields['CPU family']}, model {fields['Model']}" in text


def test_every_benchmark_prints_the_cpu():
    # bench_gpu.py names the card and records the host CPU in its JSON lines instead.
    benches = sorted(b for b in (ROOT / "benchmarks").glob("bench_*.py") if b.name != "bench_gpu.py")
    assert len(benches) >= 5
    missing = [b.name for b in benches if 'print(f"CPU: {describe_cpu()}' not in b.read_text()]
    assert not missing, f"benchmarks without the CPU line: {missing}"


def test_pretraining_benchmark_output_names_the_cpu_and_gemm_choice():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_pretraining.py"), "--shapes", "small", "--precisions", "fp32",
         "--batch", "2", "--seq", "32", "--max_pred", "4", "--steps", "1", "--rounds", "1", "--warmup", "0",
         "--skip_hf", "--threads", "1", "--device", "cpu"],
        capture_output=True, text=True, env={**script_env(), "BERT_CPU_GEMM": "aten"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("CPU: "))
    assert line == f"CPU: {describe_cpu()}; ours' fp32 GEMMs: aten"
    assert re.search(r"^small\s+fp32\s+2\s", proc.stdout, re.M)


def test_bf16_rows_are_skipped_with_the_reason_where_the_cpu_only_emulates_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_runs_bf16_natively", lambda: False)
    kept, skipped = benchmark_precisions(["fp32", "bf16"], "cpu")
    assert kept == ["fp32"] and "no native bf16" in skipped["bf16"]
    assert benchmark_precisions(["fp32", "bf16"], "cuda") == (["fp32", "bf16"], {})
    monkeypatch.setattr(precision, "cpu_runs_bf16_natively", lambda: True)
    assert benchmark_precisions(["fp32", "bf16"], "cpu") == (["fp32", "bf16"], {})


def test_inference_benchmark_shows_where_the_time_goes_per_op():
    from conftest import load_benchmark

    bench = load_benchmark("bench_inference")
    import torch

    a = torch.randn(64, 64)

    def ours(batch):
        return [torch.mm(a, a).relu()]

    def theirs(batch):
        return [torch.mm(torch.mm(a, a), a)]

    ops = bench.profile_ops({"ours": ours, "transformers": theirs}, {})
    assert ops["ours"]["aten::mm"][1] == 1 and ops["transformers"]["aten::mm"][1] == 2
    assert "aten::relu" in ops["ours"] and "aten::relu" not in ops["transformers"]
    table = bench.format_profile(ops).splitlines()
    assert table[0] == "| op | ours s (calls) | transformers s (calls) |"
    cells = [cell.strip() for cell in next(line for line in table if line.startswith("| aten::mm |")).split("|")]
    assert cells[2].endswith("(1)") and cells[3].endswith("(2)")
    assert table[-1].startswith("| total | ")


def test_gemm_benchmark_times_both_libraries_for_each_product_of_each_linear(capsys):
    import bench_cpu_gemm

    from bert_kernels import onednn_linear_available

    if not onednn_linear_available():
        pytest.skip("this torch build has no oneDNN linear")
    bench_cpu_gemm.main(["--threads", "1", "--rows", "16", "--hidden", "32", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "CPU: " in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line.endswith("x |")]
    assert len(rows) == 13  # 4 linears × (forward, input_grad, weight_grad), and their sum
    assert {row.split(" | ")[1] for row in rows[:-1]} == {"forward", "input_grad", "weight_grad"}
