"""Reliability, round 2 (issue 22, items 1, 4, 5, 7): a checkpoint's optimizer state and schedule flags
are checked on resume, one output folder holds one run, and a signal to the pretraining wrapper reaches
the trainer (item 2, the wrappers' arguments: tests/e2e/test_wrapper_arguments.py). Listed in
docs/reliability.md with these tests' names.
"""
from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, script_env, shared_path
from test_bad_inputs import glue_folder
from test_pretraining import base_args, corpus  # noqa: F401  (corpus is a pytest fixture)
from test_pretraining_reliability import (
    assert_one_error_line,
    checkpoint_names,
    child_pids,
    launch,
    pretraining_command,
    wait_for_output,
)

from checkpointing import optimizer_state_mismatch
from optimization import Lamb
from run_log import read_dllogger

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXIT_STOPPED = 75  # run_pretraining.EXIT_STOPPED


# --------------------------------------------------------------------------------------------
# 1. Optimizer state from a checkpoint is checked against the model before LAMB uses it
# --------------------------------------------------------------------------------------------


def tiny_lamb() -> tuple[torch.nn.Module, Lamb]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    lamb = Lamb(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    lamb.step()
    return model, lamb


def swap_moments(state: dict, key: str = "exp_avg") -> None:
    state[0][key], state[1][key] = state[1][key], state[0][key]


# Each case: (name, how to damage a LAMB state_dict in place, expected message).
OPTIMIZER_STATE_CASES = [
    ("swapped_moments", lambda sd: swap_moments(sd["state"]),
     "parameter group 0, 0.weight: 'exp_avg' has shape [3], the parameter [3, 4]"),
    ("integer_moment", lambda sd: sd["state"][1].update(exp_avg_sq=torch.zeros(3, dtype=torch.int64)),
     "parameter group 0, 0.bias: 'exp_avg_sq' has dtype torch.int64, not a floating-point type"),
    ("missing_moment", lambda sd: sd["state"][2].pop("exp_avg_sq"),
     "parameter group 0, 1.weight: 'exp_avg_sq' is missing"),
    ("one_parameter_less", lambda sd: sd["param_groups"][0]["params"].pop(),
     "parameter group 0 holds 3 parameters, the model's 4"),
    ("extra_group", lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
     "2 parameter groups, the model has 1"),
    ("step_not_a_number", lambda sd: sd["param_groups"][0].update(step="4"),
     "parameter group 0 'step' is '4', not a count of steps"),
    ("state_not_a_dict", lambda sd: sd["state"].update({0: [1, 2]}),
     "parameter group 0, 0.weight: state is a list, not a dict"),
    ("no_param_groups", lambda sd: sd.pop("param_groups"), "not an optimizer state (needs 'state' and 'param_groups')"),
]


@pytest.mark.parametrize("name, damage, expected", OPTIMIZER_STATE_CASES, ids=[c[0] for c in OPTIMIZER_STATE_CASES])
def test_optimizer_state_that_does_not_fit_names_the_first_bad_entry(name, damage, expected):
    model, lamb = tiny_lamb()
    sd = lamb.state_dict()
    assert optimizer_state_mismatch(lamb, sd) is None
    damage(sd)
    names = {id(p): n for n, p in model.named_parameters()}
    assert optimizer_state_mismatch(lamb, sd, names) == expected


def swapped_moments_checkpoint(path: Path) -> str:
    """Swap the `exp_avg` of the word embeddings ([30528, 64]) and the position embeddings ([128, 64])."""
    ckpt = torch.load(path, weights_only=True)
    swap_moments(ckpt["optimizer"]["state"])
    torch.save(ckpt, path)
    return "bert.embeddings.word_embeddings.weight: 'exp_avg' has shape [128, 64], the parameter [30528, 64]"


@pytest.mark.parametrize("route, fused", [("resume", "on"), ("resume", "off"), ("init_checkpoint", "auto")])
def test_swapped_lamb_moments_are_one_line_not_a_segfault(corpus, tmp_path, route, fused):  # noqa: F811
    first = launch(base_args(corpus, tmp_path, max_steps=2, fused_lamb=fused))
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = tmp_path / "ckpt" / "ckpt_2.pt"
    bad_entry = swapped_moments_checkpoint(ckpt)
    before = ckpt.read_bytes()
    if route == "resume":
        proc = launch(base_args(corpus, tmp_path, max_steps=4, fused_lamb=fused) + ["--resume_from_checkpoint"])
    else:
        proc = launch(base_args(corpus, tmp_path, output_dir=tmp_path / "fresh", max_steps=4, fused_lamb=fused,
                                init_checkpoint=ckpt))
    assert_one_error_line(proc, f"{ckpt}: optimizer state does not fit this model: parameter group 0, {bad_entry}")
    assert checkpoint_names(tmp_path / "ckpt") == ["ckpt_2.pt"] and ckpt.read_bytes() == before
    assert checkpoint_names(tmp_path / "fresh") == []


# --------------------------------------------------------------------------------------------
# 7. A resume with a new --max_steps or --learning_rate rebuilds the LR schedule; a new shape is refused
# --------------------------------------------------------------------------------------------


def logged_learning_rates(json_path: Path) -> dict[int, float]:
    return {r["step"][1]: r["data"]["learning_rate"] for r in read_dllogger(json_path)
            if isinstance(r.get("step"), list) and len(r["step"]) == 2 and "learning_rate" in r["data"]}


@pytest.mark.parametrize("new_lr", [None, 2e-3])
def test_resume_with_a_larger_max_steps_trains_the_new_steps_at_the_rebuilt_schedule(
        corpus, tmp_path, new_lr):  # noqa: F811
    first = launch(base_args(corpus, tmp_path, max_steps=4))
    assert first.returncode == 0, first.stderr[-3000:]
    flags = {"max_steps": 8, "json-summary": tmp_path / "resumed.json"}
    if new_lr is not None:
        flags["learning_rate"] = new_lr
    resumed = launch(base_args(corpus, tmp_path, **flags) + ["--resume_from_checkpoint"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    change = "--max_steps 4 -> 8" + ("" if new_lr is None else ", --learning_rate 0.005 -> 0.002")
    assert f"resume: {change}: LR schedule rebuilt for 8 steps, continuing at step 4" in resumed.stdout
    rates = logged_learning_rates(tmp_path / "resumed.json")
    assert sorted(rates) == [5, 6, 7, 8]
    peak = new_lr or 5e-3
    for step, lr in rates.items():  # poly schedule past the warm-up: peak * (1 - step/8) ** 0.5, 0 at the end
        assert lr == pytest.approx(peak * (1 - step / 8) ** 0.5, rel=1e-9, abs=1e-12), step
    assert all(rates[step] > 0 for step in (5, 6, 7))
    assert checkpoint_names(tmp_path / "ckpt") == ["ckpt_4.pt", "ckpt_8.pt"]


@pytest.mark.parametrize("flag, value, stored", [("warmup_proportion", 0.5, 0.1), ("lr_scheduler", "cosine", "poly")])
def test_resume_that_would_change_the_shape_of_the_schedule_is_refused(
        corpus, tmp_path, flag, value, stored):  # noqa: F811
    first = launch(base_args(corpus, tmp_path, max_steps=4, steps_this_run=2))
    assert first.returncode == 0, first.stderr[-3000:]
    before = (tmp_path / "ckpt" / "ckpt_2.pt").read_bytes()
    proc = launch(base_args(corpus, tmp_path, max_steps=4, **{flag: value}) + ["--resume_from_checkpoint"])
    assert_one_error_line(proc, f"{tmp_path / 'ckpt' / 'ckpt_2.pt'} was trained with --{flag} {stored}, this run "
                                f"asks for {value}")
    assert checkpoint_names(tmp_path / "ckpt") == ["ckpt_2.pt"]
    assert (tmp_path / "ckpt" / "ckpt_2.pt").read_bytes() == before


# --------------------------------------------------------------------------------------------
# 4. One run per output folder: a second one stops at once, naming the first
# --------------------------------------------------------------------------------------------


def test_a_second_run_on_the_same_output_folder_stops_naming_the_first(corpus, tmp_path):  # noqa: F811
    ckpt = tmp_path / "ckpt"
    args = base_args(corpus, tmp_path, max_steps=100000, num_steps_per_checkpoint=1, keep_checkpoints=0)
    first = subprocess.Popen(pretraining_command(args), env=script_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        wait_for_output(first, "checkpoint_step", lines)  # training and saving
        second = launch(base_args(corpus, tmp_path, max_steps=100000, num_steps_per_checkpoint=1,
                                  **{"json-summary": tmp_path / "second.json"}) + ["--resume_from_checkpoint"])
        assert_one_error_line(second, f"{ckpt} is in use by pid {first.pid}")
        assert first.poll() is None  # the first run goes on, its temp files untouched
        assert not (tmp_path / "second.json").exists()
        # SIGKILL leaves the lock file but not the lock (it dies with the process): the folder is free again.
        first.kill()
        first.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.kill()
        first.communicate(timeout=60)
    assert (ckpt / ".lock").read_text().strip() == str(first.pid)
    after = launch(base_args(corpus, tmp_path, max_steps=1, keep_checkpoints=0) + ["--resume_from_checkpoint"])
    assert after.returncode == 0, after.stderr[-3000:]
    assert not (ckpt / ".lock").exists()  # removed by the run that held it, at its end


def test_fine_tuning_output_folder_in_use_is_one_line(tmp_path):
    """The same lock for run_glue/run_squad/run_swag (finetuning.start_run); held here by a real second process."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time, training; training.lock_output_dir(sys.argv[1]);"
                               " print('locked', flush=True); time.sleep(600)", str(out)],
                              env=script_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = subprocess.run([sys.executable, str(ROOT / "run_glue.py"), "--task_name", "mrpc", "--data_dir",
                               glue_folder(tmp_path / "glue"), "--output_dir", out, "--do_eval", "--init_checkpoint",
                               tmp_path / "none.pt", "--vocab_file",
                               shared_path("vocab", "bert-base-uncased-vocab.txt")],
                              env=script_env(), capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {out} is in use by pid {holder.pid} (another run " \
                                                           "writes there): wait for it to end or use another folder"
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


# --------------------------------------------------------------------------------------------
# 5. A signal to scripts/run_pretraining.sh reaches the trainer; the wrapper waits and passes its code on
# --------------------------------------------------------------------------------------------


def trainer_pid(wrapper: subprocess.Popen) -> int:
    (pid,) = [pid for pid in child_pids(wrapper.pid)
              if b"run_pretraining.py" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return pid


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_a_signal_to_the_pretraining_wrapper_stops_the_trainer_and_passes_its_code_on(
        corpus, tmp_path, signum):  # noqa: F811
    results = tmp_path / "results"
    args = ["8", "5e-3", "fp32", "0", "0.1", "100000", "2", "false", "true", "true", "2", "3", "tiny", "true",
            "false", "4", "1e-3", "0.1", "2", "2", str(corpus["phase1"]), str(corpus["phase2"]), str(ROOT), "None",
            str(corpus["config"])]
    env = {**script_env(), "RESULTS_DIR": str(results), "PYTHON": sys.executable,
           "EXTRA_ARGS": "--disable_progress_bar"}
    wrapper = subprocess.Popen(["bash", str(ROOT / "scripts" / "run_pretraining.sh"), *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        wait_for_output(wrapper, "checkpoint_step", lines)  # phase 1 trains and has saved
        trainer = trainer_pid(wrapper)
        wrapper.send_signal(signum)  # to the wrapper only, as a process manager would
        out, _ = wrapper.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            wrapper.kill()
    out = "".join(lines) + out
    assert wrapper.returncode == EXIT_STOPPED, out[-3000:]
    assert not Path(f"/proc/{trainer}").exists(), "the trainer outlived its wrapper"
    assert f"received signal {int(signum)}: saving a checkpoint and stopping" in out
    assert "phase 1 stopped by a signal before its last step" in out
    steps = [int(name[5:-3]) for name in checkpoint_names(results / "checkpoints")]
    assert steps and max(steps) < 100000
    (logfile,) = results.glob("tiny.pyt_bert_pretraining_phase1_*.log")  # tee ignored the signal: the log is whole
    assert "stopped by a signal at step" in logfile.read_text()
