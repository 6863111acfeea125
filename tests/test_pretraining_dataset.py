"""data/pretraining_dataset.py and data/inspect_hdf5.py: items equal the original loader's, validation, listing."""
from __future__ import annotations

import dataclasses
import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import shared_path
from torch.utils.data import DataLoader

from data import inspect_hdf5
from data import shard_creation as cpd
from data.pretraining_dataset import (
    DataPosition,
    PretrainingShardDataset,
    ShardStream,
    check_shard_shapes,
    list_shards,
    read_shard,
    shard_for_slot,
    slots_per_epoch,
    unmasked_input_ids,
)
from input_checks import InputError

KEYS = ["input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids", "next_sentence_labels"]


def original_loader_item(path, index, max_pred_length):
    """The original run_pretraining.py `pretraining_dataset.__getitem__`, restated with the same torch steps."""
    with h5py.File(path, "r") as f:
        inputs = [np.asarray(f[key][:]) for key in KEYS]
    input_ids, input_mask, segment_ids, masked_lm_positions, masked_lm_ids, next_sentence_labels = [
        torch.from_numpy(array[index].astype(np.int64)) if number < 5
        else torch.from_numpy(np.asarray(array[index].astype(np.int64)))
        for number, array in enumerate(inputs)]
    masked_lm_labels = torch.ones(input_ids.shape, dtype=torch.long) * -1
    count = max_pred_length
    padded_mask_indices = (masked_lm_positions == 0).nonzero()
    if len(padded_mask_indices) != 0:
        count = padded_mask_indices[0].item()
    masked_lm_labels[masked_lm_positions[:count]] = masked_lm_ids[:count]
    return [input_ids, segment_ids, input_mask, masked_lm_labels, next_sentence_labels]


def assert_items_equal(ours, original):
    assert len(ours) == len(original) == 5
    for mine, theirs in zip(ours, original, strict=True):
        assert mine.dtype == theirs.dtype == torch.int64
        assert torch.equal(mine, theirs)


@pytest.fixture(scope="module")
def real_shard(tmp_path_factory):
    path = tmp_path_factory.mktemp("shard") / "sample_training_0.hdf5"
    cpd.create_hdf5_from_text(shared_path("corpus", "bert_sample_text.txt"), path,
                              shared_path("vocab", "bert-base-uncased-vocab.txt"), dupe_factor=3)
    return path


@pytest.fixture
def handmade_shard(tmp_path):
    """Three rows: padded predictions, a full row (no 0), and a 0 in the middle (the first 0 ends the list)."""
    arrays = {
        "input_ids": np.array([[101, 7592, 103, 102, 2088, 102, 0, 0],
                               [101, 103, 2003, 102, 103, 1037, 103, 102],
                               [101, 2023, 2003, 999, 102, 2307, 999, 102]], dtype=np.int32),
        "input_mask": np.array([[1] * 6 + [0] * 2, [1] * 8, [1] * 8], dtype=np.int8),
        "segment_ids": np.array([[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1], [0] * 5 + [1] * 3],
                                dtype=np.int8),
        "masked_lm_positions": np.array([[2, 0, 0], [1, 4, 6], [3, 0, 5]], dtype=np.int32),
        "masked_lm_ids": np.array([[2023, 0, 0], [5, 6, 7], [2742, 0, 9]], dtype=np.int32),
        "next_sentence_labels": np.array([1, 0, 1], dtype=np.int8),
    }
    path = tmp_path / "hand_training_0.hdf5"
    cpd.write_shard(arrays, path)
    return path, arrays


def test_items_equal_the_original_loader_on_a_real_shard(real_shard):
    dataset = PretrainingShardDataset(real_shard, max_pred_length=20)
    assert len(dataset) > 20
    for index in range(len(dataset)):
        assert_items_equal(dataset[index], original_loader_item(real_shard, index, 20))


