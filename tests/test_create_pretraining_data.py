"""create_pretraining_data.py: exact parity with the reference port, instance invariants, format, bad input."""
from __future__ import annotations

import random
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import ROOT, load_benchmark, script_env, shared_path

import tokenization
from data import mt19937
from data import shard_creation as cpd
from input_checks import InputError

SETTINGS = dict(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15, short_seq_prob=0.1,
                dupe_factor=10, random_seed=12345, do_whole_word_mask=False, do_lower_case=True)


reference = load_benchmark("reference_create_pretraining_data")


@pytest.fixture(scope="module")
def uncased_vocab():
    return shared_path("vocab", "bert-base-uncased-vocab.txt")


@pytest.fixture(scope="module")
def cased_vocab():
    return shared_path("vocab", "bert-base-cased-vocab.txt")


@pytest.fixture(scope="module")
def sample_text():
    return shared_path("corpus", "bert_sample_text.txt")


@pytest.fixture(scope="module")
def wiki_sentences(tmp_path_factory):
    """The first WikiText-2 test articles as sentence-per-line documents (blank line between articles)."""
    raw = shared_path("corpus", "wikitext-2-raw", "wiki.test.raw").read_text(encoding="utf-8")
    articles: list[list[str]] = []
    for line in raw.splitlines():
        line = line.strip()
        if line.startswith("= ") and not line.startswith("= ="):
            articles.append([])
        elif line and not line.startswith("=") and articles:
            articles[-1] += [s for s in re.split(r"(?<= [.!?]) (?=[A-Z\"])", line) if s.strip()]
    path = tmp_path_factory.mktemp("wiki") / "wiki_sentences.txt"
    path.write_text("\n\n".join("\n".join(article) for article in articles[:12]) + "\n", encoding="utf-8")
    return path


def make_shard(tmp_path, input_file, vocab, name="out.hdf5", **overrides):
    options = {**SETTINGS, **overrides}
    output = tmp_path / name
    cpd.create_hdf5_from_text(input_file, output, vocab, **options)
    with h5py.File(output, "r") as shard:
        return {key: shard[key][()] for key in shard}


def reference_arrays(input_file, vocab, **overrides):
    return reference.create_reference_arrays([str(input_file)], str(vocab), **{**SETTINGS, **overrides})


def unmasked_ids(arrays):
    """input_ids with every masked position given back its original id."""
    ids = arrays["input_ids"].copy()
    rows, columns = np.nonzero(arrays["masked_lm_positions"])
    ids[rows, arrays["masked_lm_positions"][rows, columns]] = arrays["masked_lm_ids"][rows, columns]
    return ids


def assert_same_arrays(ours, ref):
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key].shape == ref[key].shape, key
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


# --------------------------------------------------------------------------------------------
# Parity with the reference port (same text, same seed -> the same arrays)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    {},
    {"random_seed": 1, "do_whole_word_mask": True},
    {"random_seed": 7, "max_seq_length": 64, "max_predictions_per_seq": 10, "dupe_factor": 5},
    {"random_seed": 3, "max_seq_length": 32, "max_predictions_per_seq": 5, "short_seq_prob": 0.5,
     "masked_lm_prob": 0.3, "do_whole_word_mask": True},
], ids=["defaults", "whole-word", "seq64", "seq32-short-wwm"])
def test_identical_to_reference_port_on_sample_text(tmp_path, sample_text, uncased_vocab, overrides):
    ours = make_shard(tmp_path, sample_text, uncased_vocab, **overrides)
    assert_same_arrays(ours, reference_arrays(sample_text, uncased_vocab, **overrides))


def test_identical_to_reference_port_on_wikipedia_sentences(tmp_path, wiki_sentences, uncased_vocab):
    ours = make_shard(tmp_path, wiki_sentences, uncased_vocab, dupe_factor=2)
    assert len(ours["input_ids"]) > 500
    assert_same_arrays(ours, reference_arrays(wiki_sentences, uncased_vocab, dupe_factor=2))


def test_identical_to_reference_port_on_crlf_book(tmp_path, uncased_vocab):
    """Moby Dick has CRLF line ends; the reference reads it in text mode (universal newlines)."""
    data = shared_path("corpus", "gutenberg", "melville-moby_dick.txt").read_bytes()
    cut = data.index(b"\r\n", 250_000) + 2
    book = tmp_path / "moby_part.txt"
    book.write_bytes(data[:cut])
    assert b"\r\n" in book.read_bytes()
    ours = make_shard(tmp_path, book, uncased_vocab, dupe_factor=1)
    assert_same_arrays(ours, reference_arrays(book, uncased_vocab, dupe_factor=1))


