"""Dynamic masking (data/pretraining_dataset.py): the original's rules on a real shard, determinism, the
restore-then-remask round trip, the stream's resume and rank equality, and run_pretraining end to end."""
from __future__ import annotations

import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import shared_path
from pretrain_helpers import wikitext_documents

from data import shard_creation as cpd
from data.pretraining_dataset import (
    DataPosition,
    ShardStream,
    apply_mask,
    candidate_positions,
    choose_whole_words,
    load_shard,
    masker_from_vocab,
    read_shard,
    sample_uniforms,
    unmasked_input_ids,
)
from evaluation import BatchSlice, ShardInfo, iter_batches
from input_checks import InputError

SEQ, PRED = 128, 20
CLS, SEP, MASK, PAD = 101, 102, 103, 0


@pytest.fixture(scope="module")
def vocab_file():
    return str(shared_path("vocab", "bert-base-uncased-vocab.txt"))


@pytest.fixture(scope="module")
def wiki_shard(tmp_path_factory, vocab_file):
    """A real shard: 30 WikiText-2 articles, seq 128 / 20 predictions, the original's static masks."""
    base = tmp_path_factory.mktemp("dynmask")
    text = base / "wiki.txt"
    text.write_text(wikitext_documents(30), encoding="utf-8")
    path = base / "wiki_training_0.hdf5"
    cpd.create_hdf5_from_text(text, path, vocab_file, max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=1)
    return str(path)


@pytest.fixture(scope="module")
def restored(wiki_shard):
    shard = load_shard(wiki_shard, PRED)
    return shard, unmasked_input_ids(shard["input_ids"], shard["masked_lm_labels"])


def remask(masker, restored, path, epoch=0, rows=None):
    shard, tokens = restored
    rows = torch.arange(len(tokens)) if rows is None else rows
    return masker(tokens[rows], shard["segment_ids"][rows], shard["input_mask"][rows], epoch, path, rows)


def expected_counts(lengths: np.ndarray, prob: float = 0.15, cap: int = PRED) -> np.ndarray:
    return np.array([min(cap, max(1, int(round(length * prob))), length - 3) for length in lengths])


def test_restored_tokens_are_the_text_before_masking(restored):
    shard, tokens = restored
    real = shard["input_mask"] == 1
    assert not (tokens == MASK).any(), "real text holds no [MASK] once the labels are put back"
    assert (tokens[:, 0] == CLS).all()
    assert ((tokens == SEP) & real).sum(dim=1).eq(2).all()
    assert (tokens[~real] == PAD).all()


def test_masking_statistics_follow_the_original_rules(wiki_shard, restored, vocab_file):
    shard, tokens = restored
    masker = masker_from_vocab(vocab_file, 30522, PRED, 0.15, seed=5, whole_word=False)
    ids, labels = remask(masker, restored, wiki_shard)
    chosen = labels != -1
    lengths = shard["input_mask"].sum(dim=1).numpy()
    # The count of every row is the original's (the same rule produced the shard's static masks).
    assert np.array_equal(chosen.sum(dim=1).numpy(), expected_counts(lengths))
    assert np.array_equal(chosen.sum(dim=1), (shard["masked_lm_labels"] != -1).sum(dim=1))
    assert chosen.sum(dim=1).max() <= PRED
    # Never [CLS], a [SEP] or padding; labels are the original tokens.
    assert not (chosen & (shard["input_mask"] == 0)).any()
    assert not chosen[:, 0].any()
    assert not np.isin(labels[chosen].numpy(), [CLS, SEP, PAD]).any()
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(ids[~chosen], tokens[~chosen])
    # 80% [MASK] / 10% kept / 10% random, within 5 standard deviations.
    total = int(chosen.sum())
    as_mask = int((ids[chosen] == MASK).sum())
    kept = int((ids[chosen] == tokens[chosen]).sum())
    assert total > 5000
    for observed, p in ((as_mask, 0.8), (kept, 0.1), (total - as_mask - kept, 0.1)):
        assert abs(observed - p * total) < 5 * math.sqrt(total * p * (1 - p)) + 0.002 * total, (observed, p, total)


def test_masked_lm_prob_and_cap_are_respected(wiki_shard, restored, vocab_file):
    shard, _ = restored
    lengths = shard["input_mask"].sum(dim=1).numpy()
    masker = masker_from_vocab(vocab_file, 30522, 12, 0.3, seed=5, whole_word=False)
    _, labels = remask(masker, restored, wiki_shard)
    assert np.array_equal((labels != -1).sum(dim=1).numpy(), expected_counts(lengths, 0.3, 12))


