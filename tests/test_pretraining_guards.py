"""Pretraining, reliability round 2 (issue 22, items 8, 9, 11, 13, 14): a NaN loss stops the run, phase 2 needs
something to start from, resumes say what they cannot restore exactly, every flag, shard header and
checkpoint entry is checked before training.

Each case is a real `run_pretraining.py` process: one `error:` line naming the flag, file or entry, exit 2,
no checkpoint written (or the previous ones intact). docs/reliability.md lists them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from pretrain_helpers import SHARD_DATASETS, copy_rows
from test_pretraining import base_args, corpus  # noqa: F401  (corpus is a pytest fixture)
from test_pretraining_reliability import assert_one_error_line, checkpoint_names, launch, source_shard, temp_files

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def copy_shard(source: Path, target: Path, rows: int = 64, change=None, attrs: dict | None = None) -> Path:
    """The first `rows` rows of `source` in `target`; `change(name, data)` may rewrite each dataset."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(source, "r") as fin, h5py.File(target, "w") as fout:
        fout.attrs.update(attrs or {})
        for name in SHARD_DATASETS:
            data = fin[name][:rows]
            fout.create_dataset(name, data=change(name, data) if change else data, compression="gzip")
    return target


# --------------------------------------------------------------------------------------------
# 8. A loss that is NaN from start to end stops the run without a checkpoint
# --------------------------------------------------------------------------------------------


def without_masked_labels(name: str, data: np.ndarray) -> np.ndarray:
    """No masked-LM label in any row (position 0 ends a row's list): the MLM loss is 0/0 = NaN."""
    return np.zeros_like(data) if name in ("masked_lm_positions", "masked_lm_ids") else data


@pytest.mark.parametrize("checkpoint_every", [1, 1000])
def test_a_loss_that_is_nan_throughout_stops_without_a_checkpoint(corpus, tmp_path, checkpoint_every):  # noqa: F811
    data = tmp_path / "data"
    copy_shard(source_shard(corpus), data / "x_training_0.hdf5", change=without_masked_labels)
    proc = launch(base_args(corpus, tmp_path, input_dir=data, max_steps=30, train_batch_size=8,
                            num_steps_per_checkpoint=checkpoint_every))
    # Saving every step, the first save refuses the NaN state; otherwise the guard stops the run at 10 steps.
    expected = ("the loss is not finite at step 1 (fp32); no checkpoint written" if checkpoint_every == 1 else
                "training diverged: 10 optimizer steps in a row had a non-finite loss (fp32, last loss nan)")
    assert_one_error_line(proc, expected)
    assert checkpoint_names(tmp_path / "ckpt") == [] and temp_files(tmp_path / "ckpt") == []


# --------------------------------------------------------------------------------------------
# 9. Phase 2 with nothing to start from
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resume", [True, False])
def test_phase2_with_nothing_to_start_from_is_refused(corpus, tmp_path, resume):  # noqa: F811
    flags = ["--phase2"] + (["--resume_from_checkpoint"] if resume else [])
    proc = launch(base_args(corpus, tmp_path, input_dir=corpus["phase2"], max_steps=2, max_seq_length=128,
                            max_predictions_per_seq=20, train_batch_size=8, phase1_end_step=6) + flags)
    assert_one_error_line(proc, f"--phase2: nothing to start from: no checkpoint in {tmp_path / 'ckpt'} ")
    assert "--init_checkpoint" in proc.stderr
    assert checkpoint_names(tmp_path / "ckpt") == []


# --------------------------------------------------------------------------------------------
# 13, 14. Flags, shard headers and shard settings checked before training
# --------------------------------------------------------------------------------------------


def header_claims_rows(folder: Path, source: Path, rows: int) -> Path:
    """A small shard whose 'input_ids' header claims `rows` rows (chunks never written: the data is not there)."""
    path = copy_shard(source, folder / "x_training_0.hdf5")
    with h5py.File(path, "r+") as f:
        width = f["input_ids"].shape[1]
        del f["input_ids"]
        f.create_dataset("input_ids", shape=(rows, width), dtype=np.int32, chunks=(1024, width), compression="gzip")
    return path


def replace_dataset(folder: Path, source: Path, key: str, make) -> Path:
    path = copy_shard(source, folder / "x_training_0.hdf5")
    with h5py.File(path, "r+") as f:
        del f[key]
        make(f, key)
    return path


