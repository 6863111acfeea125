"""--tensorboard_dir: a tiny pretraining run writes TensorBoard event files holding the logged losses."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, script_env
from pretrain_helpers import make_shard, wikitext_documents, write_config

# Not skipped when missing: tensorboard is a runtime requirement (requirements.txt), not an option.
from tensorboard.backend.event_processing import event_accumulator

from run_log import read_dllogger

STEPS = 3


def test_tensorboard_dir_gets_the_step_losses(tmp_path):
    text = tmp_path / "wiki.txt"
    text.write_text(wikitext_documents(4), encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir()
    make_shard(data / "wiki_training_0.hdf5", text, 32, 5)
    board = tmp_path / "tb"
    cmd = [sys.executable, str(ROOT / "run_pretraining.py"), "--do_train", "--disable_progress_bar",
           f"--input_dir={data}", f"--config_file={write_config(tmp_path / 'tiny.json')}",
           f"--output_dir={tmp_path / 'ckpt'}", f"--json-summary={tmp_path / 'dllogger.json'}",
           "--train_batch_size=4", "--learning_rate=1e-3", f"--max_steps={STEPS}", "--warmup_proportion=0.1",
           "--max_seq_length=32", "--max_predictions_per_seq=5", "--num_steps_per_checkpoint=1000",
           "--log_freq=1", "--precision=fp32", "--seed=3", f"--tensorboard_dir={board}"]
    done = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    events = list(board.glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    scalars = event_accumulator.EventAccumulator(str(board), size_guidance={"scalars": 0})
    scalars.Reload()
    assert "train/step_loss" in scalars.Tags()["scalars"]
    logged = {r["step"][1]: r["data"]["step_loss"] for r in read_dllogger(tmp_path / "dllogger.json")
              if isinstance(r.get("step"), list) and len(r["step"]) == 2 and "step_loss" in r["data"]}
    written = {e.step: e.value for e in scalars.Scalars("train/step_loss")}
    assert sorted(written) == sorted(logged) and len(written) == STEPS
    assert written == pytest.approx(logged, rel=1e-6)  # TensorBoard stores float32