def google_whole_word_choice(tokens, candidates, keys, count, continuation):
    """Google's create_masked_lm_predictions, per row, with the shuffle given by `keys` (first piece's key)."""
    words: list[list[int]] = []
    for position in np.nonzero(candidates)[0]:
        if words and continuation[tokens[position]]:
            words[-1].append(int(position))
        else:
            words.append([int(position)])
    words.sort(key=lambda w: keys[w[0]])
    chosen: list[int] = []
    for word in words:
        if len(chosen) >= count:
            break
        if len(chosen) + len(word) > count:
            continue
        chosen += word
    return sorted(chosen)


def test_whole_word_masking_takes_whole_words_like_google(wiki_shard, restored, vocab_file):
    shard, tokens = restored
    masker = masker_from_vocab(vocab_file, 30522, PRED, 0.15, seed=9, whole_word=True)
    ids, labels = remask(masker, restored, wiki_shard)
    chosen = (labels != -1).numpy()
    continuation = masker.is_continuation
    tok = tokens.numpy()
    candidates = candidate_positions(shard["segment_ids"].numpy(), shard["input_mask"].numpy())
    counts = expected_counts(shard["input_mask"].sum(dim=1).numpy())
    multi_piece_words = 0
    for row in range(len(tok)):
        # Every piece of a word shares its first piece's fate.
        for position in np.nonzero(candidates[row])[0]:
            if continuation[tok[row, position]] and candidates[row, :position].any():
                previous = np.nonzero(candidates[row, :position])[0][-1]
                assert chosen[row, position] == chosen[row, previous], (row, position)
                multi_piece_words += int(chosen[row, position])
        assert chosen[row].sum() <= counts[row]
    assert multi_piece_words > 50, "the shard must exercise words of several pieces"
    # Same keys → exactly Google's greedy choice.
    keys = sample_uniforms(0, np.arange(len(tok)), SEQ)[..., 0]
    ours = choose_whole_words(keys, candidates, counts, continuation[tok])
    for row in range(len(tok)):
        expected = google_whole_word_choice(tok[row], candidates[row], keys[row], counts[row], continuation)
        assert np.nonzero(ours[row])[0].tolist() == expected, row


def test_same_seed_epoch_and_sample_give_the_same_mask(wiki_shard, restored, vocab_file):
    masker = masker_from_vocab(vocab_file, 30522, PRED, 0.15, seed=5, whole_word=False)
    ids, labels = remask(masker, restored, wiki_shard)
    again_ids, again_labels = remask(masker, restored, wiki_shard)
    assert torch.equal(ids, again_ids) and torch.equal(labels, again_labels)
    # A sample's mask does not depend on the batch it is read in.
    rows = torch.tensor([7, 3, 40])
    some_ids, some_labels = remask(masker, restored, wiki_shard, rows=rows)
    assert torch.equal(some_ids, ids[rows]) and torch.equal(some_labels, labels[rows])
    # Another epoch, seed or shard name draws another mask.
    other_epoch = remask(masker, restored, wiki_shard, epoch=1)[1]
    other_seed = remask(masker_from_vocab(vocab_file, 30522, PRED, 0.15, 6, False), restored, wiki_shard)[1]
    other_name = remask(masker, restored, wiki_shard.replace("_0.hdf5", "_1.hdf5"))[1]
    for other in (other_epoch, other_seed, other_name):
        same_rows = (other == labels).all(dim=1).float().mean()
        assert same_rows < 0.05, same_rows


def test_restore_then_remask_with_the_shards_choices_gives_the_shard(wiki_shard, restored):
    """Put the tokens back from masked_lm_positions/ids, then mask the shard's positions with the shard's
    replacements: input_ids and masked_lm_labels come back exactly."""
    shard, tokens = restored
    arrays = read_shard(wiki_shard)
    chosen = np.zeros(tokens.shape, dtype=bool)
    for row, (positions, ids) in enumerate(zip(arrays["masked_lm_positions"], arrays["masked_lm_ids"], strict=True)):
        used = positions != 0
        chosen[row, positions[used]] = True
        assert np.array_equal(tokens[row, positions[used]].numpy(), ids[used])
    ids, labels = apply_mask(tokens.numpy(), chosen, arrays["input_ids"].astype(np.int64))
    assert np.array_equal(ids, arrays["input_ids"])
    assert torch.equal(torch.from_numpy(labels), shard["masked_lm_labels"])


