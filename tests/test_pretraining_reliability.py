"""Pretraining under failure (issue 14): damaged checkpoints and shards, hangs, signals, kills, a full disk.

Every bad input ends in one `error:` line, exit 2, no traceback and no checkpoint written; a run
stopped by a signal exits 75; a kill during a checkpoint write loses nothing. The guarantees are
listed in docs/reliability.md with these tests' names.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
from conftest import ROOT, script_env
from pretrain_helpers import SHARD_DATASETS, copy_rows
from test_pretraining import base_args, corpus, step_losses  # noqa: F401  (corpus is a pytest fixture)

from modeling import BertConfig, BertForPreTraining

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXIT_STOPPED = 75  # run_pretraining.EXIT_STOPPED


def pretraining_command(args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "run_pretraining.py"), "--do_train", "--disable_progress_bar", *args]


def launch(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(pretraining_command(args), env=script_env(), capture_output=True, text=True, timeout=600)


def assert_one_error_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert expected in lines[0], lines[0]


def checkpoint_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("ckpt_*.pt")) if folder.is_dir() else []


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".tmp-*"))


# --------------------------------------------------------------------------------------------
# Bad settings and bad shards: one line naming what is wrong, exit 2, nothing written
# --------------------------------------------------------------------------------------------


def shard_with(folder: Path, source: Path, rows: int, key: str | None = None, row: int = 0, value: int = 0) -> Path:
    """`folder/x_training_0.hdf5`: the first `rows` rows of `source`, with `key[row]` set to `value` (all columns)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "x_training_0.hdf5"
    with h5py.File(source, "r") as fin, h5py.File(path, "w") as fout:
        for name in SHARD_DATASETS:
            data = fin[name][:rows]
            if name == key:
                data[row] = value
            fout.create_dataset(name, data=data, compression="gzip")
    return path