def test_first_zero_position_ends_the_predictions(handmade_shard):
    path, arrays = handmade_shard
    dataset = PretrainingShardDataset(path, max_pred_length=3)
    for index in range(3):
        assert_items_equal(dataset[index], original_loader_item(path, index, 3))
    labels = [dataset[index][3] for index in range(3)]
    assert labels[0].tolist() == [-1, -1, 2023, -1, -1, -1, -1, -1]
    assert labels[1].tolist() == [-1, 5, -1, -1, 6, -1, 7, -1]  # no 0: all three count
    assert labels[2].tolist() == [-1, -1, -1, 2742, -1, -1, -1, -1]  # position 5 after the 0 is ignored
    # A larger max_pred_length than the shard's width behaves as the original too.
    wide = PretrainingShardDataset(path, max_pred_length=80)
    for index in range(3):
        assert_items_equal(wide[index], original_loader_item(path, index, 80))


def test_whole_shard_tensors_match_items(real_shard):
    dataset = PretrainingShardDataset(real_shard, max_pred_length=20)
    tensors = dataset.tensors()
    names = ["input_ids", "segment_ids", "input_mask", "masked_lm_labels", "next_sentence_labels"]
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        for name, part in zip(names, dataset[index], strict=True):
            assert tensors[name].dtype == torch.int64
            assert torch.equal(tensors[name][index], part), name


def test_dataloader_batches_and_unmasked_ids(real_shard):
    seen = []

    def transform(item):
        seen.append(1)
        return item

    dataset = PretrainingShardDataset(real_shard, max_pred_length=20, transform=transform)
    input_ids, segment_ids, input_mask, labels, next_sentence = next(iter(DataLoader(dataset, batch_size=4)))
    assert input_ids.shape == segment_ids.shape == input_mask.shape == labels.shape == (4, 128)
    assert next_sentence.shape == (4,) and len(seen) == 4
    arrays = read_shard(real_shard)
    expected = arrays["input_ids"][:4].astype(np.int64)
    for row in range(4):
        count = int((arrays["masked_lm_positions"][row] > 0).sum())
        expected[row, arrays["masked_lm_positions"][row, :count]] = arrays["masked_lm_ids"][row, :count]
    assert torch.equal(unmasked_input_ids(input_ids, labels), torch.from_numpy(expected))


def test_missing_dataset_names_file_and_key(tmp_path, handmade_shard):
    _, arrays = handmade_shard
    path = tmp_path / "partial.hdf5"
    with h5py.File(path, "w") as f:
        for key in KEYS:
            if key != "masked_lm_ids":
                f.create_dataset(key, data=arrays[key])
    with pytest.raises(InputError, match=f"{path}: missing dataset 'masked_lm_ids'"):
        PretrainingShardDataset(path, 3)


@pytest.mark.parametrize("key, bad", [("segment_ids", np.zeros((2, 8), np.int8)),
                                      ("masked_lm_ids", np.zeros((3, 4), np.int32)),
                                      ("next_sentence_labels", np.zeros((3, 1), np.int8)),
                                      ("input_mask", np.zeros((3, 8), np.float32))])
def test_wrong_shapes_name_file_and_key(tmp_path, handmade_shard, key, bad):
    _, arrays = handmade_shard
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        for name in KEYS:
            f.create_dataset(name, data=bad if name == key else arrays[name])
    with pytest.raises(InputError, match=str(path)) as error:
        PretrainingShardDataset(path, 3)
    assert key in str(error.value)


def test_more_predictions_than_max_pred_length_is_an_error(handmade_shard):
    path, _ = handmade_shard
    with pytest.raises(InputError, match="masked_lm_positions.*max_predictions_per_seq=2"):
        PretrainingShardDataset(path, 2)


def test_unreadable_or_missing_shard(tmp_path):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        PretrainingShardDataset(junk, 20)
    with pytest.raises(InputError, match="not found"):
        PretrainingShardDataset(tmp_path / "absent.hdf5", 20)


