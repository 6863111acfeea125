"""benchmarks/gpu.sh end to end on the CPU (--dry-run: tiny model, small batches), so the prepared GPU
run cannot rot between the sessions that have a GPU: the same order, processes and records as on a GPU."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import bench_gpu
import pytest
from conftest import ROOT, script_env

SCRIPT = ROOT / "benchmarks" / "gpu.sh"
BENCH = ROOT / "benchmarks" / "bench_gpu.py"
ROW_KEYS = {"micro_step_ms", "optimizer_step_ms", "seq_per_s_measured", "seq_per_s_at_preset_accum",
            "real_token_share", "real_tflops_per_s", "padded_tflops_per_s", "host_sync", "graphs_compiled",
            "recompiles", "backend_compile_s", "warmup_s", "pid"}


def dry_env() -> dict[str, str]:
    return {**script_env(), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gpu_sh")
    env = {**dry_env(), "GPU_SH_BUDGET_S": "1500"}
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "gpu.jsonl").read_text().splitlines()
    assert lines, (out / "bench_gpu.log").read_text()[-3000:]
    return [json.loads(line) for line in lines]


def test_sections_come_in_the_planned_order(dry_run):
    kinds = [r["kind"] for r in dry_run]
    assert kinds[0] == "preflight" and kinds[-1] == "summary"
    assert [r["group"] for r in dry_run if r["kind"] == "tests"] == ["kernels", "optimizer", "compile", "pretraining"]
    order = ["tests", "plan", "row", "sdpa", "done", "finished", "summary"]
    firsts = [kinds.index(k) for k in order]
    assert firsts == sorted(firsts), kinds
    assert kinds.index("sdpa") > max(i for i, k in enumerate(kinds) if k in ("row", "kernels")), "the probe runs last"
    assert not [r for r in dry_run if r["kind"] in ("failed", "error")], [r for r in dry_run if r["kind"] == "failed"]
    for tests in (r for r in dry_run if r["kind"] == "tests"):
        assert tests["rc"] in ("0", "5", "not run"), tests  # 5: all skipped (no CUDA here)


def test_preflight_names_the_tools_a_compiled_row_needs(dry_run):
    pre = dry_run[0]
    for key in ("torch", "cuda", "card", "cc", "python_h", "triton_compiler", "triton_import", "nvidia_smi"):
        assert key in pre, key
    assert "from " + str(ROOT / "triton") not in pre["triton_import"], "the repository's folder is not the compiler"


def test_rows_run_in_order_of_value_each_in_its_own_process(dry_run):
    rows = [r for r in dry_run if r["kind"] == "row"]
    assert [r["index"] for r in rows] == list(range(len(bench_gpu.ROWS))), "every row measured, in the planned order"
    assert [r["label"] for r in rows[:4]] == ["phase2 bf16 packed compiled", "phase2 bf16 padded eager",
                                              "phase1 bf16 packed compiled", "phase1 bf16 padded eager"]
    assert len({r["pid"] for r in rows}) == len(rows)
    for row in rows:
        assert row.keys() >= ROW_KEYS, row
        assert row["seq_per_s_measured"] > 0 and 0 < row["real_token_share"] <= 1
        assert row["padded_tflops_per_s"] >= row["real_tflops_per_s"] > 0
        assert row["graphs_compiled"] == (1 if row["compiled"] else 0), row
        if row["precision"] == "fp16":
            assert row["fp16_skipped_steps"] >= 0 and row["final_loss_scale"] > 0


def test_kernel_tables_per_phase_and_layout(dry_run):
    tables = {(r["phase"], r["packed"]): r["top"] for r in dry_run if r["kind"] == "kernels"}
    assert set(tables) == {(phase, packed) for phase in ("phase1", "phase2") for packed in (False, True)}
    for top in tables.values():
        assert len(top) == 15 and all(k["self_ms"] > 0 for k in top)


def test_summary_has_every_row_and_the_ratios(dry_run):
    summary = dry_run[-1]
    assert set(summary["rows"]) == {row.label() for row in bench_gpu.ROWS}
    for measures in summary["rows"].values():
        assert measures["seq_per_s_at_preset_accum"] > 0 and "peak_memory_gib" not in measures  # CPU: no CUDA memory
    for phase in ("phase1", "phase2"):
        packed, compiled = summary["ratios"][phase]["packed/padded"], summary["ratios"][phase]["compiled/eager"]
        assert packed["value"] > 0 and packed["of"] == f"{phase} bf16 packed compiled / {phase} bf16 padded compiled"
        assert compiled["value"] > 0 and compiled["of"] == f"{phase} bf16 packed compiled / {phase} bf16 packed eager"
    assert set(summary["tests"]) == {"kernels", "optimizer", "compile", "pretraining"}
    assert summary["failed"] == [] and summary["script_seconds"] > 0


def test_a_crashed_row_loses_that_row_only(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--out", str(out), "--rows", "3,1",
                           "--crash_row", "3", "--budget_s", "900"], env=dry_env(), capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    failed = [r for r in records if r["kind"] == "failed"]
    assert [(r["index"], r["error"]) for r in failed] == [(3, "process exit code -6")], failed
    assert [r["index"] for r in records if r["kind"] == "row"] == [1]
    assert any(r["kind"] == "sdpa" for r in records)


def test_rows_that_do_not_fit_the_budget_are_skipped_with_the_estimate(tmp_path):
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--out", str(out), "--rows", "0,1",
                           "--budget_s", "10"], env=dry_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = [r for r in json.loads(f"[{','.join(out.read_text().splitlines())}]") if r["kind"] == "skipped"]
    assert [r["index"] for r in skipped] == [0, 1]
    assert re.search(r"needs ~23 s \(stated: 15 s a row \+ 5 s compile \+ 3 s profile\)", skipped[0]["reason"])
    assert re.search(r"needs ~18 s \(stated: 15 s a row \+ 3 s profile\)", skipped[1]["reason"])


def test_budget_decision_uses_the_stated_estimate_then_what_was_measured():
    estimates = bench_gpu.Estimates(row_s=40.0, compile_s=150.0, profile_s=10.0)
    compiled, eager = bench_gpu.Row("phase2", compiled=True, unpadded=True), bench_gpu.Row("phase2")
    limit, basis = bench_gpu.budget_decision(compiled, 101.0, 300.0, estimates, {}, profile=True)
    assert limit is None and "199 s left; needs ~200 s" in basis and "150 s compile" in basis
    limit, basis = bench_gpu.budget_decision(compiled, 50.0, 300.0, estimates, {}, profile=False)
    assert limit == 250.0 and basis.startswith("~190 s")  # within what is left, not 2 × 190 + 60
    limit, _ = bench_gpu.budget_decision(eager, 0.0, 300.0, estimates, {}, profile=False)
    assert limit == 2 * 40.0 + 60.0
    limit, basis = bench_gpu.budget_decision(compiled, 100.0, 300.0, estimates, {True: 80.0}, profile=False)
    assert limit == 200.0 and "measured" in basis


def test_every_cuda_test_is_in_exactly_one_group_of_the_script():
    groups = re.findall(r'^  "(\w+)\|(\d+)\|([^"]+)"$', SCRIPT.read_text(), flags=re.M)
    assert [g[0] for g in groups] == ["kernels", "optimizer", "compile", "pretraining"]
    named = [{name.strip() for name in g[2].split(" or ")} for g in groups]
    tree = ast.parse((ROOT / "tests" / "test_cuda.py").read_text())
    tests = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    for test in tests:
        assert sum(test in group for group in named) == 1, test
    assert set().union(*named) == tests


def test_script_is_lint_clean():
    if not any(os.access(os.path.join(d, "shellcheck"), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("shellcheck not installed")
    proc = subprocess.run(["shellcheck", "-x", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