def damage_first_chunk(path: Path, dataset: str) -> None:
    """Overwrite the middle of a dataset's first compressed chunk (as a bad disk block would)."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(b"\xff" * min(64, info.size // 2))


def truncated_copy(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    path = folder / "x_training_0.hdf5"
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def source_shard(corpus) -> Path:  # noqa: F811
    return next(corpus["phase1"].glob("*training_0.hdf5"))


# Each case: (name, how to build the input, extra flags, expected part of the one error line).
BAD_INPUTS = [
    ("nan_learning_rate", None, {"learning_rate": "nan"}, "--learning_rate must be a finite number > 0, got nan"),
    ("infinite_learning_rate", None, {"learning_rate": "inf"}, "--learning_rate must be a finite number > 0, got inf"),
    ("zero_batch", None, {"train_batch_size": 0}, "--train_batch_size must be at least 1, got 0"),
    ("warmup_above_one", None, {"warmup_proportion": 1.5}, "--warmup_proportion must be a finite number >= 0 and <= 1"),
    ("nan_max_steps", None, {"max_steps": "nan"}, "--max_steps must be a finite number >= 1, got nan"),
    ("shards_smaller_than_micro_batch", lambda d, src: shard_with(d, src, 3), {"train_batch_size": 8},
     "the largest of its 1 shards holds 3 rows, fewer than one micro-batch of 8"),
    ("empty_shards", lambda d, src: shard_with(d, src, 0), {}, "holds 0 rows, fewer than one micro-batch of 16"),
    ("truncated_first_shard", lambda d, src: truncated_copy(src, d), {},
     "x_training_0.hdf5: not a readable HDF5 file, truncated or damaged"),
    ("damaged_chunk", lambda d, src: damage_first_chunk(shard_with(d, src, 64), "input_ids"), {},
     "x_training_0.hdf5: dataset 'input_ids' cannot be read, the file is damaged"),
    ("token_id_above_vocab", lambda d, src: shard_with(d, src, 64, "input_ids", 5, 40000), {},
     "x_training_0.hdf5: dataset 'input_ids' row 5 holds 40000, outside [0, 30522) (the config's vocab_size)"),
    ("masked_id_above_vocab", lambda d, src: shard_with(d, src, 64, "masked_lm_ids", 7, 30600), {},
     "dataset 'masked_lm_ids' row 7 holds 30600, outside [0, 30522)"),
    ("segment_id_above_type_vocab", lambda d, src: shard_with(d, src, 64, "segment_ids", 9, 2), {},
     "dataset 'segment_ids' row 9 holds 2, outside [0, 2) (the config's type_vocab_size)"),
    ("negative_masked_position", lambda d, src: shard_with(d, src, 64, "masked_lm_positions", 11, -3), {},
     "dataset 'masked_lm_positions' row 11 holds -3, outside [0, 64) (positions in a sequence of 64 tokens)"),
    ("masked_position_past_the_end", lambda d, src: shard_with(d, src, 64, "masked_lm_positions", 12, 64), {},
     "dataset 'masked_lm_positions' row 12 holds 64, outside [0, 64)"),
    ("next_sentence_label_2", lambda d, src: shard_with(d, src, 64, "next_sentence_labels", 13, 2), {},
     "dataset 'next_sentence_labels' row 13 holds 2, outside [0, 2)"),
    ("negative_segment_id", lambda d, src: shard_with(d, src, 64, "segment_ids", 14, -1), {},
     "dataset 'segment_ids' row 14 holds -1"),
]


@pytest.mark.parametrize("name, build, flags, expected", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_settings_and_damaged_shards_are_one_line(corpus, tmp_path, name, build, flags, expected):  # noqa: F811
    overrides = {"max_steps": 3, "num_steps_per_checkpoint": 1, **flags}
    if build is not None:
        build(tmp_path / "data", source_shard(corpus))
        overrides["input_dir"] = tmp_path / "data"
    proc = launch(base_args(corpus, tmp_path, **overrides))
    assert_one_error_line(proc, expected)
    assert checkpoint_names(tmp_path / "ckpt") == [] and temp_files(tmp_path / "ckpt") == []


def test_folder_mixing_shard_lengths_names_both_shards(corpus, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    first = copy_rows(source_shard(corpus), data / "a_training_0.hdf5", 0, 64)
    second = shutil.copyfile(next(corpus["phase2"].glob("*training_0.hdf5")), data / "b_training_1.hdf5")
    proc = launch(base_args(corpus, tmp_path, input_dir=data, max_seq_length=128, max_predictions_per_seq=20))
    assert_one_error_line(proc, f"shards of different lengths in one folder: {first} has sequence length 64 and 10 "
                                f"masked positions, {second} has 128 and 20")


def test_stream_refuses_an_epoch_without_a_batch(corpus, tmp_path):  # noqa: F811
    """The stream itself cannot spin: shards all smaller than a micro-batch end in an error after one epoch."""
    from data.pretraining_dataset import ShardStream
    from input_checks import InputError

    small = [str(copy_rows(source_shard(corpus), tmp_path / f"s_training_{i}.hdf5", 0, 5)) for i in range(3)]
    stream = ShardStream(small, 0, 1, micro_batch=8, max_pred=10, seed=1)
    try:
        with pytest.raises(InputError, match=f"{tmp_path}: rank 0 read a whole epoch of shards without one "
                                             "micro-batch of 8 rows"):
            next(iter(stream))
    finally:
        stream.close()


# --------------------------------------------------------------------------------------------
# Non-finite training: stops with an error, never saves NaN weights, ends on SIGTERM
# --------------------------------------------------------------------------------------------


def nan_init_checkpoint(config_file: Path, path: Path) -> Path:
    """Weights that load (finite; NaN weights are refused at load) but make every loss and gradient non-finite:
    query and key biases of 1e38 make every attention score inf (and the softmax NaN)."""
    model = BertForPreTraining(BertConfig.from_json_file(config_file))
    state = model.state_dict()
    for name in ("query", "key"):
        state[f"bert.encoder.layer.0.attention.self.{name}.bias"].fill_(1e38)
    torch.save({"model": state}, path)
    return path


@pytest.mark.parametrize("precision, limit", [("fp32", 10), ("fp16", 100)])
def test_non_finite_loss_stops_with_an_error_and_no_checkpoint(corpus, tmp_path, precision, limit):  # noqa: F811
    init = nan_init_checkpoint(corpus["config"], tmp_path / "nan.pt")
    proc = launch(base_args(corpus, tmp_path, max_steps=500, num_steps_per_checkpoint=1, precision=precision,
                            train_batch_size=4, init_checkpoint=init))
    assert_one_error_line(proc, f"training diverged: {limit} optimizer steps in a row had non-finite gradients "
                                f"({precision}, last loss nan) at step 0; stopped without a checkpoint")
    assert checkpoint_names(tmp_path / "ckpt") == []


def wait_for_output(proc: subprocess.Popen, marker: str, lines: list[str], timeout: float = 300) -> None:
    """Read the process's merged output into `lines` until a line contains `marker`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("process ended before printing " + marker + ":\n" + "".join(lines[-40:]))
        lines.append(line)
        if marker in line:
            return
    raise AssertionError(f"no {marker!r} within {timeout} s")


