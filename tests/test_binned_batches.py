"""Length-binned batches (data/pretraining_dataset.py `batch_plan`, `ShardStream(bin_size=)`): each sample once
per epoch, batches within one bin and trimmed to its edge, deterministic order, exact resume, rank equality;
and a dry run of benchmarks/bench_binned_batches.py."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, script_env, shared_path
from pretrain_helpers import wikitext_documents

from data import shard_creation as cpd
from data.pretraining_dataset import DataPosition, ShardStream, batch_plan, bin_edge, load_shard, read_shard
from input_checks import InputError

SEQ, PRED, MICRO, BIN = 128, 20, 8, 32


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three real shards (WikiText-2, seq 128, 10% short sequences as the original makes them) under
    different names, so each is batched in its own order."""
    base = tmp_path_factory.mktemp("bins")
    text = base / "wiki.txt"
    text.write_text(wikitext_documents(30), encoding="utf-8")
    source = base / "source.hdf5"
    cpd.create_hdf5_from_text(text, source, shared_path("vocab", "bert-base-uncased-vocab.txt"),
                              max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=1)
    files = []
    for i in range(3):
        files.append(str(base / f"wiki_training_{i}.hdf5"))
        shutil.copyfile(source, files[-1])
    return files


def epoch_batches(files, bin_size, rank=0, world=1, seed=3):
    """Every batch of one epoch for one rank, with the shard it came from."""
    stream = ShardStream(files, rank, world, micro_batch=MICRO, max_pred=PRED, seed=seed, bin_size=bin_size)
    out = []
    try:
        for batch in stream:
            if stream.position.epoch == 1:
                break
            out.append(batch)
    finally:
        stream.close()
    return out


def row_keys(batch) -> list[tuple[int, ...]]:
    """Rows identified by their tokens (labels put back), trailing padding removed."""
    tokens = torch.where(batch[3] != -1, batch[3], batch[0])
    return [tuple(t[: int(m.sum())].tolist()) for t, m in zip(tokens, batch[2], strict=True)]


def test_each_sample_once_per_epoch_the_same_ones_as_without_bins(shards):
    binned, padded = epoch_batches(shards, BIN), epoch_batches(shards, 0)
    rows = read_shard(shards[0])["input_ids"].shape[0]
    assert len(binned) == len(padded) == 3 * (rows // MICRO)
    # Per shard (same content, different name), the rows seen are distinct and the same set as unbinned.
    per_shard = len(binned) // 3
    for s in range(3):
        seen = [k for b in binned[s * per_shard : (s + 1) * per_shard] for k in row_keys(b)]
        seen_padded = [k for b in padded[s * per_shard : (s + 1) * per_shard] for k in row_keys(b)]
        assert sorted(seen) == sorted(seen_padded)
        assert len(seen) == rows - rows % MICRO


def test_batches_are_trimmed_to_one_bins_edge(shards):
    lengths_seen = set()
    spanning = 0
    binned = epoch_batches(shards, BIN)
    for batch in binned:
        lengths = batch[2].sum(dim=1)
        width = batch[0].size(1)
        assert all(t.shape == (MICRO, width) for t in batch[:4])
        assert width == bin_edge(int(lengths.max()), BIN, SEQ)
        assert width % BIN == 0 or width == SEQ
        bins = {bin_edge(int(n), BIN, SEQ) for n in lengths}
        spanning += len(bins) > 1
        lengths_seen |= bins
    # All but the batches made of the bins' remainders (fewer than one per bin and shard) hold one bin.
    assert len(lengths_seen) >= 3, "the shard must have short sequences in several bins"
    assert spanning <= 3 * (len(lengths_seen) - 1), spanning
    # Trimming removed padding only: the rows equal the shard's rows cut at the batch width.
    padded_rows = {k for b in epoch_batches(shards, 0) for k in row_keys(b)}
    assert {k for b in binned for k in row_keys(b)} == padded_rows


def test_trimmed_columns_were_padding(shards):
    shard = load_shard(shards[0], PRED)
    order = torch.randperm(len(shard["input_ids"]), generator=torch.Generator().manual_seed(0))
    lengths = shard["input_mask"].sum(dim=1)
    for rows, width in batch_plan(order, MICRO, lengths, BIN, SEQ, shuffle_key=11):
        assert int(lengths[rows].max()) <= width
        assert (shard["input_mask"][rows, width:] == 0).all()
        assert (shard["masked_lm_labels"][rows, width:] == -1).all()


def test_plan_is_deterministic_and_the_order_is_shuffled(shards):
    shard = load_shard(shards[0], PRED)
    lengths = shard["input_mask"].sum(dim=1)
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))

    def plan(key):
        return [(rows.tolist(), width) for rows, width in batch_plan(order, MICRO, lengths, BIN, SEQ, key)]

    assert plan(5) == plan(5)
    assert plan(5) != plan(6)
    widths = [w for _, w in plan(5)]
    assert widths != sorted(widths), "batches of different bins are interleaved, not sorted by length"
    a, b = epoch_batches(shards, BIN, seed=3), epoch_batches(shards, BIN, seed=4)
    assert [x[0].tolist() for x in a] != [x[0].tolist() for x in b]


def test_binned_stream_resumes_at_the_exact_next_batch(shards):
    stream = ShardStream(shards, 0, 1, micro_batch=MICRO, max_pred=PRED, seed=3, bin_size=BIN)
    running = iter(stream)
    for _ in range(7):
        next(running)
    stored = dataclasses.asdict(stream.position)
    assert stored["bin_size"] == BIN and stored["offset"] > 0
    resumed = ShardStream(shards, 0, 1, micro_batch=MICRO, max_pred=PRED, seed=3, position=DataPosition(**stored),
                          bin_size=BIN)
    again = iter(resumed)
    rows = read_shard(shards[0])["input_ids"].shape[0]
    for _ in range(3 * (rows // MICRO) + 5):  # past the end of the epoch
        a, b = next(running), next(again)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert stream.position.epoch == 1
    stream.close()
    resumed.close()
    # A position inside a shard cannot be resumed with another bin size (it would skip or repeat samples).
    with pytest.raises(InputError, match="resume with --bin_size 32"):
        ShardStream(shards, 0, 1, micro_batch=MICRO, max_pred=PRED, seed=3, position=DataPosition(**stored),
                    bin_size=64)
    at_boundary = DataPosition(epoch=1, slot=0, offset=0, bin_size=BIN)
    assert ShardStream(shards, 0, 1, MICRO, PRED, 3, position=at_boundary, bin_size=0).position.bin_size == 0


def test_one_rank_reads_the_same_binned_batches_as_two(shards):
    files = shards[:2]
    single = epoch_batches(files, BIN)
    ranks = [epoch_batches(files, BIN, rank=r, world=2) for r in range(2)]
    assert len(single) == len(ranks[0]) + len(ranks[1])
    for a, b in zip(single, ranks[0] + ranks[1], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_benchmark_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_binned_batches.py"), "--dry_run",
                           "--work_dir", str(tmp_path)], env=script_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for needed in ("CPU:", "padded tokens per step", "sequences/s", "speed-up", "dynamic masking"):
        assert needed in out, (needed, out)


def test_negative_bin_size_is_a_one_line_error(shards):
    import distributed
    import run_pretraining

    args = run_pretraining.parse_args([f"--input_dir={shards[0].rsplit('/', 1)[0]}", "--config_file=x.json",
                                       "--output_dir=out", "--do_train", "--bin_size=-1"])
    with pytest.raises(InputError, match="--bin_size must be a finite number >= 0"):
        run_pretraining.validate_args(args, distributed.DistEnv())