def test_cased_vocab_without_lower_casing_matches_reference_and_keeps_case(tmp_path, sample_text, cased_vocab):
    ours = make_shard(tmp_path, sample_text, cased_vocab, do_lower_case=False)
    assert_same_arrays(ours, reference_arrays(sample_text, cased_vocab, do_lower_case=False))
    tokenizer = tokenization.FullTokenizer(cased_vocab, do_lower_case=False, fast=False)
    cased_tokens = set(tokenizer.convert_ids_to_tokens(np.unique(unmasked_ids(ours)).tolist()))
    assert {"Text", "This", "Mr"} <= cased_tokens
    lowered = make_shard(tmp_path, sample_text, cased_vocab, name="lower.hdf5", do_lower_case=True)
    lowered_tokens = tokenizer.convert_ids_to_tokens(np.unique(unmasked_ids(lowered)).tolist())
    words = [token for token in lowered_tokens if not token.startswith("[") and token.isalpha()]
    assert words and all(word == word.lower() for word in words)


def test_lower_case_flags():
    import create_pretraining_data

    parse = create_pretraining_data.build_parser().parse_args
    required = ["--input_file", "a.txt", "--output_file", "a.hdf5", "--vocab_file", "v.txt"]
    assert parse(required).do_lower_case is True
    assert parse([*required, "--do_lower_case"]).do_lower_case is True
    assert parse([*required, "--no_lower_case"]).do_lower_case is False
    args = parse([*required, "--bert_model", "bert-base-cased", "--do_whole_word_mask"])
    assert args.do_whole_word_mask and (args.max_seq_length, args.max_predictions_per_seq) == (128, 20)
    assert (args.dupe_factor, args.masked_lm_prob, args.short_seq_prob, args.random_seed) == (10, 0.15, 0.1, 12345)


# --------------------------------------------------------------------------------------------
# Every instance is well formed, and its labels are the original tokens
# --------------------------------------------------------------------------------------------


class VocabView:
    def __init__(self, vocab_file):
        self.tokenizer = tokenization.FullTokenizer(vocab_file, fast=False)
        vocab = self.tokenizer.vocab
        self.cls, self.sep, self.mask = vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"]
        self.is_continuation = {index for token, index in vocab.items() if token.startswith("##")}


def document_bytes(text_file, vocab: VocabView) -> list[bytes]:
    """Each document's tokens as int32 bytes, tokenized independently (pure Python, line by line)."""
    documents = reference.read_documents([str(text_file)], vocab.tokenizer)
    return [np.array([i for sentence in document for i in vocab.tokenizer.convert_tokens_to_ids(sentence)],
                     dtype="<i4").tobytes() for document in documents]


def documents_containing(tokens: np.ndarray, documents: list[bytes]) -> set[int]:
    pattern = tokens.astype("<i4").tobytes()
    found = set()
    for index, haystack in enumerate(documents):
        start = haystack.find(pattern)
        while start != -1 and start % 4:
            start = haystack.find(pattern, start + 1)
        if start != -1:
            found.add(index)
    return found


