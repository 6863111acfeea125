"""The shell wrappers refuse an unknown precision or a GPU count that is not a whole number (issue 14).

Before, run_pretraining.sh printed a warning for an unknown precision and trained anyway without a
precision flag, and a non-numeric GPU count reached `[ -gt ]` (an "integer expression expected"
message) and silently ran one process. Every wrapper now uses the one check in
scripts/finetune_common.sh: one `error:` line, exit 2, before any folder is created.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, script_env

SCRIPTS = ROOT / "scripts"


def wrapper_argv(script: str, precision: str, gpus: str, tmp: Path) -> list[str]:
    """Positional arguments of each wrapper with the given precision and GPU count (other values valid)."""
    if script == "run_squad.sh":
        return ["ckpt.pt", "1", "4", "3e-5", precision, gpus, "1", str(tmp), str(tmp / "vocab.txt"), str(tmp / "out")]
    if script == "run_glue.sh":
        return ["ckpt.pt", str(tmp), str(tmp / "vocab.txt"), str(tmp / "cfg.json"), str(tmp / "out"), "mrpc", gpus,
                "16", "1", "2e-5", "0.1", "3", "-1", precision]
    if script == "run_swag.sh":
        return ["ckpt.pt", str(tmp), str(tmp / "vocab.txt"), str(tmp / "cfg.json"), str(tmp / "out"), gpus, "16", "1",
                "2e-5", "0.1", "3", "-1", precision]
    if script == "run_pretraining_inference.sh":
        for name in ("ckpt.pt", "cfg.json"):
            (tmp / name).write_text("{}")
        return [str(tmp / "ckpt.pt"), str(tmp), "8", precision, gpus, str(tmp / "cfg.json"), "-1", str(tmp / "out")]
    assert script == "run_pretraining.sh"
    return ["8", "1e-3", precision, gpus]


CASES = [
    ("fp8", "1", "unknown precision 'fp8': use fp16, bf16, tf32 or fp32"),
    ("FP16", "1", "unknown precision 'FP16': use fp16, bf16, tf32 or fp32"),
    ("fp32", "two", "must be a whole number >= {min}, got 'two'"),
    ("fp32", "-1", "must be a whole number >= {min}, got '-1'"),
    ("fp32", "1.5", "must be a whole number >= {min}, got '1.5'"),
]
WRAPPERS = ["run_squad.sh", "run_glue.sh", "run_swag.sh", "run_pretraining_inference.sh", "run_pretraining.sh"]


@pytest.mark.parametrize("script", WRAPPERS)
@pytest.mark.parametrize(("precision", "gpus", "message"), CASES, ids=[f"{p}-{g}" for p, g, _ in CASES])
def test_wrapper_refuses_bad_precision_or_gpu_count(tmp_path, script, precision, gpus, message):
    env = script_env()
    env["RESULTS_DIR"] = str(tmp_path / "results")  # run_pretraining.sh's output root
    done = subprocess.run(["bash", str(SCRIPTS / script), *wrapper_argv(script, precision, gpus, tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message.format(min=0 if script == "run_pretraining.sh" else 1) in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()


def test_pretraining_wrapper_checks_the_process_count_override(tmp_path):
    env = script_env()
    env.update(RESULTS_DIR=str(tmp_path / "results"), NPROC_PER_NODE="all")
    done = subprocess.run(["bash", str(SCRIPTS / "run_pretraining.sh"), "8", "1e-3", "fp32", "0"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: NPROC_PER_NODE must be a whole number >= 0, got 'all'"
    assert not (tmp_path / "results").exists()
