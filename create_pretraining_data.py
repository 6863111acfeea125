"""Create BERT pretraining data: text shards -> HDF5 shards of sentence pairs with masked-LM targets.

Input text has one sentence per line and a blank line between documents; a file always ends a
document. Text is read as UTF-8; a file that is not UTF-8 is read as cp1252 (or Latin-1) with a
one-line warning naming it.

Instances follow Google's algorithm with NVIDIA's rule that a "random next" partner that had to be
taken from the same document is labelled "not random". Every random draw is made in the original's
order on the same `random.Random(--random_seed)`, so given the same tokens the output equals the
original's. It is faster because tokenizing runs batched on the `tokenizers` library (identical
tokens, see tokenization.py), instances are built as id lists with index arithmetic instead of
token strings, and the six arrays are assembled with numpy in one go.

The HDF5 layout is the original's: `input_ids` int32 [N, S], `input_mask` int8 [N, S], `segment_ids`
int8 [N, S], `masked_lm_positions` int32 [N, M] and `masked_lm_ids` int32 [N, M] padded with 0,
`next_sentence_labels` int8 [N] (1 = B is a random sentence), all gzip-compressed. Chunks are whole
rows, so a reader can also stream a shard in row blocks.

    python create_pretraining_data.py --input_file shard.txt --output_file shard.hdf5 \\
        --vocab_file vocab/vocab.txt --max_seq_length 128 --max_predictions_per_seq 20
"""
from __future__ import annotations

import argparse
import bisect
import functools
import glob
import os
import random
import re
import sys
import time
from array import array
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import chain
from multiprocessing import get_context
from pathlib import Path

import numpy as np

import tokenization
from utils import InputError, atomic_path, run_main

# Dataset name -> stored dtype, in the original's order. Shapes: [N, S] for the first three,
# [N, M] for the two masked-LM arrays, [N] for the labels.
SHARD_DTYPES: dict[str, type[np.integer]] = {
    "input_ids": np.int32,
    "input_mask": np.int8,
    "segment_ids": np.int8,
    "masked_lm_positions": np.int32,
    "masked_lm_ids": np.int32,
    "next_sentence_labels": np.int8,
}
SEQUENCE_KEYS = ("input_ids", "input_mask", "segment_ids")
PREDICTION_KEYS = ("masked_lm_positions", "masked_lm_ids")
REQUIRED_TOKENS = ("[CLS]", "[SEP]", "[MASK]")
_TOKENIZE_BLOCK = 20_000  # lines per batch call: keeps the Rust encodings of one block in memory at a time
_CHUNK_BYTES = 1 << 17  # target size of one HDF5 chunk (whole rows)


@dataclass(frozen=True)
class InstanceOptions:
    """The knobs of instance creation, with the original's defaults."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 10
    do_whole_word_mask: bool = False

    def validate(self) -> None:
        if self.max_seq_length < 5:
            raise InputError(f"--max_seq_length must be at least 5 ([CLS] A [SEP] B [SEP]), got {self.max_seq_length}")
        if self.max_predictions_per_seq < 1:
            raise InputError(f"--max_predictions_per_seq must be at least 1, got {self.max_predictions_per_seq}")
        if self.dupe_factor < 1:
            raise InputError(f"--dupe_factor must be at least 1, got {self.dupe_factor}")
        for flag, value in (("--masked_lm_prob", self.masked_lm_prob), ("--short_seq_prob", self.short_seq_prob)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{flag} must be between 0 and 1, got {value}")


@dataclass
class ShardSummary:
    """What one call produced (returned by `create_hdf5_from_text`, printed by the script)."""

    output_file: str
    instances: int
    documents: int
    sentences: int
    tokens: int
    seconds: float


# --------------------------------------------------------------------------------------------
# Reading text
# --------------------------------------------------------------------------------------------


def expand_input_files(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by a path, a folder (its *.txt files), a glob, or a comma-separated list of those."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    parts = [part.strip() for item in items for part in str(item).split(",") if part.strip()]
    files: list[Path] = []
    for part in parts:
        path = Path(part)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            txt_files = sorted(child for child in path.iterdir() if child.is_file() and child.suffix == ".txt")
            if not txt_files:
                raise InputError(f"{path}: folder has no .txt files")
            files.extend(txt_files)
        elif glob.has_magic(part) and (matches := sorted(glob.glob(part))):
            files.extend(Path(match) for match in matches if Path(match).is_file())
        else:
            raise InputError(f"{part}: no such input file or folder")
    if not files:
        raise InputError(f"--input_file {spec!s}: names no files")
    return files


def read_text(path: Path) -> str:
    """The file's text: UTF-8, else cp1252 (else Latin-1) with a one-line warning naming the file."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    for encoding in ("cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        print(f"warning: {path}: not valid UTF-8 (byte 0x{data[first_bad]:02x} at offset {first_bad}); "
              f"read as {encoding}", file=sys.stderr)
        return text
    raise AssertionError("latin-1 decodes any bytes")