def check_instances(arrays, vocab: VocabView, documents: list[bytes], max_predictions: int, masked_lm_prob: float):
    """Assert every invariant of every row; return the original (unmasked) sequences."""
    originals = []
    seq_length = arrays["input_ids"].shape[1]
    for row in range(len(arrays["input_ids"])):
        ids, mask, segments = arrays["input_ids"][row], arrays["input_mask"][row], arrays["segment_ids"][row]
        length = int(mask.sum())
        assert 5 <= length <= seq_length and mask[:length].all() and not mask[length:].any(), row
        assert not ids[length:].any() and not segments[length:].any(), f"row {row}: padding not zero"
        a_length = int((segments[:length] == 0).sum()) - 2
        assert a_length >= 1 and length - a_length - 3 >= 1, f"row {row}: empty segment"
        assert (segments[:a_length + 2] == 0).all() and (segments[a_length + 2:length] == 1).all(), row
        assert ids[0] == vocab.cls and ids[a_length + 1] == vocab.sep and ids[length - 1] == vocab.sep, row

        positions, labels = arrays["masked_lm_positions"][row], arrays["masked_lm_ids"][row]
        count = int((positions > 0).sum())
        assert not positions[count:].any() and not labels[count:].any(), f"row {row}: prediction padding"
        expected = min(max_predictions, max(1, int(round(length * masked_lm_prob))), length - 3)
        assert count == expected, f"row {row}: {count} predictions, expected {expected}"
        used = positions[:count]
        assert (np.diff(used) > 0).all(), f"row {row}: positions not ascending"
        assert ((used > 0) & (used < length - 1) & (used != a_length + 1)).all(), f"row {row}: special masked"

        original = ids[:length].copy()
        original[used] = labels[:count]
        assert not np.isin(original[1:length - 1], [vocab.cls]).any(), row
        assert (original == vocab.sep).sum() == 2, f"row {row}: original sequence needs exactly two [SEP]"
        a_docs = documents_containing(original[1:a_length + 1], documents)
        b_docs = documents_containing(original[a_length + 2:length - 1], documents)
        assert a_docs and b_docs, f"row {row}: a segment is not text of any document (labels wrong?)"
        if arrays["next_sentence_labels"][row]:
            assert any(a != b for a in a_docs for b in b_docs), f"row {row}: 'random' B from A's document"
        else:
            assert a_docs & b_docs, f"row {row}: 'not random' B from another document"
        originals.append((original, a_length, used))
    return originals


def test_every_instance_well_formed_sample_text(tmp_path, sample_text, uncased_vocab):
    arrays = make_shard(tmp_path, sample_text, uncased_vocab)
    vocab = VocabView(uncased_vocab)
    check_instances(arrays, vocab, document_bytes(sample_text, vocab), 20, 0.15)


def test_statistics_and_every_instance_on_wikipedia_sentences(tmp_path, wiki_sentences, uncased_vocab):
    arrays = make_shard(tmp_path, wiki_sentences, uncased_vocab, dupe_factor=3)
    vocab = VocabView(uncased_vocab)
    originals = check_instances(arrays, vocab, document_bytes(wiki_sentences, vocab), 20, 0.15)
    shown = np.concatenate([arrays["input_ids"][row][used] for row, (_, _, used) in enumerate(originals)])
    labels = np.concatenate([original[used] for original, _, used in originals])
    masked = (shown == vocab.mask).mean()
    kept = ((shown == labels) & (shown != vocab.mask)).mean()
    assert len(labels) > 20_000
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.015 and abs(1 - masked - kept - 0.1) < 0.015
    real = arrays["input_mask"].sum()
    assert abs(len(labels) / real - 0.15) < 0.005
    # Half of the multi-sentence chunks get a random B; single-sentence chunks always do.
    assert 0.45 < arrays["next_sentence_labels"].mean() < 0.62
    lengths = arrays["input_mask"].sum(axis=1)
    assert lengths.max() == 128 and (lengths == 128).mean() > 0.5  # most targets fill the sequence


def test_whole_word_masking_masks_all_pieces_of_a_word(tmp_path, wiki_sentences, uncased_vocab):
    vocab = VocabView(uncased_vocab)
    documents = document_bytes(wiki_sentences, vocab)

    def split_words(tmp_name, whole_words):
        arrays = make_shard(tmp_path, wiki_sentences, uncased_vocab, name=tmp_name, dupe_factor=1,
                            do_whole_word_mask=whole_words)
        broken = 0
        for original, a_length, used in check_instances(arrays, vocab, documents, 20, 0.15):
            masked = set(used.tolist())
            # A word is its first piece and the "##" pieces after it; in Google's code a "##" piece that
            # begins segment B (after truncation) joins the last word of A, across the [SEP].
            words, current = [], []
            for position in range(1, len(original) - 1):
                if position == a_length + 1:
                    continue
                if current and int(original[position]) in vocab.is_continuation:
                    current.append(position)
                else:
                    current = [position]
                    words.append(current)
            broken += sum(0 < len(masked.intersection(word)) < len(word) for word in words)
        return broken

    assert split_words("wwm.hdf5", True) == 0
    assert split_words("pieces.hdf5", False) > 0  # the check can fail: piece masking splits words


# --------------------------------------------------------------------------------------------
# File format, determinism, command line
# --------------------------------------------------------------------------------------------


