"""benchmarks/gpu.sh end to end on the CPU (--dry-run: tiny model, small batches), so the prepared GPU
run cannot rot between the sessions that have a GPU."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import ROOT, script_env

SCRIPT = ROOT / "benchmarks" / "gpu.sh"
ROW_KEYS = {"micro_step_ms", "optimizer_step_ms", "seq_per_s_measured", "seq_per_s_at_preset_accum",
            "real_token_share", "real_tflops_per_s", "padded_tflops_per_s", "host_sync_in_accumulation"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gpu_sh")
    env = {**script_env(), "OMP_NUM_THREADS": "1", "GPU_SH_BUDGET_S": "300"}
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "gpu.jsonl").read_text().splitlines()
    assert lines, (out / "bench_gpu.log").read_text()[-3000:]
    return [json.loads(line) for line in lines]


def test_every_section_reports(dry_run):
    kinds = [r["kind"] for r in dry_run]
    assert kinds[0] == "nvidia-smi" and kinds[-1] == "finished"
    for kind in ("tests", "env", "sdpa", "row", "kernels", "done"):
        assert kind in kinds, kinds
    assert not [r for r in dry_run if r["kind"] in ("failed", "error")], [r for r in dry_run if r["kind"] == "failed"]
    assert dry_run[-1]["bench_rc"] == "0"
    tests = next(r for r in dry_run if r["kind"] == "tests")
    assert tests["rc"] in ("0", "5", "not run"), tests  # 5: all skipped (no CUDA here)


def test_rows_cover_both_phases_with_their_measures(dry_run):
    rows = [r for r in dry_run if r["kind"] == "row"]
    assert {r["phase"] for r in rows} == {"phase1", "phase2"}
    assert any(r["unpadded"] for r in rows) and any(not r["unpadded"] for r in rows)
    for row in rows:
        assert row.keys() >= ROW_KEYS, row
        assert row["seq_per_s_measured"] > 0 and 0 < row["real_token_share"] <= 1
        assert row["padded_tflops_per_s"] >= row["real_tflops_per_s"] > 0
    handled = {(r["phase"], r["precision"], r["compiled"], r["unpadded"], r["lamb"])
               for r in dry_run if r["kind"] in ("row", "skipped")}
    assert len(handled) == 10, "every planned row is measured or reported as skipped"


def test_kernel_tables_have_fifteen_rows_per_phase(dry_run):
    tables = {r["phase"]: r["top"] for r in dry_run if r["kind"] == "kernels"}
    assert set(tables) == {"phase1", "phase2"}
    for top in tables.values():
        assert len(top) == 15 and all(k["self_ms"] > 0 for k in top)


def test_script_is_lint_clean():
    if not any(os.access(os.path.join(d, "shellcheck"), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("shellcheck not installed")
    proc = subprocess.run(["shellcheck", "-x", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