def copies(shard: str, folder, n: int) -> list[str]:
    files = []
    for i in range(n):
        files.append(str(folder / f"part_training_{i}.hdf5"))
        shutil.copyfile(shard, files[-1])
    return files


def test_stream_resumes_with_the_same_masks_and_epochs_differ(wiki_shard, tmp_path, vocab_file):
    files = copies(wiki_shard, tmp_path, 2)
    masker = masker_from_vocab(vocab_file, 30522, PRED, 0.15, seed=3, whole_word=True)
    rows = read_shard(files[0])["input_ids"].shape[0]
    per_epoch = 2 * (rows // 8)
    stream = ShardStream(files, 0, 1, micro_batch=8, max_pred=PRED, seed=3, masker=masker)
    running = iter(stream)
    epoch0 = [next(running) for _ in range(5)]
    saved = DataPosition(**dataclasses.asdict(stream.position))
    resumed = ShardStream(files, 0, 1, micro_batch=8, max_pred=PRED, seed=3, position=saved, masker=masker)
    again = iter(resumed)
    for _ in range(per_epoch):
        a, b = next(running), next(again)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        epoch0.append(a)
    assert stream.position.epoch == 1
    # Each sample is masked afresh in the next epoch: compare rows by their restored tokens.
    first = {tuple(unmasked_input_ids(b[0], b[3])[i].tolist()): b[3][i] for b in epoch0[:per_epoch] for i in range(8)}
    later = [next(running) for _ in range(per_epoch)]
    same = total = 0
    for batch in later:
        for i in range(8):
            key = tuple(unmasked_input_ids(batch[0], batch[3])[i].tolist())
            if key in first:
                total += 1
                same += int(torch.equal(first[key], batch[3][i]))
    assert total > 50 and same / total < 0.05, (same, total)
    stream.close()
    resumed.close()


def test_one_rank_reads_the_same_masked_batches_as_two(wiki_shard, tmp_path, vocab_file):
    files = copies(wiki_shard, tmp_path, 4)
    masker = masker_from_vocab(vocab_file, 30522, PRED, 0.15, seed=3, whole_word=False)
    rows = read_shard(files[0])["input_ids"].shape[0] // 8
    single = ShardStream(files, 0, 1, micro_batch=8, max_pred=PRED, seed=3, masker=masker)
    ranks = [ShardStream(files, r, 2, micro_batch=8, max_pred=PRED, seed=3, masker=masker) for r in range(2)]
    one = iter(single)
    both = [iter(s) for s in ranks]
    # Slot by slot, the single process reads shard (2·slot) then (2·slot + 1); rank r reads (2·slot + r).
    for _slot in range(2):
        from_single = [next(one) for _ in range(2 * rows)]
        from_ranks = [next(both[0]) for _ in range(rows)] + [next(both[1]) for _ in range(rows)]
        for a, b in zip(from_single, from_ranks, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    for s in (single, *ranks):
        s.close()


def test_evaluation_masks_do_not_depend_on_the_batch_size(wiki_shard, vocab_file):
    masker = masker_from_vocab(vocab_file, 30522, PRED, 0.15, seed=1, whole_word=False)
    info = ShardInfo(wiki_shard, 40, SEQ, PRED)

    def rows(batch_size: int) -> torch.Tensor:
        slices = [BatchSlice(i, 0, start, min(start + batch_size, 40), PRED) for i, start in
                  enumerate(range(0, 40, batch_size))]
        return torch.cat([b["masked_lm_labels"] for _, b in iter_batches([info], slices, masker)])

    labels = rows(5)
    assert torch.equal(labels, rows(8))
    assert not torch.equal(labels, load_shard(wiki_shard, PRED)["masked_lm_labels"][:40])


def test_bad_masking_options_are_one_line_errors(tmp_path, vocab_file):
    with pytest.raises(InputError, match="--whole_word_masking needs --vocab_file"):
        masker_from_vocab(None, 30522, PRED, 0.15, 1, whole_word=True)
    with pytest.raises(InputError, match="--masked_lm_prob"):
        masker_from_vocab(vocab_file, 30522, PRED, 1.5, 1, whole_word=False)
    with pytest.raises(InputError, match="vocab_size 100"):
        masker_from_vocab(vocab_file, 100, PRED, 0.15, 1, whole_word=False)
    no_mask = tmp_path / "vocab.txt"
    no_mask.write_text("[PAD]\n[CLS]\n[SEP]\nhello\n")
    with pytest.raises(InputError, match=r"no \[MASK\]"):
        masker_from_vocab(str(no_mask), 30522, PRED, 0.15, 1, whole_word=False)