def test_hdf5_layout_is_the_originals(tmp_path, sample_text, uncased_vocab):
    output = tmp_path / "layout.hdf5"
    summary = cpd.create_hdf5_from_text(sample_text, output, uncased_vocab, **SETTINGS)
    expected = {"input_ids": ("int32", 128), "input_mask": ("int8", 128), "segment_ids": ("int8", 128),
                "masked_lm_positions": ("int32", 20), "masked_lm_ids": ("int32", 20),
                "next_sentence_labels": ("int8", None)}
    with h5py.File(output, "r") as shard:
        assert sorted(shard.keys()) == sorted(expected)
        # Only the settings as file attributes (readers of the datasets, the original's among them, ignore them).
        assert sorted(shard.attrs) == sorted(["input_sha256", "vocab_sha256", "do_lower_case", "do_whole_word_mask",
                                              "max_seq_length", "max_predictions_per_seq", "masked_lm_prob",
                                              "short_seq_prob", "dupe_factor", "random_seed"])
        for key, (dtype, width) in expected.items():
            dataset = shard[key]
            assert dataset.dtype == np.dtype(dtype), key
            assert dataset.shape == ((summary.instances, width) if width else (summary.instances,)), key
            assert dataset.compression == "gzip", key
    assert [path.name for path in tmp_path.iterdir()] == ["layout.hdf5"]  # no temp file left behind


def test_deterministic_for_a_seed_and_different_for_another(tmp_path, sample_text, uncased_vocab):
    """The command line and repeated in-process calls (whose word cache is warm) give the same shard."""
    output = tmp_path / "cli.hdf5"
    result = subprocess.run(
        [sys.executable, str(ROOT / "create_pretraining_data.py"), f"--input_file={sample_text}",
         f"--output_file={output}", f"--vocab_file={uncased_vocab}", "--dupe_factor=3", "--random_seed=12345",
         "--bert_model=bert-base-uncased"],
        env=script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"wrote \d+ instances .* to " + re.escape(str(output)), result.stdout)
    with h5py.File(output, "r") as shard:
        from_cli = {key: shard[key][()] for key in shard}
    first = make_shard(tmp_path, sample_text, uncased_vocab, name="a.hdf5", dupe_factor=3)
    again = make_shard(tmp_path, sample_text, uncased_vocab, name="b.hdf5", dupe_factor=3)
    other = make_shard(tmp_path, sample_text, uncased_vocab, name="c.hdf5", dupe_factor=3, random_seed=54321)
    assert_same_arrays(from_cli, first)
    assert_same_arrays(first, again)
    assert not all(first[key].shape == other[key].shape and (first[key] == other[key]).all() for key in first)


def test_cli_bad_input_is_one_line_error_and_no_output(tmp_path, uncased_vocab):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    output = tmp_path / "out" / "empty.hdf5"
    result = subprocess.run(
        [sys.executable, str(ROOT / "create_pretraining_data.py"), f"--input_file={empty}",
         f"--output_file={output}", f"--vocab_file={uncased_vocab}"],
        env=script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert str(empty) in result.stderr and "no text" in result.stderr
    assert not output.exists()


# --------------------------------------------------------------------------------------------
# Bad or unusual input
# --------------------------------------------------------------------------------------------


def test_empty_input_raises_naming_the_file(tmp_path, uncased_vocab):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=re.escape(str(empty))):
        cpd.create_hdf5_from_text(empty, tmp_path / "out.hdf5", uncased_vocab)
    assert [path.name for path in tmp_path.iterdir()] == ["empty.txt"]


def test_missing_inputs_raise(tmp_path, uncased_vocab):
    with pytest.raises(InputError, match="no such input file"):
        cpd.create_hdf5_from_text(tmp_path / "nope.txt", tmp_path / "out.hdf5", uncased_vocab)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.md").write_text("x\n", encoding="utf-8")
    with pytest.raises(InputError, match="no .txt files"):
        cpd.create_hdf5_from_text(tmp_path / "folder", tmp_path / "out.hdf5", uncased_vocab)


def test_folder_glob_and_comma_inputs(tmp_path, sample_text):
    folder = tmp_path / "shards"
    folder.mkdir()
    for name in ("b.txt", "a.txt", "c.md"):
        (folder / name).write_text("x\n", encoding="utf-8")
    assert [p.name for p in cpd.expand_input_files(folder)] == ["a.txt", "b.txt"]
    assert [p.name for p in cpd.expand_input_files(f"{folder}/*.txt,{sample_text}")] == \
        ["a.txt", "b.txt", sample_text.name]


