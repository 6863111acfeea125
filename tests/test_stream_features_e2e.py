"""run_pretraining.py with --dynamic_masking (whole words) and --bin_size: exact resume after SIGTERM and
2 gloo ranks = 1 process, end to end on real shards."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, script_env, shared_path
from pretrain_helpers import write_config
from test_pretraining import base_args, corpus, run_pretraining, sigterm_after_steps, split_exact, step_losses  # noqa: F401

from run_pretraining import EXIT_STOPPED

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def feature_flags() -> list[str]:
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    return ["--dynamic_masking", "--whole_word_masking", f"--vocab_file={vocab}", "--bin_size=16"]


def test_exact_resume_with_dynamic_masking_and_bins(corpus, tmp_path):  # noqa: F811
    n = 16
    straight = tmp_path / "straight"
    run_pretraining(base_args(corpus, straight, max_steps=n, num_steps_per_checkpoint=4) + feature_flags())
    expected = step_losses(straight / "dllogger.json")
    plain = tmp_path / "plain"
    run_pretraining(base_args(corpus, plain, max_steps=2))
    assert step_losses(plain / "dllogger.json")[2] != expected[2], "the flags must change the batches"

    resumed = tmp_path / "resumed"
    log = resumed / "dllogger.json"
    returncode, out = sigterm_after_steps([*base_args(corpus, resumed, max_steps=n, num_steps_per_checkpoint=4),
                                           *feature_flags()], log)
    assert returncode == EXIT_STOPPED, out[-3000:]  # stopped early: resume to continue
    first_part = step_losses(log)
    stopped_at = max(first_part)
    assert stopped_at < n, "the signal must stop the run early"
    position = torch.load(resumed / "ckpt" / f"ckpt_{stopped_at}.pt", weights_only=True)["data_position"][0]
    assert position["bin_size"] == 16 and position["offset"] > 0, position  # mid-shard

    run_pretraining(base_args(corpus, resumed, max_steps=n, num_steps_per_checkpoint=4,
                              **{"json-summary": resumed / "dllogger2.json"})
                    + feature_flags() + ["--resume_from_checkpoint"])
    losses = {**first_part, **step_losses(resumed / "dllogger2.json")}
    assert sorted(losses) == list(range(1, n + 1))
    assert losses == expected  # bitwise


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_dynamic_masking_and_bins(corpus, tmp_path):  # noqa: F811
    """1 process × accumulation 2k = 2 gloo ranks × accumulation k, the same micro-batches (masks and bins)."""
    micro, k, steps = 4, 2, 3
    src = next(corpus["phase1"].glob("*training_0.hdf5"))
    data = tmp_path / "data"
    split_exact(src, data, files=2 * steps, rows=micro * k)
    config = write_config(tmp_path / "nodrop.json", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    common = {"input_dir": data, "config_file": config, "max_steps": steps, "learning_rate": 1e-2,
              "num_steps_per_checkpoint": steps}
    single = tmp_path / "single"
    run_pretraining(base_args(corpus, single, train_batch_size=2 * k * micro, gradient_accumulation_steps=2 * k,
                              **common) + feature_flags())
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "run_pretraining.py"), "--do_train", "--disable_progress_bar",
           *base_args(corpus, ddp, train_batch_size=k * micro, gradient_accumulation_steps=k, **common),
           *feature_flags()]
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = torch.load(single / "ckpt" / f"ckpt_{steps}.pt", weights_only=True)["model"]
    b = torch.load(ddp / "ckpt" / f"ckpt_{steps}.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)
    # And the same run without the features ends elsewhere: the flags reached the stream on every rank.
    plain = tmp_path / "plain"
    run_pretraining(base_args(corpus, plain, train_batch_size=2 * k * micro, gradient_accumulation_steps=2 * k,
                              **common))
    c = torch.load(plain / "ckpt" / f"ckpt_{steps}.pt", weights_only=True)["model"]
    assert any(not torch.allclose(a[key], c[key], atol=1e-3) for key in a)