def test_list_shards_like_the_original(tmp_path):
    for name in ("wiki_training_1.hdf5", "wiki_training_0.hdf5", "wiki_test_0.hdf5", "books_training_0.hdf5",
                 ".tmp-wiki_training_2.hdf5.x1y2", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "training_subdir").mkdir()
    assert [p.split("/")[-1] for p in list_shards(tmp_path)] == [
        "books_training_0.hdf5", "wiki_training_0.hdf5", "wiki_training_1.hdf5"]
    assert [p.split("/")[-1] for p in list_shards(tmp_path, "test")] == ["wiki_test_0.hdf5"]
    with pytest.raises(InputError, match="not found"):
        list_shards(tmp_path / "missing")


def test_shard_statistics_exact_on_handmade_shard(handmade_shard):
    _, arrays = handmade_shard
    stats = inspect_hdf5.shard_statistics(arrays, mask_id=103)
    assert stats["instances"] == 3 and stats["max_length"] == 8
    assert stats["mean_length"] == pytest.approx(22 / 3)
    assert stats["masked_share"] == pytest.approx(5 / 22)  # row 2's position after its first 0 does not count
    assert stats["random_next_share"] == pytest.approx(2 / 3)
    # Shown at the predictions: 103 (row 0), 103 103 103 (row 1), 999 where 2742 was (row 2).
    assert stats["mask_token_share"] == pytest.approx(4 / 5)
    assert stats["kept_share"] == 0 and stats["random_token_share"] == pytest.approx(1 / 5)


def test_inspect_command_prints_layout_statistics_and_tokens(real_shard, capsys):
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    inspect_hdf5.main([str(real_shard), "--vocab_file", str(vocab), "--num", "2"])
    out = capsys.readouterr().out
    for expected in ("input_ids", "int32", "gzip", "instances:", "masked share",
                     "random next sentence share", "replacements: [MASK]", "instance 1", "[CLS]", "[SEP]"):
        assert expected in out, expected
    assert "instance 2 " not in out


def test_shard_stream_resumes_at_the_exact_next_sample(real_shard, tmp_path):
    """A stream rebuilt from a copy of its plain-data position yields exactly the batches the original goes on
    to yield, across shard and epoch boundaries."""
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"part_training_{i}.hdf5"))
        shutil.copyfile(real_shard, files[-1])
    seq_len, max_pred = check_shard_shapes(files, 128, 20, 512)
    rows = read_shard(files[0])["input_ids"].shape[0]
    batches = 3 * (rows // 8) + 4  # past the end of the first epoch
    stream = ShardStream(files, 0, 1, micro_batch=8, max_pred=max_pred, seed=3)
    running = iter(stream)
    for _ in range(5):
        next(running)
    saved = DataPosition(**dataclasses.asdict(stream.position))
    resumed = ShardStream(files, 0, 1, micro_batch=8, max_pred=max_pred, seed=3, position=saved)
    again = iter(resumed)
    for _ in range(batches):
        a, b = next(running), next(again)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert a[0].shape == (8, seq_len)
    assert stream.position.epoch == 1
    stream.close()
    resumed.close()


def test_ranks_read_every_shard_once_per_epoch():
    files = [f"f{i}" for i in range(5)]
    slots = slots_per_epoch(len(files), 2)
    read = [shard_for_slot(files, 0, slot, rank, 2, seed=1) for slot in range(slots) for rank in range(2)]
    assert slots == 3 and set(read) == set(files)


def test_shard_shapes_checked_against_flags_and_model(real_shard):
    seq_len, max_pred = check_shard_shapes([str(real_shard)], 512, 80, 512)
    with pytest.raises(InputError, match="max_position_embeddings"):
        check_shard_shapes([str(real_shard)], 512, 80, seq_len - 1)
    with pytest.raises(InputError, match="--max_seq_length"):
        check_shard_shapes([str(real_shard)], seq_len - 1, 80, 512)
    with pytest.raises(InputError, match="--max_predictions_per_seq"):
        check_shard_shapes([str(real_shard)], 512, max_pred - 1, 512)