@pytest.mark.parametrize("flag, value", [("max_seq_length", 4), ("dupe_factor", 0), ("masked_lm_prob", 1.5),
                                         ("short_seq_prob", -0.1), ("max_predictions_per_seq", 0)])
def test_bad_option_values_raise_naming_the_flag(tmp_path, sample_text, uncased_vocab, flag, value):
    with pytest.raises(InputError, match=f"--{flag}"):
        cpd.create_hdf5_from_text(sample_text, tmp_path / "out.hdf5", uncased_vocab, **{flag: value})


def test_vocab_without_mask_token_raises_naming_the_vocab(tmp_path, sample_text, uncased_vocab):
    vocab = tmp_path / "vocab.txt"
    lines = uncased_vocab.read_text(encoding="utf-8").splitlines()
    vocab.write_text("\n".join(line if line != "[MASK]" else "[unused999]" for line in lines) + "\n",
                     encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(str(vocab)) + r".*\[MASK\]"):
        cpd.create_hdf5_from_text(sample_text, tmp_path / "out.hdf5", vocab)
    assert not (tmp_path / "out.hdf5").exists()


def test_non_utf8_text_falls_back_with_a_warning(tmp_path, uncased_vocab, capsys):
    text = tmp_path / "latin.txt"
    sentences = ["The café asked for a résumé from everyone.", "Naïve guests asked for more.",
                 "", "A second document starts here.", "It has two sentences."]
    text.write_bytes("\r\n".join(sentences).encode("cp1252"))
    arrays = make_shard(tmp_path, text, uncased_vocab, dupe_factor=2)
    assert re.search(rf"warning: {re.escape(str(text))}: not valid UTF-8 .* read as cp1252", capsys.readouterr().err)
    tokenizer = tokenization.FullTokenizer(uncased_vocab, fast=False)
    tokens = set(tokenizer.convert_ids_to_tokens(np.unique(unmasked_ids(arrays)).tolist()))
    assert {"cafe", "resume", "naive"} <= tokens  # decoded as cp1252, then accents stripped


def test_single_document_warns_and_labels_every_pair_not_random(tmp_path, uncased_vocab, capsys):
    text = tmp_path / "one_document.txt"
    text.write_text("\n".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(60)) + "\n",
                    encoding="utf-8")
    arrays = make_shard(tmp_path, text, uncased_vocab, dupe_factor=3)
    assert re.search(rf"warning: {re.escape(str(text))}: only one document", capsys.readouterr().err)
    assert len(arrays["next_sentence_labels"]) > 10 and not arrays["next_sentence_labels"].any()


def test_failed_write_leaves_no_file(tmp_path):
    arrays = {key: np.zeros((3, 8), dtype=np.int32) for key in ("input_ids", "input_mask", "segment_ids")}
    with pytest.raises(KeyError):
        cpd.write_shard(arrays, tmp_path / "broken.hdf5")  # the masked-LM arrays are missing
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Building blocks: word-cached tokenizing and the compiled random draws
# --------------------------------------------------------------------------------------------


def test_word_cached_encoder_equals_the_tokenizer_line_by_line(uncased_vocab):
    gutenberg = shared_path("corpus", "gutenberg")
    lines = []
    for name in ("austen-emma.txt", "shakespeare-caesar.txt", "whitman-leaves.txt"):
        lines += [line.strip() for line in cpd.text_lines(cpd.read_text(gutenberg / name))[:4000] if line.strip()]
    wiki = shared_path("corpus", "wikitext-2-raw", "wiki.test.raw").read_text(encoding="utf-8")
    lines += [line.strip() for line in wiki.splitlines()[:600] if line.strip()]
    lines += ["a\x0bb c\x85d e\u2028f", "tab\tseparated\u00a0nbsp\u3000ideographic", "中文字符 and Ελληνικά ΣΟΦΟΣ",
              "control\x01chars\x7f and \ufffd replacement", "naïve café Ω", "x" * 150 + " long word",
              "[MASK] [SEP] literal"]
    tokenizer = tokenization.FullTokenizer(uncased_vocab, fast=False)
    ids, lengths = cpd.WordCachedEncoder(tokenizer).encode(lines)
    expected = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(line)) for line in lines]
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [i for e in expected for i in e]


