"""run_pretraining.py with --dynamic_masking (whole words) and --bin_size: exact resume after SIGTERM and
2 gloo ranks = 1 process, end to end on real shards."""
from __future__ import annotations

import pytest
import torch
from conftest import shared_path
from test_pretraining import (  # noqa: F401 - corpus is a fixture
    assert_same_weights,
    base_args,
    corpus,
    exact_split_settings,
    one_process_model,
    run_pretraining,
    sigterm_after_steps,
    step_losses,
    two_rank_model,
)

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
    settings = exact_split_settings(corpus, tmp_path)
    flags = tuple(feature_flags())
    a = one_process_model(corpus, tmp_path / "single", settings, flags)
    assert_same_weights(a, two_rank_model(corpus, tmp_path / "ddp", settings, flags))
    # And the same run without the features ends elsewhere: the flags reached the stream on every rank.
    c = one_process_model(corpus, tmp_path / "plain", settings)
    assert any(not torch.allclose(a[key], c[key], atol=1e-3) for key in a)