def test_sigterm_while_the_loss_is_non_finite_ends_without_saving_nan_weights(corpus, tmp_path):  # noqa: F811
    """The hang of issue 14: fp16 with NaN weights skipped steps forever and saved NaN weights on SIGTERM."""
    init = nan_init_checkpoint(corpus["config"], tmp_path / "nan.pt")
    cmd = pretraining_command(base_args(corpus, tmp_path, max_steps=500, num_steps_per_checkpoint=1,
                                        precision="fp16", train_batch_size=4, init_checkpoint=init))
    proc = subprocess.Popen(cmd, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    wait_for_output(proc, "skipped_steps", lines)  # inside the loop, skipping
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    out = "".join(lines) + out
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    # The signal's save refuses the state with a NaN loss; or the 100th skipped step came first.
    assert "the loss is not finite" in errors[0] or "training diverged" in errors[0], errors[0]
    assert "no checkpoint written" in errors[0] or "without a checkpoint" in errors[0], errors[0]
    assert checkpoint_names(tmp_path / "ckpt") == []


# --------------------------------------------------------------------------------------------
# Stops, resumes, phases
# --------------------------------------------------------------------------------------------


def test_resuming_a_finished_run_has_nothing_to_do(corpus, tmp_path):  # noqa: F811
    first = launch(base_args(corpus, tmp_path, max_steps=3))
    assert first.returncode == 0, first.stderr[-3000:]
    before = (tmp_path / "ckpt" / "ckpt_3.pt").stat().st_mtime_ns
    again = launch(base_args(corpus, tmp_path, max_steps=3, **{"json-summary": tmp_path / "again.json"})
                   + ["--resume_from_checkpoint"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to do" in again.stdout and "already at step 3" in again.stdout
    assert "NaN" not in again.stdout + again.stderr and "warning" not in again.stderr
    assert checkpoint_names(tmp_path / "ckpt") == ["ckpt_3.pt"]
    assert (tmp_path / "ckpt" / "ckpt_3.pt").stat().st_mtime_ns == before


def test_phase2_refuses_an_unfinished_phase1(corpus, tmp_path):  # noqa: F811
    stopped = launch(base_args(corpus, tmp_path, max_steps=6, steps_this_run=2))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    proc = launch(base_args(corpus, tmp_path, input_dir=corpus["phase2"], max_steps=2, max_seq_length=128,
                            max_predictions_per_seq=20, train_batch_size=8, phase1_end_step=6)
                  + ["--phase2", "--resume_from_checkpoint"])
    assert_one_error_line(proc, "ckpt_2.pt: phase 1 stopped at step 2 of 6; finish phase 1 first")
    assert checkpoint_names(tmp_path / "ckpt") == ["ckpt_2.pt"]


def child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def test_shell_recipe_stops_before_phase2_when_phase1_is_stopped(corpus, tmp_path):  # noqa: F811
    """SIGTERM to phase 1 under scripts/run_pretraining.sh: exit 75, phase 2 never starts."""
    results = tmp_path / "results"
    args = ["8", "5e-3", "fp32", "0", "0.1", "400", "2", "false", "false", "true", "2", "3", "tiny", "true", "false",
            "4", "1e-3", "0.1", "2", "2", str(corpus["phase1"]), str(corpus["phase2"]), str(ROOT), "None",
            str(corpus["config"])]
    env = {**script_env(), "RESULTS_DIR": str(results), "PYTHON": sys.executable,
           "EXTRA_ARGS": "--disable_progress_bar"}
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "run_pretraining.sh"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    wait_for_output(proc, "checkpoint_step", lines)  # phase 1 has saved at least once
    (python_pid,) = child_pids(proc.pid)
    os.kill(python_pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    out = "".join(lines) + out
    assert proc.returncode == EXIT_STOPPED, out[-3000:]
    assert "phase 1 stopped by a signal before its last step" in out
    assert "phase 2:" not in out and not (results / "dllogger_phase2.json").exists()
    steps = [int(name[5:-3]) for name in checkpoint_names(results / "checkpoints")]
    assert steps and max(steps) < 400


# --------------------------------------------------------------------------------------------
# Disk: pruning across jobs and phases, temp files of killed saves, a full disk
# --------------------------------------------------------------------------------------------


def test_keep_checkpoints_prunes_the_whole_folder_across_jobs_and_phases(corpus, tmp_path):  # noqa: F811
    ckpt = tmp_path / "ckpt"
    for stop in (2, 4, 6, 8):  # four jobs chained on one folder, a checkpoint every step
        if stop == 8:
            (ckpt / ".tmp-ckpt_7.pt.a1b2c3").write_bytes(b"left by a save killed half-way")
        proc = launch(base_args(corpus, tmp_path, max_steps=8, steps_this_run=stop, num_steps_per_checkpoint=1,
                                keep_checkpoints=3) + ["--resume_from_checkpoint"])
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoint_names(ckpt) == ["ckpt_6.pt", "ckpt_7.pt", "ckpt_8.pt"]
    assert temp_files(ckpt) == []
    # Phase 2 (names offset by phase 1's 8 steps): phase 1's last checkpoint stays until 3 newer ones exist.
    phase2 = base_args(corpus, tmp_path, input_dir=corpus["phase2"], max_steps=3, max_seq_length=128,
                       max_predictions_per_seq=20, train_batch_size=8, phase1_end_step=8, num_steps_per_checkpoint=1,
                       keep_checkpoints=3) + ["--phase2", "--resume_from_checkpoint"]
    proc = launch(phase2[:] + ["--steps_this_run=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoint_names(ckpt) == ["ckpt_10.pt", "ckpt_8.pt", "ckpt_9.pt"]
    proc = launch(phase2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoint_names(ckpt) == ["ckpt_10.pt", "ckpt_11.pt", "ckpt_9.pt"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs of 40 MiB (one tiny checkpoint is about 25 MiB); skipped where mounting is not allowed."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_is_one_line_naming_the_file_and_resume_works(corpus, tmp_path, small_tmpfs):  # noqa: F811
    out = small_tmpfs / "ckpt"
    args = base_args(corpus, tmp_path, output_dir=out, max_steps=6, num_steps_per_checkpoint=2)
    proc = launch(args)
    assert_one_error_line(proc, f"cannot write checkpoint {out}/ckpt_4.pt: No space left on device "
                                f"(newest complete checkpoint: {out}/ckpt_2.pt)")
    assert checkpoint_names(out) == ["ckpt_2.pt"] and temp_files(out) == []
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_tmpfs)], check=True)
    resumed = launch(args + ["--resume_from_checkpoint"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and checkpoint_names(out) == ["ckpt_2.pt", "ckpt_4.pt", "ckpt_6.pt"]


# --------------------------------------------------------------------------------------------
# Fault test: SIGKILL during a checkpoint write
# --------------------------------------------------------------------------------------------


def kill_during_a_save(args: list[str], ckpt: Path) -> bool:
    """Start a job and SIGKILL it as soon as a checkpoint temp file exists; True if it died inside a save."""
    proc = subprocess.Popen(pretraining_command(args), env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if ckpt.is_dir() and any(name.startswith(".tmp-ckpt_") for name in os.listdir(ckpt)):
                proc.kill()
                break
            time.sleep(0.002)
    finally:
        proc.wait(timeout=60)
    return proc.returncode == -signal.SIGKILL and bool(temp_files(ckpt))


def test_sigkill_during_a_checkpoint_write_resumes_exactly_and_leaves_no_temp_file(corpus, tmp_path):  # noqa: F811
    n = 14
    straight = tmp_path / "straight"
    proc = launch(base_args(corpus, straight, max_steps=n, num_steps_per_checkpoint=1, train_batch_size=8))
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = step_losses(straight / "dllogger.json")

    killed = tmp_path / "killed"
    ckpt = killed / "ckpt"
    losses: dict[int, float] = {}
    caught = False
    for job in range(6):  # kill-and-resume cycles until one kill lands inside a save
        summary = killed / f"job{job}.json"
        args = base_args(corpus, killed, max_steps=n, num_steps_per_checkpoint=1, train_batch_size=8,
                         **{"json-summary": summary}) + ["--resume_from_checkpoint"]
        caught = kill_during_a_save(args, ckpt)
        if summary.exists():
            for step, loss in step_losses(summary).items():
                assert losses.setdefault(step, loss) == loss, step  # a step run twice gives the same loss
        if caught:
            break
    assert caught, "no kill landed inside a checkpoint write"
    final = launch(base_args(corpus, killed, max_steps=n, num_steps_per_checkpoint=1, train_batch_size=8,
                             **{"json-summary": killed / "final.json"}) + ["--resume_from_checkpoint"])
    assert final.returncode == 0, final.stderr[-3000:]
    for step, loss in step_losses(killed / "final.json").items():
        assert losses.setdefault(step, loss) == loss, step
    assert losses == expected  # bitwise: every step's loss as in the uninterrupted run
    assert temp_files(ckpt) == []
    a = torch.load(straight / "ckpt" / f"ckpt_{n}.pt", weights_only=True)["model"]
    b = torch.load(ckpt / f"ckpt_{n}.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)



@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (a device every write to fails with ENOSPC)")
def test_a_log_line_that_cannot_be_written_warns_once_and_training_logging_goes_on(capsys):
    import run_log

    logger = run_log.Logger("/dev/full")
    logger.log((0, 1), {"loss": 1.0})
    logger.log((0, 2), {"loss": 0.5})
    logger.close()
    out, err = capsys.readouterr()
    assert err.splitlines() == ["warning: /dev/full: cannot write the log (No space left on device); "
                                "from now on it goes to stdout only"]
    assert "Iteration: 1 loss : 1\n" in out and "Iteration: 2 loss : 0.5\n" in out