def test_compiled_draws_equal_python_random():
    assert mt19937.draws_match_python_random()
    for seed in (0, 12345, 2**40 + 3):
        rng, state = random.Random(seed), mt19937.mersenne_state(seed)
        for n in (1, 2, 50, 126, 1000):
            items = list(range(n))
            rng.shuffle(items)
            assert mt19937._shuffled_range(state, n).tolist() == items
            assert mt19937._random(state) == rng.random()
            assert mt19937._randint(state, 3, 3 + n) == rng.randint(3, 3 + n)
        assert state.tolist() == list(rng.getstate()[1])


def test_runs_uncompiled_without_numba_with_identical_output(tmp_path, sample_text, uncased_vocab):
    output = tmp_path / "uncompiled.hdf5"
    code = ("import sys; sys.modules['numba'] = None\n"
            "from data import shard_creation as cpd\n"
            "assert not cpd.COMPILED\n"
            f"cpd.create_hdf5_from_text({str(sample_text)!r}, {str(output)!r}, {str(uncased_vocab)!r}, "
            "dupe_factor=1, do_whole_word_mask=True)\n")
    result = subprocess.run([sys.executable, "-c", code], env=script_env(), capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "numba is not installed" in result.stderr
    with h5py.File(output, "r") as shard:
        ours = {key: shard[key][()] for key in shard}
    assert_same_arrays(ours, reference_arrays(sample_text, uncased_vocab, dupe_factor=1, do_whole_word_mask=True))


TRICKY_TEXT = (
    "First line of doc one.\r\nSecond\tline  with\u00a0nbsp and\u3000ideographic space.\r"
    "Lone CR ended the line before; Hamlet, (hamlet) HAMLET's \"quoted\" words.\n"
    "\u00a0\u2003 \n"  # only spaces: a blank line, so a document break
    "a\x0bb c\x85d e\u2028f whole-line keys\n"
    "\x1c\x1d\n"  # only str.isspace characters: blank too
    "中文字符 and Ελληνικά ΣΟΦΟΣ naïve café Ω \ufffd\x01\x7f \U0001f600emoji 𝔘nicode\u2003\ufeffbom\n"
    "\x01\x02\n"  # characters the tokenizer drops: neither a sentence nor a break
    + "x" * 150 + " long word and [MASK] [SEP] literal\n\n\n"
    "Last document without a final newline"
)


def naive_corpus(text: str, tokenizer) -> tuple[list[list[int]], list[int]]:
    """Sentence ids and each sentence's document number, the obvious way (what read_corpus must equal)."""
    sentences, documents, document = [], [], 0
    for line in cpd.text_lines(text):
        line = line.strip()
        if not line:
            document += 1
            continue
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(line))
        if ids:
            sentences.append(ids)
            documents.append(document)
    return sentences, documents


@pytest.mark.parametrize("block_bytes", [1 << 22, 40])
def test_byte_level_reader_equals_line_by_line_tokenizing(tmp_path, uncased_vocab, monkeypatch, block_bytes):
    """The compiled splitter (lines, str.strip, str.split, whole-line keys) and its word table, in small
    blocks and with tables that must grow many times, equal text_lines + the tokenizer line by line."""
    monkeypatch.setattr(cpd, "_LINE_BLOCK_BYTES", block_bytes)
    path = tmp_path / "tricky.txt"
    path.write_bytes((TRICKY_TEXT * 20).encode("utf-8"))
    tokenizer = tokenization.FullTokenizer(uncased_vocab, fast=False)
    encoder = cpd.WordCachedEncoder(tokenizer, initial_words=2)
    corpus = cpd.read_corpus([path], tokenizer, encoder)
    sentences, documents = naive_corpus(TRICKY_TEXT * 20, tokenizer)
    offsets = corpus.sentence_offsets
    assert [corpus.tokens[offsets[s]:offsets[s + 1]].tolist() for s in range(corpus.num_sentences)] == sentences
    firsts = corpus.document_sentences[:-1].tolist()
    assert firsts == [s for s in range(len(documents)) if s == 0 or documents[s] != documents[s - 1]]
    assert encoder.num_words < 60  # each distinct word stored once, however often it appears


def test_split_spaces_are_exactly_what_str_split_splits_at():
    assert set(cpd.SPLIT_SPACES) == {chr(cp) for cp in range(0x110000) if chr(cp).isspace()}
    assert set(cpd.WHOLE_LINE_SPACES) == set("\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029")


def test_creation_script_imports_no_torch():
    """HDF5 workers import the creation script; torch would add ~180 MB and seconds of start-up to each."""
    code = "import sys, create_pretraining_data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env=script_env(), cwd=ROOT)