def settings_pair(folder: Path, source: Path, key: str, first, second) -> Path:
    base = {"vocab_sha256": "ab12", "do_lower_case": True, "do_whole_word_mask": False, "masked_lm_prob": 0.15}
    copy_shard(source, folder / "a_training_0.hdf5", attrs={**base, key: first})
    copy_shard(source, folder / "b_training_1.hdf5", attrs={**base, key: second})
    return folder


def symlink_loop(folder: Path, source: Path) -> Path:
    copy_shard(source, folder / "a_training_0.hdf5")
    os.symlink(folder / "z_training_loop2", folder / "z_training_loop1")
    os.symlink(folder / "z_training_loop1", folder / "z_training_loop2")
    return folder


# Each case: (name, how to build the shard folder or None, extra flags, expected part of the one error line).
PRETRAINING_CASES = [
    ("device_tpu", None, {"device": "tpu:7"}, "--device tpu:7: expected auto, cpu, cuda or cuda:N"),
    ("device_gpu", None, {"device": "gpu"}, "--device gpu: expected auto, cpu, cuda or cuda:N"),
    ("negative_phase1_end_step", None, {"phase1_end_step": -100},
     "--phase1_end_step must be a finite number >= 0, got -100"),
    ("negative_keep_checkpoints", None, {"keep_checkpoints": -2},
     "--keep_checkpoints must be a finite number >= 0, got -2"),
    ("seed_1e23", None, {"seed": 10**23}, f"--seed must be a whole number of at most 63 bits, got {10**23}"),
    ("nan_log_freq", None, {"log_freq": "nan"}, "--log_freq must be a finite number > 0, got nan"),
    ("zero_log_freq", None, {"log_freq": 0}, "--log_freq must be a finite number > 0, got 0"),
    ("header_claims_2e9_rows", lambda d, src: header_claims_rows(d, src, 2_000_000_000), {},
     "x_training_0.hdf5: dataset 'input_ids' claims 2000000000 rows (476.8 GiB) but stores 0 bytes"),
    ("float_dataset", lambda d, src: replace_dataset(d, src, "input_ids", lambda f, k: f.create_dataset(
        k, data=np.zeros((64, 64), dtype=np.float32))), {},
     "x_training_0.hdf5: dataset 'input_ids' has shape (64, 64) and dtype float32; expected 2-D integers"),
    ("zero_d_dataset", lambda d, src: replace_dataset(d, src, "segment_ids", lambda f, k: f.create_dataset(
        k, data=np.int8(0))), {}, "x_training_0.hdf5: dataset 'segment_ids' has shape () and dtype int8"),
    ("group_instead_of_dataset",
     lambda d, src: replace_dataset(d, src, "masked_lm_ids", lambda f, k: f.create_group(k)),
     {}, "x_training_0.hdf5: not a pretraining shard: 'masked_lm_ids' is not a dataset"),
    ("row_counts_differ", lambda d, src: replace_dataset(d, src, "next_sentence_labels", lambda f, k: f.create_dataset(
        k, data=np.zeros(63, dtype=np.int8))), {}, "x_training_0.hdf5: dataset 'input_ids' has 64 rows, "
     "'next_sentence_labels' has 63"),
    ("symlink_loop", symlink_loop, {}, "z_training_loop1: cannot be read (Too many levels of symbolic links)"),
    ("mixed_vocab", lambda d, src: settings_pair(d, src, "vocab_sha256", "ab12", "cd34"), {},
     "shards made with different settings in one folder: {d}/a_training_0.hdf5 has vocab_sha256='ab12', "
     "{d}/b_training_1.hdf5 has vocab_sha256='cd34'"),
    ("mixed_case", lambda d, src: settings_pair(d, src, "do_lower_case", True, False), {},
     "has do_lower_case=True, {d}/b_training_1.hdf5 has do_lower_case=False"),
    ("mixed_whole_word", lambda d, src: settings_pair(d, src, "do_whole_word_mask", False, True), {},
     "has do_whole_word_mask=False, {d}/b_training_1.hdf5 has do_whole_word_mask=True"),
    ("mixed_masking_probability", lambda d, src: settings_pair(d, src, "masked_lm_prob", 0.15, 0.2), {},
     "has masked_lm_prob=0.15, {d}/b_training_1.hdf5 has masked_lm_prob=0.2"),
]


