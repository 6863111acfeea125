"""Golden loss curve: a fixed tiny CPU fp32 pretraining run (phase 1, then phase 2, through
scripts/run_pretraining.sh) must reproduce the per-step losses checked in under tests/assets/losses/.

CPU fp32 training is deterministic, so any change in these numbers means the training math, the data
order, the masking, the initialisation or the optimizer changed. When that is intended, regenerate the
file on purpose and say why in the commit:

    .venv/bin/python tests/test_golden_loss.py --regenerate
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, script_env
from pretrain_helpers import copy_rows, make_shard, shard_rows, wikitext_documents, write_config

from run_log import read_dllogger

GOLDEN = ROOT / "tests" / "assets" / "losses" / "pretrain_tiny_cpu_fp32.json"
RELATIVE_TOLERANCE = 1e-6
# The golden numbers were made with every fp32 GEMM in oneDNN. --cpu_gemm auto picks oneDNN or torch's
# BLAS by the CPU (the same choice in every process: test_pretraining checks the default path for
# bitwise reproducibility and exact resume), and the two libraries round differently (well within
# training noise, not within 1e-6), so this run of fixed numbers names its library, as it names fp32.
GOLDEN_CPU_GEMM = "onednn"

# Positional arguments of scripts/run_pretraining.sh: phase 1 runs 6 steps of 8 sequences in 2
# micro-batches with a checkpoint every 3 steps; phase 2 resumes from it for 4 steps of 4 sequences.
RECIPE = {
    "train_batch_size": "8", "learning_rate": "5e-3", "precision": "fp32", "num_gpus": "0",
    "warmup_proportion": "0.2", "train_steps": "6", "save_checkpoint_steps": "3", "resume_training": "false",
    "create_logfile": "false", "accumulate_gradients": "true", "gradient_accumulation_steps": "2", "seed": "42",
    "job_name": "golden", "allreduce_post_accumulation": "true", "allreduce_post_accumulation_fp16": "false",
    "train_batch_size_phase2": "4", "learning_rate_phase2": "2e-3", "warmup_proportion_phase2": "0.25",
    "train_steps_phase2": "4", "gradient_accumulation_steps_phase2": "2",
}


def build_data(base: Path) -> dict[str, Path]:
    """Shards from 12 WikiText-2 articles: seq 64 / 10 predictions (phase 1), seq 128 / 20 (phase 2)."""
    text = base / "wiki.txt"
    text.write_text(wikitext_documents(12), encoding="utf-8")
    p1 = make_shard(base / "all_64.hdf5", text, 64, 10, seed=1234)
    p2 = make_shard(base / "all_128.hdf5", text, 128, 20, seed=1234)
    phase1, phase2 = base / "phase1", base / "phase2"
    phase1.mkdir()
    phase2.mkdir()
    n1 = shard_rows(p1)
    copy_rows(p1, phase1 / "wiki_training_0.hdf5", 0, n1 // 2)
    copy_rows(p1, phase1 / "wiki_training_1.hdf5", n1 // 2, n1)
    copy_rows(p2, phase2 / "wiki_training_0.hdf5", 0, shard_rows(p2))
    return {"phase1": phase1, "phase2": phase2, "config": write_config(base / "tiny.json")}


def step_losses(json_path: Path) -> dict[str, float]:
    return {str(r["step"][1]): r["data"]["step_loss"] for r in read_dllogger(json_path)
            if isinstance(r.get("step"), list) and len(r["step"]) == 2 and "step_loss" in r["data"]}


def run_recipe(base: Path) -> dict[str, dict[str, float]]:
    data = build_data(base)
    results = base / "results"
    args = [*RECIPE.values(), str(data["phase1"]), str(data["phase2"]), str(ROOT), "None", str(data["config"])]
    env = {**script_env(), "RESULTS_DIR": str(results), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "EXTRA_ARGS": f"--disable_progress_bar --log_freq=1 --cpu_gemm={GOLDEN_CPU_GEMM}"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_pretraining.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"phase1": step_losses(results / "dllogger.json"), "phase2": step_losses(results / "dllogger_phase2.json")}


def test_loss_curve_matches_golden(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    fresh = run_recipe(tmp_path)
    for phase in ("phase1", "phase2"):
        assert list(fresh[phase]) == list(golden[phase]), f"{phase}: logged steps differ"
        for step, expected in golden[phase].items():
            got = fresh[phase][step]
            assert math.isclose(got, expected, rel_tol=RELATIVE_TOLERANCE), \
                f"{phase} step {step}: loss {got!r}, golden {expected!r} (regenerate only on purpose: see module doc)"


def regenerate() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        losses = run_recipe(Path(tmp))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(losses, indent=2) + "\n")
    print(f"wrote {GOLDEN}: {sum(map(len, losses.values()))} steps")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_golden_loss.py --regenerate")
    regenerate()