def text_lines(text: str) -> list[str]:
    """Lines split the way a text-mode file reads them: at \\n, \\r\\n and \\r only (not str.splitlines)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


@dataclass
class Document:
    """One document's sentences as a flat id list plus sentence start offsets (last offset = length)."""

    ids: list[int]
    offsets: list[int]

    @property
    def num_sentences(self) -> int:
        return len(self.offsets) - 1


# Characters that str.split() treats as whitespace but BERT's tokenizer does not (it deletes them or
# keeps them inside a word); a line holding one is tokenized whole instead of word by word.
_NOT_BERT_WHITESPACE = re.compile("[\x0b\x0c\x1c-\x1f\x85\u2028\u2029]")


class WordCachedEncoder:
    """Token ids of text lines, tokenizing each distinct whitespace-separated word once.

    BERT's tokenizer splits text at whitespace first and everything after that (cleaning,
    lower-casing, accent stripping, punctuation and CJK splitting, WordPiece) stays inside one
    word, so a line's ids are its words' ids in order. Text repeats words heavily, so the tokenizer
    (its batch path) only sees the distinct new words: several times faster than tokenizing lines.
    """

    def __init__(self, tokenizer: tokenization.FullTokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        words_per_line = [None if _NOT_BERT_WHITESPACE.search(line) else line.split() for line in lines]
        self._learn(words_per_line)
        whole_lines = [line for line, words in zip(lines, words_per_line) if words is None]
        whole_ids = iter(self.tokenizer.encode_batch_ids(whole_lines) if whole_lines else [])
        lookup = self.cache.__getitem__
        return [next(whole_ids) if words is None else list(chain.from_iterable(map(lookup, words)))
                for words in words_per_line]

    def _learn(self, words_per_line: list[list[str] | None]) -> None:
        cache = self.cache
        new_words = list({word for words in words_per_line if words for word in words if word not in cache})
        if new_words:
            cache.update(zip(new_words, self.tokenizer.encode_batch_ids(new_words)))


def read_documents(paths: Sequence[Path], tokenizer: tokenization.FullTokenizer) -> list[Document]:
    """Tokenized documents of all files; blank lines split documents and empty documents are dropped."""
    encoder = WordCachedEncoder(tokenizer)
    documents: list[Document] = []
    for path in paths:
        documents.extend(_file_documents(path, encoder))
    return documents


def _file_documents(path: Path, encoder: WordCachedEncoder) -> list[Document]:
    lines = [line.strip() for line in text_lines(read_text(path))]
    sentences = [line for line in lines if line]
    sentence_ids: list[list[int]] = []
    for start in range(0, len(sentences), _TOKENIZE_BLOCK):
        sentence_ids.extend(encoder.encode(sentences[start:start + _TOKENIZE_BLOCK]))
    documents: list[Document] = []
    current = Document([], [0])
    next_sentence = iter(sentence_ids)
    for line in lines:
        if not line:
            if current.num_sentences:
                documents.append(current)
            current = Document([], [0])
            continue
        ids = next(next_sentence)
        if ids:  # a line of characters the tokenizer drops is neither a sentence nor a break
            current.ids.extend(ids)
            current.offsets.append(len(current.ids))
    if current.num_sentences:
        documents.append(current)
    return documents


# --------------------------------------------------------------------------------------------
# The random draws, made exactly as `random.Random` makes them
# --------------------------------------------------------------------------------------------


class RandomDraws:
    """`random()`, `randint()` and `shuffle()` of a `random.Random`, with identical results and state.

    CPython builds randint and shuffle in Python on `getrandbits` (one call per draw, repeated while
    the bits fall outside the range). Restating that here without randrange's argument checks makes
    the draws several times cheaper; `stdlib_equivalent()` verifies the equivalence on this
    interpreter, and when it does not hold the generator's own methods are used instead.
    """

    def __init__(self, rng: random.Random):
        self.random = rng.random
        self._getrandbits = rng.getrandbits
        if not stdlib_equivalent():
            self.randint = rng.randint  # type: ignore[method-assign]
            self.shuffle = rng.shuffle  # type: ignore[method-assign]

    def below(self, n: int) -> int:
        """Uniform integer in [0, n), as `Random._randbelow_with_getrandbits`."""
        getrandbits = self._getrandbits
        bits = n.bit_length()
        value = getrandbits(bits)
        while value >= n:
            value = getrandbits(bits)
        return value

    def randint(self, low: int, high: int) -> int:
        return low + self.below(high - low + 1)

    def shuffle(self, items: list) -> None:
        getrandbits = self._getrandbits
        for i in range(len(items) - 1, 0, -1):
            n = i + 1
            bits = n.bit_length()
            j = getrandbits(bits)
            while j >= n:
                j = getrandbits(bits)
            items[i], items[j] = items[j], items[i]


@functools.cache
def stdlib_equivalent() -> bool:
    """True when RandomDraws reproduces `random.Random`'s randint/shuffle draws and state on this Python."""
    ours, theirs = random.Random(2024), random.Random(2024)
    draws = RandomDraws.__new__(RandomDraws)
    draws.random, draws._getrandbits = ours.random, ours.getrandbits
    for n in (0, 1, 2, 3, 7, 64, 65, 125, 509, 1000):
        mine, stdlib = list(range(n)), list(range(n))
        RandomDraws.shuffle(draws, mine)
        theirs.shuffle(stdlib)
        if mine != stdlib:
            return False
        for low, high in ((0, 0), (1, n + 1), (2, 3 * n + 2), (0, 30521)):
            if RandomDraws.randint(draws, low, high) != theirs.randint(low, high):
                return False
    return ours.getstate() == theirs.getstate()


# --------------------------------------------------------------------------------------------
# Instance creation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabIds:
    """The ids the algorithm needs from the vocab."""

    cls: int
    sep: int
    mask: int
    random_words: list[int]  # id of each vocab entry in file order: the original draws random words from it
    is_continuation: list[bool]  # per id: the piece starts with "##" (whole-word masking)

    @classmethod
    def from_tokenizer(cls, tokenizer: tokenization.FullTokenizer, vocab_file: str | os.PathLike) -> VocabIds:
        vocab = tokenizer.vocab
        missing = [token for token in REQUIRED_TOKENS if token not in vocab]
        if missing:
            raise InputError(f"{vocab_file}: vocab has no {', '.join(missing)} token (needed for pretraining data)")
        is_continuation = [False] * (max(vocab.values()) + 1)
        for token, index in vocab.items():
            is_continuation[index] = token.startswith("##")
        return cls(vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"], list(vocab.values()), is_continuation)


class InstanceBuffers:
    """Instances packed into flat arrays as they are made; `to_arrays` pads them into the shard layout."""

    def __init__(self) -> None:
        self.tokens = array("i")
        self.lengths = array("i")
        self.a_lengths = array("i")
        self.positions = array("i")
        self.labels = array("i")
        self.num_predictions = array("i")
        self.random_next = array("b")

    def __len__(self) -> int:
        return len(self.lengths)

    def add(self, tokens: list[int], a_length: int, positions: list[int], labels: list[int], random_next: bool):
        self.tokens.extend(tokens)
        self.lengths.append(len(tokens))
        self.a_lengths.append(a_length)
        self.positions.extend(positions)
        self.labels.extend(labels)
        self.num_predictions.append(len(positions))
        self.random_next.append(random_next)

    def to_arrays(self, order: Sequence[int], max_seq_length: int, max_predictions: int) -> dict[str, np.ndarray]:
        """The six shard arrays with rows in `order` (row i is the instance made order[i]-th)."""
        lengths = np.frombuffer(self.lengths, dtype=np.int32)
        counts = np.frombuffer(self.num_predictions, dtype=np.int32)
        columns = np.arange(max_seq_length, dtype=np.int32)
        real = columns < lengths[:, None]
        input_ids = np.zeros(real.shape, dtype=np.int32)
        input_ids[real] = np.frombuffer(self.tokens, dtype=np.int32)
        second_segment = columns >= np.frombuffer(self.a_lengths, dtype=np.int32)[:, None] + 2
        predicted = np.arange(max_predictions, dtype=np.int32) < counts[:, None]
        positions = np.zeros(predicted.shape, dtype=np.int32)
        positions[predicted] = np.frombuffer(self.positions, dtype=np.int32)
        labels = np.zeros(predicted.shape, dtype=np.int32)
        labels[predicted] = np.frombuffer(self.labels, dtype=np.int32)
        rows = np.asarray(order, dtype=np.int64)
        arrays = {
            "input_ids": input_ids,
            "input_mask": real.astype(np.int8),
            "segment_ids": (second_segment & real).astype(np.int8),
            "masked_lm_positions": positions,
            "masked_lm_ids": labels,
            "next_sentence_labels": np.frombuffer(self.random_next, dtype=np.int8),
        }
        return {key: np.ascontiguousarray(value[rows]) for key, value in arrays.items()}


class InstanceMaker:
    """Google's create_instances_from_document and create_masked_lm_predictions over id lists."""

    def __init__(self, documents: list[Document], vocab: VocabIds, options: InstanceOptions, draws: RandomDraws):
        self.documents = documents
        self.vocab = vocab
        self.options = options
        self.draws = draws
        self.buffers = InstanceBuffers()
        self._mask = self._mask_whole_words if options.do_whole_word_mask else self._mask_pieces

    def add_document(self, document_index: int) -> None:
        """All instances of one document (one pass of the dupe loop)."""
        draws, documents = self.draws, self.documents
        document = documents[document_index]
        ids, offsets = document.ids, document.offsets
        num_sentences = document.num_sentences
        max_num_tokens = self.options.max_seq_length - 3
        target_seq_length = max_num_tokens
        if draws.random() < self.options.short_seq_prob:
            target_seq_length = draws.randint(2, max_num_tokens)

        chunk_start = 0
        i = 0
        while i < num_sentences:
            if i == num_sentences - 1 or offsets[i + 1] - offsets[chunk_start] >= target_seq_length:
                chunk_sentences = i - chunk_start + 1
                a_end = 1 if chunk_sentences < 2 else draws.randint(1, chunk_sentences - 1)
                a_lo, a_hi = offsets[chunk_start], offsets[chunk_start + a_end]
                if chunk_sentences == 1 or draws.random() < 0.5:
                    random_next, b_ids, b_lo, b_hi = self._random_partner(document_index, target_seq_length - (a_hi - a_lo))
                    i -= chunk_sentences - a_end  # the unused sentences of the chunk are "put back"
                else:
                    random_next, b_ids, b_lo, b_hi = False, ids, a_hi, offsets[i + 1]
                a_lo, a_hi, b_lo, b_hi = self._truncate_pair(a_lo, a_hi, b_lo, b_hi, max_num_tokens)
                tokens = [self.vocab.cls]
                tokens += ids[a_lo:a_hi]
                tokens.append(self.vocab.sep)
                tokens += b_ids[b_lo:b_hi]
                tokens.append(self.vocab.sep)
                positions, labels = self._mask(tokens, a_hi - a_lo)
                self.buffers.add(tokens, a_hi - a_lo, positions, labels, random_next)
                chunk_start = i + 1
            i += 1

    def _random_partner(self, document_index: int, target_b_length: int) -> tuple[bool, list[int], int, int]:
        """B from a random document: whole sentences from a random start until target_b_length is reached."""
        draws = self.draws
        last_document = len(self.documents) - 1
        for _ in range(10):
            random_index = draws.randint(0, last_document)
            if random_index != document_index:
                break
        other = self.documents[random_index]
        start = draws.randint(0, other.num_sentences - 1)
        offsets = other.offsets
        b_lo = offsets[start]
        end = bisect.bisect_left(offsets, b_lo + target_b_length, start + 1)
        b_hi = offsets[min(end, len(offsets) - 1)]
        # NVIDIA's rule: a partner from the document itself is not a random next sentence.
        return random_index != document_index, other.ids, b_lo, b_hi

    def _truncate_pair(self, a_lo: int, a_hi: int, b_lo: int, b_hi: int, max_num_tokens: int):
        """Drop one token at a time from the longer side, front or back with equal chance."""
        draws_random = self.draws.random
        while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
            if a_hi - a_lo > b_hi - b_lo:
                if draws_random() < 0.5:
                    a_lo += 1
                else:
                    a_hi -= 1
            elif draws_random() < 0.5:
                b_lo += 1
            else:
                b_hi -= 1
        return a_lo, a_hi, b_lo, b_hi

    def _num_to_predict(self, num_tokens: int) -> int:
        return min(self.options.max_predictions_per_seq, max(1, int(round(num_tokens * self.options.masked_lm_prob))))

    def _mask_pieces(self, tokens: list[int], a_length: int) -> tuple[list[int], list[int]]:
        """Mask single WordPieces in place; returns (positions ascending, original ids at them)."""
        candidates = list(range(1, a_length + 1))
        candidates += range(a_length + 2, len(tokens) - 1)
        self.draws.shuffle(candidates)
        chosen = candidates[:self._num_to_predict(len(tokens))]
        positions = sorted(chosen)
        labels = [tokens[position] for position in positions]
        self._replace(tokens, chosen)
        return positions, labels

    def _mask_whole_words(self, tokens: list[int], a_length: int) -> tuple[list[int], list[int]]:
        """Google's whole-word masking: a word's "##" pieces are chosen together with it."""
        is_continuation = self.vocab.is_continuation
        words: list[list[int]] = []
        for position in (*range(1, a_length + 1), *range(a_length + 2, len(tokens) - 1)):
            if words and is_continuation[tokens[position]]:
                words[-1].append(position)
            else:
                words.append([position])
        self.draws.shuffle(words)
        num_to_predict = self._num_to_predict(len(tokens))
        chosen: list[int] = []
        for word in words:
            if len(chosen) >= num_to_predict:
                break
            if len(chosen) + len(word) <= num_to_predict:
                chosen += word
        positions = sorted(chosen)
        labels = [tokens[position] for position in positions]
        self._replace(tokens, chosen)
        return positions, labels

    def _replace(self, tokens: list[int], chosen: list[int]) -> None:
        """80% [MASK], 10% unchanged, 10% a random vocab entry; draws in the order positions were chosen."""
        draws_random, below = self.draws.random, self.draws.below
        mask_id, random_words = self.vocab.mask, self.vocab.random_words
        for position in chosen:
            if draws_random() < 0.8:
                tokens[position] = mask_id
            elif draws_random() >= 0.5:
                tokens[position] = random_words[below(len(random_words))]


def create_instance_arrays(
    documents: list[Document], vocab: VocabIds, options: InstanceOptions, random_seed: int
) -> dict[str, np.ndarray]:
    """Shuffle documents, make `dupe_factor` passes of instances, shuffle them: the six shard arrays."""
    options.validate()
    draws = RandomDraws(random.Random(random_seed))
    documents = list(documents)
    draws.shuffle(documents)
    maker = InstanceMaker(documents, vocab, options, draws)
    for _ in range(options.dupe_factor):
        for document_index in range(len(documents)):
            maker.add_document(document_index)
    order = list(range(len(maker.buffers)))
    draws.shuffle(order)
    return maker.buffers.to_arrays(order, options.max_seq_length, options.max_predictions_per_seq)


# --------------------------------------------------------------------------------------------
# HDF5 output
# --------------------------------------------------------------------------------------------


def _row_chunks(array_: np.ndarray) -> tuple[int, ...]:
    row_bytes = max(1, array_[:1].nbytes)
    rows = max(1, min(len(array_), _CHUNK_BYTES // row_bytes))
    return (rows, *array_.shape[1:])


def write_shard(arrays: dict[str, np.ndarray], output_file: str | os.PathLike) -> None:
    """Write the six datasets (gzip) to a temp file beside `output_file`, then rename it into place."""
    import h5py

    with atomic_path(output_file) as tmp, h5py.File(tmp, "w") as shard:
        for key, dtype in SHARD_DTYPES.items():
            data = np.asarray(arrays[key], dtype=dtype)
            shard.create_dataset(key, data=data, compression="gzip", chunks=_row_chunks(data))


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def load_tokenizer(vocab_file: str, do_lower_case: bool) -> tokenization.FullTokenizer:
    """One tokenizer per (vocab, case) and process: a pool worker making many shards builds it once."""
    return tokenization.FullTokenizer(vocab_file, do_lower_case=do_lower_case)


def create_hdf5_from_text(
    input_files: str | os.PathLike | Sequence[str | os.PathLike],
    output_file: str | os.PathLike,
    vocab_file: str | os.PathLike,
    do_lower_case: bool = True,
    max_seq_length: int = 128,
    max_predictions_per_seq: int = 20,
    masked_lm_prob: float = 0.15,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 10,
    random_seed: int = 12345,
    do_whole_word_mask: bool = False,
    tokenizer: tokenization.FullTokenizer | None = None,
) -> ShardSummary:
    """Make one HDF5 shard from text; what `--input_file ... --output_file ...` does. Raises InputError."""
    started = time.perf_counter()
    options = InstanceOptions(max_seq_length, max_predictions_per_seq, masked_lm_prob, short_seq_prob,
                              dupe_factor, do_whole_word_mask)
    options.validate()
    paths = expand_input_files(input_files)
    tokenizer = tokenizer or load_tokenizer(str(vocab_file), do_lower_case)
    vocab = VocabIds.from_tokenizer(tokenizer, vocab_file)
    documents = read_documents(paths, tokenizer)
    described = ", ".join(str(path) for path in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    if not documents:
        raise InputError(f"{described}: no text to make instances from (empty or only blank lines)")
    if len(documents) == 1:
        print(f"warning: {described}: only one document (no blank line between documents), so no pair can "
              "have a random next sentence: every next_sentence_label is 0", file=sys.stderr)
    arrays = create_instance_arrays(documents, vocab, options, random_seed)
    write_shard(arrays, output_file)
    return ShardSummary(
        output_file=str(output_file),
        instances=len(arrays["next_sentence_labels"]),
        documents=len(documents),
        sentences=sum(document.num_sentences for document in documents),
        tokens=sum(len(document.ids) for document in documents),
        seconds=time.perf_counter() - started,
    )


def _pool_worker_init() -> None:
    # Each worker is one of many processes already; the Rust tokenizer's own threads would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _create_from_job(job: dict) -> ShardSummary:
    return create_hdf5_from_text(**job)


def create_hdf5_files_parallel(jobs: Sequence[dict], num_workers: int | None = None) -> list[ShardSummary]:
    """Run `create_hdf5_from_text(**job)` for every job on a process pool (one shard per task)."""
    num_workers = max(1, min(num_workers or os.cpu_count() or 1, len(jobs)))
    if num_workers == 1:
        return [_create_from_job(job) for job in jobs]
    with ProcessPoolExecutor(num_workers, mp_context=get_context("spawn"), initializer=_pool_worker_init) as pool:
        return list(pool.map(_create_from_job, jobs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Create BERT pretraining instances (HDF5) from text.")
    parser.add_argument("--vocab_file", required=True, help="WordPiece vocab the model will train on")
    parser.add_argument("--input_file", required=True,
                        help="a text file, a folder of .txt files, a glob, or a comma-separated list of those")
    parser.add_argument("--output_file", required=True, help="HDF5 file to write")
    parser.add_argument("--bert_model", default="bert-large-uncased", help="accepted for compatibility; unused")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--dupe_factor", type=int, default=10,
                        help="passes over the text, each with different pairs and masks")
    parser.add_argument("--max_predictions_per_seq", type=int, default=20)
    parser.add_argument("--masked_lm_prob", type=float, default=0.15)
    parser.add_argument("--short_seq_prob", type=float, default=0.1,
                        help="probability of a shorter target length for an instance")
    parser.add_argument("--do_lower_case", dest="do_lower_case", action="store_true", default=True,
                        help="lower-case and strip accents (the default, as in the original)")
    parser.add_argument("--no_lower_case", dest="do_lower_case", action="store_false",
                        help="keep case and accents (cased vocabs)")
    parser.add_argument("--random_seed", type=int, default=12345)
    parser.add_argument("--do_whole_word_mask", action="store_true",
                        help="mask all WordPieces of a word together (Google's whole-word masking)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    options = {key: value for key, value in vars(args).items() if key != "bert_model"}
    summary = create_hdf5_from_text(input_files=options.pop("input_file"), **options)
    print("wrote {instances} instances ({documents} documents, {sentences} sentences, {tokens} tokens) "
          "to {output_file} in {seconds:.1f} s".format(**asdict(summary)))


if __name__ == "__main__":
    run_main(main)