@pytest.mark.parametrize("name, build, flags, expected", PRETRAINING_CASES, ids=[c[0] for c in PRETRAINING_CASES])
def test_flags_and_shard_headers_are_checked_before_training(
        corpus, tmp_path, name, build, flags, expected):  # noqa: F811
    overrides = {"max_steps": 3, "num_steps_per_checkpoint": 1, **flags}
    data = tmp_path / "data"
    if build is not None:
        data.mkdir()
        build(data, source_shard(corpus))
        overrides["input_dir"] = data
    proc = launch(base_args(corpus, tmp_path, **overrides))
    assert_one_error_line(proc, expected.format(d=data))
    assert checkpoint_names(tmp_path / "ckpt") == [] and temp_files(tmp_path / "ckpt") == []


OUTPUT_PATH_CASES = [  # (name, flags given the test's folder t, expected with {t})
    ("output_dir_is_a_file", lambda t: {"output_dir": t / "a_file"}, "--output_dir {t}/a_file: not a folder"),
    ("output_dir_under_a_file", lambda t: {"output_dir": t / "a_file" / "ckpt"},
     "--output_dir {t}/a_file/ckpt: {t}/a_file is not a folder"),
    ("output_dir_unwritable", lambda t: {"output_dir": "/proc/bert_ckpt"},
     "--output_dir /proc/bert_ckpt: cannot write in /proc"),
    ("json_summary_is_a_folder", lambda t: {"json-summary": t},
     "--json-summary {t}: is a folder, expected a file name"),
]


@pytest.mark.parametrize("name, flags, expected", OUTPUT_PATH_CASES, ids=[c[0] for c in OUTPUT_PATH_CASES])
def test_output_paths_are_checked_before_training(corpus, tmp_path, name, flags, expected):  # noqa: F811
    (tmp_path / "a_file").write_text("not a folder")
    proc = launch(base_args(corpus, tmp_path, max_steps=2, **flags(tmp_path)))
    assert_one_error_line(proc, expected.format(t=tmp_path))
    assert (tmp_path / "a_file").read_text() == "not a folder" and checkpoint_names(tmp_path / "ckpt") == []


def test_shards_recording_the_same_settings_train(corpus, tmp_path):  # noqa: F811
    """The settings check compares, it does not refuse settings as such (nor shards that record none)."""
    data = settings_pair(tmp_path / "data", source_shard(corpus), "masked_lm_prob", 0.15, 0.15)
    copy_rows(source_shard(corpus), data / "c_training_2.hdf5", 0, 64)  # the original's: no attributes
    proc = launch(base_args(corpus, tmp_path, input_dir=data, max_steps=2, train_batch_size=8))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert checkpoint_names(tmp_path / "ckpt") == ["ckpt_2.pt"]


# --------------------------------------------------------------------------------------------
# 13, 14. Malformed checkpoint entries are found at resume, the checkpoint stays as it was
# --------------------------------------------------------------------------------------------


def rewrite_entry(ckpt: dict, entry: str, value) -> None:
    keys = entry.split(".")
    target = ckpt
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


