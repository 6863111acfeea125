"""The shell wrappers refuse an unknown precision or a GPU count that is not a whole number (issue 14).

Before, run_pretraining.sh printed a warning for an unknown precision and trained anyway without a
precision flag, and a non-numeric GPU count reached `[ -gt ]` (an "integer expression expected"
message) and silently ran one process. Every wrapper now uses the one check in
scripts/finetune_common.sh: one `error:` line, exit 2, before any folder is created. Issue 22: every
numeric positional is checked by pattern too, so that bash never evaluates one as code in `$(( ))`.
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
    ("fp8", "1", "unknown precision 'fp8': use auto, fp16, bf16, tf32 or fp32"),
    ("FP16", "1", "unknown precision 'FP16': use auto, fp16, bf16, tf32 or fp32"),
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


# --------------------------------------------------------------------------------------------
# Every numeric positional is checked by pattern before any arithmetic (issue 22, item 2)
# --------------------------------------------------------------------------------------------

INJECTED = "nproc[$(touch {marker})]"  # evaluated by bash in $(( )) or [[ -gt ]]: it would create the file


def pretraining_positionals(tmp_path: Path) -> list[str]:
    return ["8", "5e-3", "fp32", "0", "0.1", "4", "2", "false", "false", "true", "2", "3", "tiny", "true", "false",
            "4", "1e-3", "0.1", "2", "2", str(tmp_path), str(tmp_path), str(ROOT), "None", str(tmp_path / "c.json")]


def squad_positionals(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "ckpt.pt"), "1.0", "4", "3e-5", "fp32", "1", "1", str(tmp_path), str(tmp_path / "vocab.txt"),
            str(tmp_path / "out"), "train", str(tmp_path / "c.json"), "-1"]


def glue_positionals(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "ckpt.pt"), str(tmp_path), str(tmp_path / "vocab.txt"), str(tmp_path / "c.json"),
            str(tmp_path / "out"), "mrpc", "1", "8", "1", "2e-5", "0.1", "3", "-1.0", "fp32", "2", "train eval"]


def swag_positionals(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "ckpt.pt"), str(tmp_path), str(tmp_path / "vocab.txt"), str(tmp_path / "c.json"),
            str(tmp_path / "out"), "1", "8", "1", "2e-5", "0.1", "3", "-1.0", "fp32", "42", "train eval"]


def inference_positionals(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "ckpt.pt"), str(tmp_path), "64", "fp32", "1", str(tmp_path / "c.json"), "-1",
            str(tmp_path / "out"), "test"]


# (wrapper, its positional arguments, {argument number: name in the message}).
WRAPPERS = [
    ("run_pretraining.sh", pretraining_positionals,
     {1: "train_batch_size (argument 1)", 2: "learning_rate (argument 2)", 4: "num_gpus (argument 4)",
      5: "warmup_proportion (argument 5)", 6: "train_steps (argument 6)", 7: "save_checkpoint_steps (argument 7)",
      11: "gradient_accumulation_steps (argument 11)", 12: "seed (argument 12)",
      16: "train_batch_size_phase2 (argument 16)", 17: "learning_rate_phase2 (argument 17)",
      18: "warmup_proportion_phase2 (argument 18)", 19: "train_steps_phase2 (argument 19)",
      20: "gradient_accumulation_steps_phase2 (argument 20)"}),
    ("run_squad.sh", squad_positionals,
     {2: "epochs (argument 2)", 3: "batch_size (argument 3)", 4: "learning_rate (argument 4)", 6: "num_gpu",
      7: "seed (argument 7)", 13: "max_steps (argument 13)"}),
    ("run_glue.sh", glue_positionals,
     {7: "num_gpu", 8: "batch_size (argument 8)", 9: "gradient_accumulation_steps (argument 9)",
      10: "learning_rate (argument 10)", 11: "warmup_proportion (argument 11)", 12: "epochs (argument 12)",
      13: "max_steps (argument 13)", 15: "seed (argument 15)"}),
    ("run_swag.sh", swag_positionals,
     {6: "num_gpu", 7: "batch_size (argument 7)", 8: "gradient_accumulation_steps (argument 8)",
      9: "learning_rate (argument 9)", 10: "warmup_proportion (argument 10)", 11: "epochs (argument 11)",
      12: "max_steps (argument 12)", 14: "seed (argument 14)"}),
    ("run_pretraining_inference.sh", inference_positionals,
     {3: "eval_batch_size (argument 3)", 5: "num_gpu", 7: "max_steps (argument 7)"}),
]
WRAPPER_CASES = [(script, build, position, name) for script, build, names in WRAPPERS
                 for position, name in names.items()]


@pytest.mark.parametrize("script, build, position, name", WRAPPER_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in WRAPPER_CASES])
def test_wrapper_arguments_are_never_evaluated_as_code(tmp_path, script, build, position, name):
    (tmp_path / "ckpt.pt").write_bytes(b"")
    (tmp_path / "c.json").write_text("{}")
    marker = tmp_path / "EVALUATED"
    args = build(tmp_path)
    args[position - 1] = INJECTED.format(marker=marker)
    env = {**script_env(), "RESULTS_DIR": str(tmp_path / "results")}
    proc = subprocess.run(["bash", str(SCRIPTS / script), *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert not marker.exists(), f"{script} ran the code in argument {position}"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {name} must be a ") and line.endswith(f", got '{args[position - 1]}'"), line
    assert not (tmp_path / "results").exists() and not (tmp_path / "out").exists()
