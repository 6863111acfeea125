"""Pretraining end to end on real text: loss falls, exact resume after SIGTERM, DDP equivalence, shell recipe."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, script_env
from pretrain_helpers import copy_rows, make_shard, shard_rows, wikitext_documents, write_config
from slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

from run_log import read_dllogger

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Shards from 40 WikiText-2 articles: seq 64 / 10 predictions (phase 1) and seq 128 / 20 (phase 2)."""
    base = tmp_path_factory.mktemp("pretrain_data")
    text = base / "wiki.txt"
    text.write_text(wikitext_documents(40), encoding="utf-8")
    p1 = make_shard(base / "all_64.hdf5", text, 64, 10, dupe=2)
    p2 = make_shard(base / "all_128.hdf5", text, 128, 20, dupe=1)
    n1, n2 = shard_rows(p1), shard_rows(p2)
    dirs = {"text": text, "phase1": base / "phase1", "phase2": base / "phase2",
            "config": write_config(base / "tiny.json")}
    dirs["phase1"].mkdir()
    dirs["phase2"].mkdir()
    copy_rows(p1, dirs["phase1"] / "wiki_training_0.hdf5", 0, n1 // 2)
    copy_rows(p1, dirs["phase1"] / "wiki_training_1.hdf5", n1 // 2, n1 - 64)
    copy_rows(p1, dirs["phase1"] / "wiki_test_0.hdf5", n1 - 64, n1)
    copy_rows(p2, dirs["phase2"] / "wiki_training_0.hdf5", 0, n2)
    return dirs


def run_pretraining(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "run_pretraining.py"), "--do_train", "--disable_progress_bar", *args]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def base_args(corpus, out: Path, **overrides) -> list[str]:
    values = {
        "input_dir": corpus["phase1"], "config_file": corpus["config"], "output_dir": out / "ckpt",
        "json-summary": out / "dllogger.json", "train_batch_size": 16, "learning_rate": 5e-3, "max_steps": 30,
        "warmup_proportion": 0.1, "max_seq_length": 64, "max_predictions_per_seq": 10, "seed": 7,
        "num_steps_per_checkpoint": 1000, "log_freq": 1, "precision": "fp32",
    }
    values.update(overrides)
    return [f"--{k}={v}" for k, v in values.items()]


def step_losses(json_path: Path) -> dict[int, float]:
    return {r["step"][1]: r["data"]["step_loss"] for r in read_dllogger(json_path)
            if isinstance(r.get("step"), list) and len(r["step"]) == 2 and "step_loss" in r["data"]}


def sigterm_after_steps(args: list[str], log: Path, steps: int = 5) -> tuple[int, str]:
    """Start a run, SIGTERM it once `log` holds `steps` step losses; (exit code, output)."""
    cmd = [sys.executable, str(ROOT / "run_pretraining.py"), "--do_train", "--disable_progress_bar", *args]
    proc = subprocess.Popen(cmd, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(step_losses(log)) >= steps:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def test_mlm_loss_falls_on_real_text(corpus, tmp_path):
    run_pretraining(base_args(corpus, tmp_path, max_steps=80, train_batch_size=32, learning_rate=3e-2))
    records = [r["data"] for r in read_dllogger(tmp_path / "dllogger.json") if "mlm_loss" in r.get("data", {})]
    first, last = records[0]["mlm_loss"], sum(r["mlm_loss"] for r in records[-5:]) / 5
    assert first > 9.5, "an untrained model should be near ln(30528) ≈ 10.3"
    assert last < first - 2.5, (first, last)
    summary = [r["data"] for r in read_dllogger(tmp_path / "dllogger.json") if r.get("step") == []][0]
    assert summary["final_loss"] > 0 and summary["training_sequences_per_second"] > 0
    assert (tmp_path / "ckpt" / "ckpt_80.pt").is_file()
    assert (tmp_path / "dllogger_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_exact_resume_after_sigterm(corpus, tmp_path):
    n = 24
    straight = tmp_path / "straight"
    run_pretraining(base_args(corpus, straight, max_steps=n, num_steps_per_checkpoint=4))
    kept = sorted(p.name for p in (straight / "ckpt").glob("ckpt_*.pt"))
    assert kept == ["ckpt_16.pt", "ckpt_20.pt", "ckpt_24.pt"], kept  # --keep_checkpoints 3 (default)

    resumed = tmp_path / "resumed"
    log = resumed / "dllogger.json"
    returncode, out = sigterm_after_steps(base_args(corpus, resumed, max_steps=n, num_steps_per_checkpoint=4), log)
    assert returncode == 75, out[-3000:]  # stopped by a signal before its last step (EXIT_STOPPED)
    assert "Traceback" not in out
    first_part = step_losses(log)
    stopped_at = max(first_part)
    assert stopped_at < n, "the signal must stop the run early"
    assert (resumed / "ckpt" / f"ckpt_{stopped_at}.pt").is_file()

    # A file cut short by a crash, an empty one (a crash before any byte) and a temp file must never be
    # picked: each damaged one is skipped with one warning line naming it.
    (resumed / "ckpt" / f"ckpt_{n + 100}.pt").write_bytes(b"PK\x03\x04 truncated")
    (resumed / "ckpt" / f"ckpt_{n + 300}.pt").write_bytes(b"")
    (resumed / "ckpt" / f".tmp-ckpt_{n + 200}.pt.x").write_bytes(b"partial")
    second = run_pretraining(base_args(corpus, resumed, max_steps=n, num_steps_per_checkpoint=4,
                                       **{"json-summary": resumed / "dllogger2.json"}) + ["--resume_from_checkpoint"])
    warnings = [line for line in second.stderr.splitlines() if "skipping unreadable checkpoint" in line]
    assert len(warnings) == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert warnings[0].endswith(f"ckpt_{n + 300}.pt: empty file"), warnings
    assert f"ckpt_{n + 100}.pt: truncated or not a checkpoint" in warnings[1], warnings
    assert f"resumed from {resumed / 'ckpt' / f'ckpt_{stopped_at}.pt'}" in second.stdout
    losses = {**first_part, **step_losses(resumed / "dllogger2.json")}
    expected = step_losses(straight / "dllogger.json")
    assert sorted(losses) == list(range(1, n + 1))
    assert losses == expected  # bitwise: same floats at every step

    a = torch.load(straight / "ckpt" / f"ckpt_{n}.pt", weights_only=True)["model"]
    b = torch.load(resumed / "ckpt" / f"ckpt_{n}.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def split_exact(src: Path, dst_dir: Path, files: int, rows: int) -> None:
    dst_dir.mkdir()
    for i in range(files):
        copy_rows(src, dst_dir / f"part_training_{i}.hdf5", i * rows, (i + 1) * rows)


# One process × accumulation 2k against 2 gloo ranks × accumulation k on the same global batches:
# each shard holds exactly one rank's micro-batches for one step, so per step the single process
# reads shards s and s+1 while rank 0 reads s and rank 1 reads s+1 (the original's assignment).
EXACT_MICRO, EXACT_K, EXACT_STEPS = 4, 2, 3


def exact_split_settings(corpus, tmp_path: Path) -> dict:
    """base_args overrides for runs on exactly split shards, without dropout, with a checkpoint at the last
    step (the end-of-run save must then be skipped on every rank alike)."""
    src = next(corpus["phase1"].glob("*training_0.hdf5"))
    data = tmp_path / "data"
    split_exact(src, data, files=2 * EXACT_STEPS, rows=EXACT_MICRO * EXACT_K)
    config = write_config(tmp_path / "nodrop.json", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return {"input_dir": data, "config_file": config, "max_steps": EXACT_STEPS, "learning_rate": 1e-2,
            "num_steps_per_checkpoint": EXACT_STEPS}


def one_process_model(corpus, out: Path, settings: dict, flags: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    run_pretraining(base_args(corpus, out, train_batch_size=2 * EXACT_K * EXACT_MICRO,
                              gradient_accumulation_steps=2 * EXACT_K, **settings) + list(flags))
    return torch.load(out / "ckpt" / f"ckpt_{EXACT_STEPS}.pt", weights_only=True)["model"]


def two_rank_model(corpus, out: Path, settings: dict, flags: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "run_pretraining.py"), "--do_train", "--disable_progress_bar",
           *base_args(corpus, out, train_batch_size=EXACT_K * EXACT_MICRO, gradient_accumulation_steps=EXACT_K,
                      **settings), *flags]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out / "ckpt" / f"ckpt_{EXACT_STEPS}.pt", weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


def default_path_args(corpus, out: Path, **overrides) -> list[str]:
    """`base_args` with nothing pinned that a user would leave out: precision and GEMM library are auto."""
    return [arg for arg in base_args(corpus, out, **overrides) if not arg.startswith("--precision=")]


def test_default_runs_are_bitwise_equal_and_resume_exactly(corpus, tmp_path):
    """With the defaults (--precision auto, --cpu_gemm auto, no environment pin) two runs give the same
    weights bit for bit, and a run stopped by SIGTERM then resumed ends where they do."""
    assert "BERT_CPU_GEMM" not in script_env()
    n = 12
    runs = [tmp_path / "first", tmp_path / "second"]
    for out in runs:
        proc = run_pretraining(default_path_args(corpus, out, max_steps=n, num_steps_per_checkpoint=4))
        assert re.search(r"precision auto: (fp32|bf16) \(", proc.stdout), proc.stdout[-2000:]
    resumed = tmp_path / "resumed"
    returncode, out = sigterm_after_steps(default_path_args(corpus, resumed, max_steps=n, num_steps_per_checkpoint=4),
                                          resumed / "dllogger.json", steps=5)
    assert returncode == 75, out[-3000:]
    run_pretraining(default_path_args(corpus, resumed, max_steps=n, num_steps_per_checkpoint=4,
                                      **{"json-summary": resumed / "dllogger2.json"}) + ["--resume_from_checkpoint"])
    weights = [torch.load(out / "ckpt" / f"ckpt_{n}.pt", weights_only=True)["model"] for out in (*runs, resumed)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), f"two default runs differ at {key}"
        assert torch.equal(weights[0][key], weights[2][key]), f"the resumed default run differs at {key}"


@pytest.mark.slow
@pytest.mark.parametrize("post_accumulation", [False, True])
def test_ddp_matches_single_process(corpus, tmp_path, post_accumulation):
    """2 ranks × accumulation k equal 1 process × accumulation 2k on the same global batch."""
    settings = exact_split_settings(corpus, tmp_path)
    extra = ("--allreduce_post_accumulation",) if post_accumulation else ()
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert_same_weights(one_process_model(corpus, single, settings), two_rank_model(corpus, ddp, settings, extra))
    # The logged loss is rank 0's micro-batches only, so it is compared for presence, not value.
    assert step_losses(single / "dllogger.json").keys() == step_losses(ddp / "dllogger.json").keys()


def test_phase2_starts_from_phase1_and_restarts_schedule(corpus, tmp_path):
    run_pretraining(base_args(corpus, tmp_path, max_steps=6))
    run_pretraining(base_args(corpus, tmp_path, input_dir=corpus["phase2"], max_steps=4, max_seq_length=128,
                              max_predictions_per_seq=20, train_batch_size=8, learning_rate=1e-3,
                              phase1_end_step=6, **{"json-summary": tmp_path / "p2.json"})
                    + ["--phase2", "--resume_from_checkpoint"])
    ckpt = torch.load(tmp_path / "ckpt" / "ckpt_10.pt", weights_only=True)
    assert ckpt["phase"] == 2 and ckpt["optimizer"]["param_groups"][0]["step"] == 4
    p1 = torch.load(tmp_path / "ckpt" / "ckpt_6.pt", weights_only=True)
    assert p1["optimizer"]["param_groups"][0]["step"] == 6
    lrs = [r["data"]["learning_rate"] for r in read_dllogger(tmp_path / "p2.json")
           if "learning_rate" in r.get("data", {}) and isinstance(r.get("step"), list)]
    assert lrs[0] < 1e-3 and max(lrs) <= 1e-3  # warm-up of the new schedule, new peak
    assert set(p1.keys()) >= {"model", "optimizer", "master params", "files", "epoch", "scaler", "rng", "data_position"}


def test_help_lists_every_original_flag():
    out = subprocess.run([sys.executable, str(ROOT / "run_pretraining.py"), "--help"], env=script_env(),
                         capture_output=True, text=True, check=True).stdout
    spec_flags = ["input_dir", "config_file", "bert_model", "output_dir", "init_checkpoint", "max_seq_length",
                  "max_predictions_per_seq", "train_batch_size", "learning_rate", "num_train_epochs", "max_steps",
                  "warmup_proportion", "local_rank", "seed", "gradient_accumulation_steps", "fp16", "amp", "loss_scale",
                  "log_freq", "checkpoint_activations", "resume_from_checkpoint", "resume_step",
                  "num_steps_per_checkpoint", "skip_checkpoint", "phase2", "allreduce_post_accumulation",
                  "allreduce_post_accumulation_fp16", "phase1_end_step", "init_loss_scale", "do_train", "json-summary",
                  "use_env", "disable_progress_bar", "steps_this_run", "precision", "compile"]
    missing = [f for f in spec_flags if not re.search(rf"--{re.escape(f)}\b", out)]
    assert not missing, missing


def test_bad_inputs_one_line(corpus, tmp_path):
    def fails(args: list[str]) -> str:
        cmd = [sys.executable, str(ROOT / "run_pretraining.py"), *args]
        proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        return lines[0]

    assert "divisible" in fails(["--do_train", *base_args(corpus, tmp_path, gradient_accumulation_steps=3)])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no .hdf5 shards" in fails(["--do_train", *base_args(corpus, tmp_path, input_dir=empty)])
    small = write_config(tmp_path / "short.json", max_position_embeddings=32)
    assert "max_position_embeddings" in fails(["--do_train", *base_args(corpus, tmp_path, config_file=small)])


def test_shell_recipe_runs_both_phases(corpus, tmp_path):
    results = tmp_path / "results"
    args = ["8", "5e-3", "fp32", "0", "0.1", "4", "2", "false", "false", "true", "2", "3", "tiny", "true", "false",
            "4", "1e-3", "0.1", "2", "2", str(corpus["phase1"]), str(corpus["phase2"]), str(ROOT), "None",
            str(corpus["config"])]
    env = {**script_env(), "RESULTS_DIR": str(results), "PYTHON": sys.executable,
           "EXTRA_ARGS": "--disable_progress_bar"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_pretraining.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpts = sorted(p.name for p in (results / "checkpoints").glob("ckpt_*.pt"))
    assert "ckpt_4.pt" in ckpts and "ckpt_6.pt" in ckpts, ckpts
    assert any(r["data"].get("final_loss") for r in read_dllogger(results / "dllogger_phase2.json"))


def test_shell_scripts_lint_clean():
    if not _have("shellcheck"):
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    files = [ROOT / "scripts" / "run_pretraining.sh", ROOT / "scripts" / "configs" / "pretrain_config.sh",
             ROOT / "run.sub"]
    for f in files:
        subprocess.run(["bash", "-n", str(f)], check=True)
    proc = subprocess.run(["shellcheck", "-x", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _have(program: str) -> bool:
    return any(os.access(os.path.join(d, program), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


def _run_sub_dry_run(env_extra: dict[str, str]) -> list[list[str]]:
    """run.sub's srun commands (RUN_SUB_DRY_RUN=1 prints them instead of running them), split into words."""
    import shlex

    env = {**script_env(), "RUN_SUB_DRY_RUN": "1", "MASTER_ADDR": "127.0.0.1", **env_extra}
    proc = subprocess.run(["bash", str(ROOT / "run.sub")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("phase", ["1", "2"])
def test_run_sub_mounts_both_phases_data_into_the_container(tmp_path, phase):
    """Bug 3: the container saw only the code and checkpoint folders, so training found no shards."""
    folders = {name: str(tmp_path / name) for name in ("code", "ckpt", "p1", "p2", "cfg")}
    cmds = _run_sub_dry_run({"CONT": "nvcr.io/example/bert:1", "PHASE": phase, "CODEDIR": folders["code"],
                             "CHECKPOINTDIR": folders["ckpt"], "DATADIR": folders["p1"],
                             "DATADIR_PHASE2": folders["p2"],
                             "BERT_CONFIG": folders["cfg"] + "/bert_config.json", "CONT_MOUNTS": "/scratch:/scratch"})
    train = cmds[-1]
    mounts = next(a.split("=", 1)[1] for a in train if a.startswith("--container-mounts=")).split(",")
    assert mounts == [f"{d}:{d}" for d in folders.values()] + ["/scratch:/scratch"]
    assert "--container-image=nvcr.io/example/bert:1" in train
    assert f"--input_dir={folders['p1' if phase == '1' else 'p2']}" in train


def test_run_sub_without_container_passes_no_mounts(tmp_path):
    cmds = _run_sub_dry_run({"CODEDIR": str(ROOT), "CHECKPOINTDIR": str(tmp_path)})
    assert cmds[0][:1] == ["srun"] and cmds[0][-3:] == ["mkdir", "-p", str(tmp_path)]
    assert not any(a.startswith("--container") for a in cmds[-1])


@pytest.mark.slow
def test_run_sub_on_real_slurm(corpus, tmp_path, slurm_cluster):  # noqa: F811
    """sbatch run.sub for a 2-task tiny pretraining run on a real single-node Slurm (gloo, bind.sh per task).
    Submitted by its path from another folder without CODEDIR: Slurm runs a copy from its spool folder, and
    run.sub finds its code (bind.sh, run_pretraining.py) through the submitted path."""
    ckpt_dir = tmp_path / "checkpoints"
    env = {
        "PHASE": "1", "DATADIR": str(corpus["phase1"]), "CHECKPOINTDIR": str(ckpt_dir),
        "BERT_CONFIG": str(corpus["config"]), "PRECISION": "fp32", "MAX_STEPS": "3", "BATCHSIZE": "8",
        "GRADIENT_STEPS": "2", "LR": "1e-2", "CKPT_STEPS": "2", "PYTHON": sys.executable,
        "EXTRA_PARAMS": "--device=cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
    }
    job = slurm_cluster.submit(ROOT / "run.sub", env=env, sbatch_args=["--nodes=1", "--ntasks=2"], cwd=tmp_path)
    state, code = slurm_cluster.wait(job, timeout=600)
    out = slurm_cluster.output(job) + slurm_cluster.errors(job)
    assert (state, code) == ("COMPLETED", 0), out[-4000:]
    ckpt = torch.load(ckpt_dir / "ckpt_3.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["step"] == 3
    assert len(ckpt["data_position"]) == 2, "both SLURM tasks must have joined one process group"
    assert "0: " in out and "final_loss" in out  # srun -l labels rank 0's output; only rank 0 logs


def test_init_checkpoint_alone_starts_from_its_weights(corpus, tmp_path):
    """--init_checkpoint works without --resume_from_checkpoint (the original ignored it): weights and
    LAMB moments come from the file, the step count and schedule start again."""
    source = tmp_path / "source"
    run_pretraining(base_args(corpus, source, max_steps=40, train_batch_size=32, learning_rate=3e-2))
    started = tmp_path / "started"
    run_pretraining(base_args(corpus, started, max_steps=2, init_checkpoint=source / "ckpt" / "ckpt_40.pt"))
    first_loss = step_losses(started / "dllogger.json")[1]
    fresh_loss = step_losses(source / "dllogger.json")[1]
    assert first_loss < fresh_loss - 1.0, (first_loss, fresh_loss)
    ckpt = torch.load(started / "ckpt" / "ckpt_2.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["step"] == 2


def test_steps_this_run_is_a_global_step_so_chained_jobs_end_where_one_run_would(corpus, tmp_path):
    """As in the original, a job stops once the global step reaches --steps_this_run: the same command line
    submitted again after that does nothing more, and chained jobs end exactly where one run would."""
    n, first_stop = 6, 3
    straight = tmp_path / "straight"
    run_pretraining(base_args(corpus, straight, max_steps=n))

    chained = tmp_path / "chained"

    def job(stop: int, summary: str) -> dict[int, float]:
        run_pretraining(base_args(corpus, chained, max_steps=n, steps_this_run=stop,
                                  **{"json-summary": chained / summary}) + ["--resume_from_checkpoint"])
        return step_losses(chained / summary)

    first = job(first_stop, "job1.json")
    assert sorted(first) == list(range(1, first_stop + 1))
    assert job(first_stop, "job2.json") == {}, "an identical second job must not train past --steps_this_run"
    assert not (chained / "ckpt" / f"ckpt_{2 * first_stop}.pt").exists()
    last = job(n, "job3.json")
    assert {**first, **last} == step_losses(straight / "dllogger.json")  # bitwise, LR horizon unchanged
    a = torch.load(straight / "ckpt" / f"ckpt_{n}.pt", weights_only=True)["model"]
    b = torch.load(chained / "ckpt" / f"ckpt_{n}.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sequences_per_second_after_resume_counts_only_this_jobs_steps(corpus, tmp_path):
    """fp16 with a far too high initial loss scale: the first updates overflow and are skipped. The resumed
    job's sequences/s covers the steps it ran itself, not the skipped ones from before the resume."""
    batch = 16

    def job(stop: int, summary: str) -> dict:
        run_pretraining(base_args(corpus, tmp_path, max_steps=4, steps_this_run=stop, precision="fp16",
                                  init_loss_scale=2**24, train_batch_size=batch, **{"json-summary": tmp_path / summary})
                        + ["--resume_from_checkpoint"])
        return [r["data"] for r in read_dllogger(tmp_path / summary) if r.get("step") == []][0]

    job(2, "job1.json")
    skipped_before = torch.load(tmp_path / "ckpt" / "ckpt_2.pt", weights_only=True)["run_state"]["skipped_steps"]
    assert skipped_before > 0, "the test needs overflow-skipped steps before the resume"
    summary = job(4, "job2.json")
    state = torch.load(tmp_path / "ckpt" / "ckpt_4.pt", weights_only=True)["run_state"]
    attempted_here = (state["global_step"] - 2) + (state["skipped_steps"] - skipped_before)
    sequences = summary["training_sequences_per_second"] * summary["raw_train_time"]
    assert sequences == pytest.approx(attempted_here * batch, rel=1e-6)


@pytest.mark.slow
def test_run_sub_requeues_a_job_stopped_by_a_signal(corpus, tmp_path, slurm_cluster):  # noqa: F811
    """USR1 to the job's tasks (what --signal=USR1@300 sends before the time limit): the tasks save and exit 75,
    run.sub requeues the job, and the requeued job resumes from the checkpoint and finishes."""
    ckpt_dir = tmp_path / "checkpoints"
    steps = 60
    env = {
        "PHASE": "1", "DATADIR": str(corpus["phase1"]), "CHECKPOINTDIR": str(ckpt_dir), "CODEDIR": str(ROOT),
        "BERT_CONFIG": str(corpus["config"]), "PRECISION": "fp32", "MAX_STEPS": str(steps), "BATCHSIZE": "8",
        "GRADIENT_STEPS": "2", "LR": "1e-2", "CKPT_STEPS": "2", "PYTHON": sys.executable,
        "EXTRA_PARAMS": "--device=cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
    }
    job = slurm_cluster.submit(ROOT / "run.sub", env=env, cwd=tmp_path,
                               sbatch_args=["--nodes=1", "--ntasks=2", "--open-mode=append"])
    deadline = time.time() + 300
    while not list(ckpt_dir.glob("ckpt_*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    slurm_cluster.client(["scancel", "--signal=USR1", str(job)])
    state, code = slurm_cluster.wait(job, timeout=900)
    out = slurm_cluster.output(job) + slurm_cluster.errors(job)
    assert (state, code) == ("COMPLETED", 0), out[-4000:]
    assert "requeueing job" in out and "resumed from" in out, out[-4000:]
    assert slurm_cluster.job_info(job).get("Restarts") == "1"
    ckpt = torch.load(ckpt_dir / f"ckpt_{steps}.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["step"] == steps