CHECKPOINT_CASES = [
    ("negative_global_step", "run_state.global_step", -50, "entry 'run_state' must map"),
    ("unknown_run_state_field", "run_state.loss", 3, "entry 'run_state' must map"),
    ("float_samples_seen", "run_state.samples_seen", 1.5, "entry 'run_state' must map"),
    ("rng_not_a_tensor", "rng.0", {"cpu": "seed"}, "entry 'rng' must be a list of {'cpu': byte tensor, ...}"),
    ("rng_wrong_size", "rng.0", {"cpu": torch.zeros(3, dtype=torch.uint8)}, "entry 'rng' cannot be restored"),
    ("scheduler_not_a_dict", "scheduler", [1, 2], "entry 'scheduler' must be a dict, got list"),
    ("negative_data_offset", "data_position.0.offset", -4, "entry 'data_position' must be a list of"),
    ("unknown_data_field", "data_position.0.row", 4, "entry 'data_position' has unknown fields ['row']"),
    ("negative_epoch", "epoch", -1, "entry 'epoch' must be a whole number >= 0, got -1"),
]


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory) -> Path:  # noqa: F811
    """A two-step run's folder, copied by each case."""
    folder = tmp_path_factory.mktemp("finished")
    proc = launch(base_args(corpus, folder, max_steps=4, steps_this_run=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "ckpt"


@pytest.mark.parametrize("name, entry, value, expected", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_malformed_checkpoint_entries_are_one_line_at_resume(
        corpus, tmp_path, finished_run, name, entry, value, expected):  # noqa: F811
    folder = tmp_path / "ckpt"
    folder.mkdir()
    ckpt = torch.load(finished_run / "ckpt_2.pt", weights_only=True)
    rewrite_entry(ckpt, entry, value)
    torch.save(ckpt, folder / "ckpt_2.pt")
    before = (folder / "ckpt_2.pt").read_bytes()
    proc = launch(base_args(corpus, tmp_path, max_steps=4) + ["--resume_from_checkpoint"])
    assert_one_error_line(proc, f"{folder}")
    assert expected in proc.stderr, proc.stderr
    assert checkpoint_names(folder) == ["ckpt_2.pt"] and (folder / "ckpt_2.pt").read_bytes() == before


# --------------------------------------------------------------------------------------------
# 11. What a resume cannot restore exactly is said, or refused
# --------------------------------------------------------------------------------------------


def test_resuming_on_another_shard_list_warns_which_shards_changed(corpus, tmp_path, finished_run):  # noqa: F811
    shutil.copytree(finished_run, tmp_path / "ckpt")
    moved = tmp_path / "moved"  # the same shards in another folder: the order is the same, no warning
    shutil.copytree(corpus["phase1"], moved)
    proc = launch(base_args(corpus, tmp_path, input_dir=moved, max_steps=4, steps_this_run=3)
                  + ["--resume_from_checkpoint"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shards differ" not in proc.stderr
    copy_rows(source_shard(corpus), moved / "wiki_training_2.hdf5", 0, 64)
    proc = launch(base_args(corpus, tmp_path, input_dir=moved, max_steps=4) + ["--resume_from_checkpoint"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("warning: the shards differ from the checkpoint's (1 added, 0 removed: +wiki_training_2.hdf5); "
            "the resume is not exact") in proc.stderr
    assert checkpoint_names(tmp_path / "ckpt") == ["ckpt_2.pt", "ckpt_3.pt", "ckpt_4.pt"]


def test_a_checkpoint_without_optimizer_state_is_refused_unless_allowed(corpus, tmp_path, finished_run):  # noqa: F811
    folder = tmp_path / "ckpt"
    folder.mkdir()
    ckpt = torch.load(finished_run / "ckpt_2.pt", weights_only=True)
    del ckpt["optimizer"]
    torch.save(ckpt, folder / "ckpt_2.pt")
    before = (folder / "ckpt_2.pt").read_bytes()
    args = base_args(corpus, tmp_path, max_steps=4, steps_this_run=3) + ["--resume_from_checkpoint"]
    proc = launch(args)
    assert_one_error_line(proc, f"{folder / 'ckpt_2.pt'}: holds no optimizer state; resuming would restart LAMB's "
                                "moments from zero (pass --allow_missing_optimizer_state to accept that)")
    assert checkpoint_names(folder) == ["ckpt_2.pt"] and (folder / "ckpt_2.pt").read_bytes() == before
    proc = launch(args + ["--allow_missing_optimizer_state"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: " in proc.stderr and "holds no optimizer state: LAMB's moments start from zero" in proc.stderr
    assert checkpoint_names(folder) == ["ckpt_2.pt", "ckpt_3.pt"]


def test_after_divergence_the_message_names_the_last_checkpoint_with_sane_weights(corpus, tmp_path):  # noqa: F811
    folder = tmp_path / "ckpt"
    proc = launch(base_args(corpus, tmp_path, max_steps=8, steps_this_run=3, num_steps_per_checkpoint=1,
                            keep_checkpoints=0))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(folder / "ckpt_3.pt", weights_only=True)
    for name in ("query", "key"):  # finite (it loads) but far past any trained weight: every score overflows
        ckpt["model"][f"bert.encoder.layer.0.attention.self.{name}.bias"].fill_(1e38)
    torch.save(ckpt, folder / "ckpt_3.pt")
    proc = launch(base_args(corpus, tmp_path, max_steps=8, num_steps_per_checkpoint=1, keep_checkpoints=0)
                  + ["--resume_from_checkpoint"])
    assert_one_error_line(proc, "training diverged: 10 optimizer steps in a row had non-finite gradients")
    assert (f"(last sane checkpoint: {folder / 'ckpt_2.pt'} (newer ones have diverged weights: ckpt_3.pt has "
            "weights up to 1e+38))") in proc.stderr
    assert checkpoint_names(folder) == ["ckpt_1.pt", "ckpt_2.pt", "ckpt_3.pt"]
