"""The engine of create_pretraining_data.py: text shards -> HDF5 shards of sentence pairs with masked-LM
targets (also run by data/bertPrep.py's HDF5 workers).

Input text has one sentence per line and a blank line between documents; a file always ends a
document. Text is read as UTF-8; a file that is not UTF-8 is read as cp1252 (or Latin-1) with a
one-line warning naming it.

Instances follow Google's algorithm with NVIDIA's rule that a "random next" partner that had to be
taken from the same document is labelled "not random". Every random draw is the one the original
makes, in the same order, from `random.Random(--random_seed)`'s Mersenne Twister (compiled in
data/mt19937.py): given the same tokens the output equals the original's, array for array
(benchmarks/reference_create_pretraining_data.py is the plain port the tests compare against). It is
faster because each distinct word is tokenized once, instance creation runs compiled (numba; the same
functions run as plain Python without it) on flat id arrays, and shards are written with threaded
compression.

The HDF5 layout is the original's: `input_ids` int32 [N, S], `input_mask` int8 [N, S], `segment_ids`
int8 [N, S], `masked_lm_positions` int32 [N, M] and `masked_lm_ids` int32 [N, M] padded with 0,
`next_sentence_labels` int8 [N] (1 = B is a random sentence), all gzip-compressed (after HDF5's
byte-shuffle filter). Chunks are whole rows, so a reader can also stream a shard in row blocks.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import glob
import hashlib
import os
import string
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, pairwise
from pathlib import Path

import numpy as np

import tokenization
from atomic_io import atomic_path

# njit is numba's, or a pass-through where numba is missing (then COMPILED is False): see data/mt19937.py
from data.mt19937 import (
    COMPILED,
    _below,
    _randint,
    _random,
    _shuffle,
    _shuffled_range,
    draws_match_python_random,
    mersenne_state,
    njit,
)
from data.shard_format import SHARD_DTYPES, predictions_per_length
from input_checks import InputError

try:  # ISA-L's deflate: valid zlib streams (any HDF5 reader decodes them) about 3x faster than zlib's
    from isal.isal_zlib import compress as deflate
except ImportError:
    from zlib import compress as deflate

REQUIRED_TOKENS = ("[CLS]", "[SEP]", "[MASK]")
_CHUNK_BYTES = 1 << 17  # target size of one HDF5 chunk (whole rows)
_GZIP_LEVEL = 1  # after byte shuffling, level 1 is both smaller and faster than the original's level 4
_WRITE_THREADS = min(4, os.cpu_count() or 1)


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
        return _decode_non_utf8(path, data, exc.start)


def read_utf8(path: Path) -> bytes:
    """The file's text as UTF-8 bytes, decoded as `read_text` does (the bytes themselves when they are UTF-8)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _decode_non_utf8(path, data, exc.start).encode("utf-8")
    return data


def _decode_non_utf8(path: Path, data: bytes, first_bad: int) -> str:
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
class Corpus:
    """Tokenized documents as flat arrays: what instance creation reads.

    Sentence s holds tokens[sentence_offsets[s]:sentence_offsets[s + 1]]; document d holds
    sentences document_sentences[d] to document_sentences[d + 1] - 1 (never none).
    """

    tokens: np.ndarray  # int32
    sentence_offsets: np.ndarray  # int64, one more than there are sentences
    document_sentences: np.ndarray  # int64, one more than there are documents

    @property
    def num_documents(self) -> int:
        return len(self.document_sentences) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1


# The characters str.split() splits words at (str.isspace). Those BERT's tokenizer does not treat as
# whitespace (it deletes them or keeps them inside a word) make their line one word, tokenized whole.
SPLIT_SPACES = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
WHOLE_LINE_SPACES = "".join(char for char in SPLIT_SPACES if not tokenization._is_whitespace(char))
_SPACE, _WHOLE_LINE_SPACE = 1, 2


def _space_kinds() -> np.ndarray:
    """Per code point below the last space's: 0 (not a space), _SPACE or _WHOLE_LINE_SPACE."""
    kinds = np.zeros(max(map(ord, SPLIT_SPACES)) + 1, dtype=np.int8)
    for char in SPLIT_SPACES:
        kinds[ord(char)] = _WHOLE_LINE_SPACE if char in WHOLE_LINE_SPACES else _SPACE
    return kinds


_SPACE_KINDS = _space_kinds()
_LINE_BLOCK_BYTES = 1 << 22  # text tokenized at a time: bounds the per-word arrays


class WordCachedEncoder:
    """Token ids of UTF-8 text lines, tokenizing each distinct word once.

    BERT's tokenizer splits text at whitespace first and everything after that (cleaning,
    lower-casing, accent stripping, punctuation and CJK splitting, WordPiece) stays inside one
    word, so a line's ids are its words' ids in order. A compiled pass splits the raw bytes into
    lines and words exactly as `text_lines`, `str.strip` and `str.split` would and finds each
    word in a hash table of known words (no Python object per word: that per-word work was most
    of the time); the ids are then gathered with numpy. New words reach the tokenizer in one call
    per block of text, reduced further (see `_cache_keys`) so that "Hamlet," and "(hamlet" cost
    one tokenizer call. The cache lives as long as the encoder: a process making many shards
    learns its words once.
    """

    def __init__(self, tokenizer: tokenization.FullTokenizer, max_words: int = 4_000_000,
                 initial_words: int = 1 << 15):
        self.tokenizer = tokenizer
        self.lower_case = bool(getattr(tokenizer, "do_lower_case", False))
        self.max_words = max_words
        self.initial_words = initial_words  # a power of 2; the tables double as they fill
        self._clear()

    def _clear(self) -> None:
        words = self.initial_words
        self._slots = np.full(2 * words, -1, dtype=np.int64)  # open addressing: word id or -1
        self._hashes = np.zeros(words, dtype=np.int64)  # per word id
        self._word_bytes = np.zeros(32 * words, dtype=np.uint8)  # every known word's UTF-8, one after another
        self._word_offsets = np.zeros(words + 1, dtype=np.int64)
        self._fill = np.zeros(2, dtype=np.int64)  # words known, bytes of _word_bytes used
        self._flat = np.zeros(0, dtype=np.int32)  # every known word's ids, one after another
        self._offsets = np.zeros(1, dtype=np.int64)  # word i holds _flat[_offsets[i]:_offsets[i + 1]]
        self._key_ids: dict[str, list[int]] = {}

    @property
    def num_words(self) -> int:
        return int(self._fill[0])

    def encode(self, lines: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids of all lines one after another as int32, number of ids per line); lines hold no line break."""
        tokens, lengths, _ = self.encode_text("\n".join(lines).encode("utf-8"))
        if len(lengths) != len(lines):
            raise ValueError("encode: a line holds a line break (\\n or \\r)")
        return tokens, lengths

    def encode_text(self, data: bytes, final: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids as int32, ids per line, whether the line holds text) for UTF-8 `data`, lines as `text_lines`
        makes them. A `final` block's text after its last line break is a line; other blocks end with one."""
        if self.num_words > self.max_words:  # bound the memory of a long-lived encoder
            self._clear()
        buffer = np.frombuffer(data, dtype=np.uint8)
        starts, ends, words_per_line = _split_words(buffer, _SPACE_KINDS, final)
        word_ids = np.empty(len(starts), dtype=np.int64)
        known, done = self.num_words, 0
        while done < len(starts):
            done = _find_or_add_words(buffer, starts, ends, done, word_ids, self._slots, self._hashes,
                                      self._word_bytes, self._word_offsets, self._fill)
            if done < len(starts):
                self._grow(int(ends[done] - starts[done]))
        self._learn(known)
        tokens, lengths = _gather_words(self._flat, self._offsets, word_ids, words_per_line)
        return tokens, lengths, words_per_line > 0

    def _grow(self, word_bytes: int) -> None:
        """Double whichever table is full (the compiled pass stops before overflowing one)."""
        words, used = int(self._fill[0]), int(self._fill[1])
        if used + word_bytes > len(self._word_bytes):
            self._word_bytes = _grown(self._word_bytes, max(2 * len(self._word_bytes), used + word_bytes))
        if words + 2 > len(self._word_offsets):
            self._word_offsets = _grown(self._word_offsets, 2 * len(self._word_offsets))
            self._hashes = _grown(self._hashes, len(self._word_offsets) - 1)
        if 2 * (words + 1) > len(self._slots):
            self._slots = np.full(2 * len(self._slots), -1, dtype=np.int64)
            _rehash(self._slots, self._hashes, words)

    def _cache_keys(self, word: str) -> tuple[str, ...]:
        """Texts whose tokens, joined, are the word's tokens.

        For an ASCII word, each ASCII punctuation character (the tokenizer splits every one off as a
        token of its own) at either end is its own key, and the rest is lower-cased when the
        tokenizer lower-cases (ASCII lower-casing needs no context). Other words are their own key.
        """
        if not word.isascii():
            return (word,)
        if word.isalnum():  # most words: no punctuation to split off
            return (word.lower() if self.lower_case else word,)
        core = word.strip(string.punctuation)
        if not core:
            return tuple(word)
        if len(core) == len(word):
            return (word.lower() if self.lower_case else word,)
        start = len(word) - len(word.lstrip(string.punctuation))
        return (*word[:start], core.lower() if self.lower_case else core, *word[start + len(core):])

    def _tokenize_keys(self, keys: list[str]) -> list[list[int]]:
        """Ids of each key. Most keys are ASCII letters and digits (lower-cased already when the tokenizer
        lower-cases): the basic tokenizer leaves such a key one word as it is, so it goes straight to
        WordPiece (a vocab hit is its own id). The other keys take the whole tokenizer."""
        vocab = self.tokenizer.vocab
        wordpiece = self.tokenizer.wordpiece_tokenizer
        long_word = wordpiece.max_input_chars_per_word
        ids: list[list[int] | None] = [None] * len(keys)
        others = []
        for index, key in enumerate(keys):
            if not (key.isascii() and key.isalnum()):
                others.append(index)
            elif len(key) <= long_word and key in vocab:
                ids[index] = [vocab[key]]
            else:
                ids[index] = [vocab[piece] for piece in wordpiece.tokenize_word(key)]
        for index, key_ids in zip(others, self.tokenizer.encode_batch_ids([keys[i] for i in others]), strict=True):
            ids[index] = key_ids
        return ids  # type: ignore[return-value]

    def _learn(self, first_new: int) -> None:
        """Tokenize the words the table took in since it knew `first_new` words (their ids follow on)."""
        count = self.num_words - first_new
        if not count:
            return
        offsets = self._word_offsets[first_new:first_new + count + 1].tolist()
        raw = self._word_bytes[offsets[0]:offsets[-1]].tobytes()
        base = offsets[0]
        new_words = [raw[start - base:end - base].decode("utf-8") for start, end in pairwise(offsets)]
        keys_per_word = [self._cache_keys(word) for word in new_words]
        key_ids = self._key_ids
        new_keys = [key for key in dict.fromkeys(chain.from_iterable(keys_per_word)) if key not in key_ids]
        if new_keys:
            key_ids.update(zip(new_keys, self._tokenize_keys(new_keys), strict=True))
        new_ids = [key_ids[keys[0]] if len(keys) == 1 else list(chain.from_iterable(map(key_ids.__getitem__, keys)))
                   for keys in keys_per_word]
        lengths = np.fromiter(map(len, new_ids), dtype=np.int64, count=len(new_ids))
        self._offsets = np.concatenate([self._offsets, self._offsets[-1] + np.cumsum(lengths)])
        new_flat = np.fromiter(chain.from_iterable(new_ids), dtype=np.int32, count=int(lengths.sum()))
        self._flat = np.concatenate([self._flat, new_flat])


@njit(cache=True)
def _split_words(buffer, space_kinds, final):
    """Word byte ranges and words per line of UTF-8 text.

    Lines end at \\n, \\r\\n or \\r (`text_lines`); words are separated by `space_kinds` code points
    (`str.split`); a line holding a _WHOLE_LINE_SPACE is one word from its first to its last
    non-space (`str.strip`). Text after the last line break is a line only in a `final` block.
    """
    size = len(buffer)
    starts = np.empty(size // 2 + 1, dtype=np.int64)
    ends = np.empty(size // 2 + 1, dtype=np.int64)
    words_per_line = np.empty(size + 1, dtype=np.int64)
    words, lines, line_first, whole_line, in_word = 0, 0, 0, False, False
    i = 0
    while i <= size:
        if i == size:
            if not final:
                break
            byte = 10  # the end of the text ends its last line
        else:
            byte = int(buffer[i])
        if byte == 10 or byte == 13:
            if in_word:
                ends[words] = i
                words += 1
                in_word = False
            if whole_line and words - line_first > 1:
                ends[line_first] = ends[words - 1]
                words = line_first + 1
            words_per_line[lines] = words - line_first
            lines += 1
            line_first, whole_line = words, False
            if byte == 13 and i + 1 < size and buffer[i + 1] == 10:
                i += 1
            i += 1
            continue
        code_point, length = _code_point(buffer, i, byte)
        kind = space_kinds[code_point] if code_point < len(space_kinds) else 0
        if kind != 0:
            if in_word:
                ends[words] = i
                words += 1
                in_word = False
            if kind == 2:  # _WHOLE_LINE_SPACE
                whole_line = True
        elif not in_word:
            starts[words] = i
            in_word = True
        i += length
    return starts[:words].copy(), ends[:words].copy(), words_per_line[:lines].copy()


@njit(cache=True)
def _code_point(buffer, i, lead):
    """(code point, bytes) of the UTF-8 sequence starting at buffer[i] with byte `lead` (valid UTF-8)."""
    if lead < 0x80:
        return lead, 1
    if lead < 0xE0:
        return ((lead & 0x1F) << 6) | (int(buffer[i + 1]) & 0x3F), 2
    if lead < 0xF0:
        return ((lead & 0x0F) << 12) | ((int(buffer[i + 1]) & 0x3F) << 6) | (int(buffer[i + 2]) & 0x3F), 3
    return (((lead & 0x07) << 18) | ((int(buffer[i + 1]) & 0x3F) << 12) | ((int(buffer[i + 2]) & 0x3F) << 6)
            | (int(buffer[i + 3]) & 0x3F)), 4


@njit(cache=True)
def _word_hash(buffer, start, end):
    """FNV-1a over the bytes, kept to 63 bits (the same with and without numba)."""
    value = 1469598103934665603
    for i in range(start, end):
        value = ((value ^ int(buffer[i])) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return value


@njit(cache=True)
def _find_or_add_words(buffer, starts, ends, first, word_ids, slots, hashes, word_bytes, word_offsets, fill):
    """Word ids of words first.. (new words get the next ids, in order of first appearance). Returns the
    index of the first word not done: len(starts), or a new word that does not fit (grow and call again)."""
    mask = len(slots) - 1
    for word in range(first, len(starts)):
        start, end = starts[word], ends[word]
        value = _word_hash(buffer, start, end)
        slot = value & mask
        found = -1
        while slots[slot] >= 0:
            candidate = slots[slot]
            if hashes[candidate] == value and _same_bytes(buffer, start, end, word_bytes, word_offsets[candidate],
                                                          word_offsets[candidate + 1]):
                found = candidate
                break
            slot = (slot + 1) & mask
        if found < 0:
            known, used = fill[0], fill[1]
            if (2 * (known + 1) > len(slots) or known + 2 > len(word_offsets)
                    or used + (end - start) > len(word_bytes)):
                return word
            word_bytes[used:used + end - start] = buffer[start:end]
            word_offsets[known + 1] = used + end - start
            hashes[known] = value
            slots[slot] = known
            fill[0], fill[1] = known + 1, used + end - start
            found = known
        word_ids[word] = found
    return len(starts)


@njit(cache=True)
def _same_bytes(buffer, start, end, word_bytes, word_start, word_end):
    if end - start != word_end - word_start:
        return False
    for offset in range(end - start):  # noqa: SIM110 (a loop numba compiles; all() over a generator it does not)
        if buffer[start + offset] != word_bytes[word_start + offset]:
            return False
    return True


@njit(cache=True)
def _rehash(slots, hashes, words):
    mask = len(slots) - 1
    for word in range(words):
        slot = hashes[word] & mask
        while slots[slot] >= 0:
            slot = (slot + 1) & mask
        slots[slot] = word


@njit(cache=True)
def _gather_words(flat, offsets, word_ids, words_per_line):
    """The ids of each word in turn (word w holds flat[offsets[w]:offsets[w + 1]]), and ids per line."""
    total = 0
    for word in word_ids:
        total += offsets[word + 1] - offsets[word]
    tokens = np.empty(total, dtype=np.int32)
    line_lengths = np.zeros(len(words_per_line), dtype=np.int64)
    position, word_index = 0, 0
    for line in range(len(words_per_line)):
        line_start = position
        for _ in range(words_per_line[line]):
            word = word_ids[word_index]
            word_index += 1
            for source in range(offsets[word], offsets[word + 1]):
                tokens[position] = flat[source]
                position += 1
        line_lengths[line] = position - line_start
    return tokens, line_lengths


def read_corpus(paths: Sequence[Path], tokenizer: tokenization.FullTokenizer,
                encoder: WordCachedEncoder | None = None) -> Corpus:
    """Tokenize the files: a sentence per line; blank lines and file ends close documents, empty ones dropped."""
    encoder = encoder or WordCachedEncoder(tokenizer)
    tokens, lengths, document_keys = [], [], []
    with _gc_paused():
        for file_index, path in enumerate(paths):
            file_tokens, file_lengths, blocks = _read_file(path, encoder)
            tokens.append(file_tokens)
            lengths.append(file_lengths)
            document_keys.append(blocks + file_index * (1 << 40))  # a file end also ends a document
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    keys = np.concatenate(document_keys) if document_keys else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(lengths_all) + 1, dtype=np.int64)
    np.cumsum(lengths_all, out=offsets[1:])
    document_starts = np.flatnonzero(np.diff(keys)) + 1
    document_sentences = np.concatenate([[0], document_starts, [len(keys)]]) if len(keys) else np.zeros(1)
    return Corpus(np.concatenate(tokens) if tokens else np.zeros(0, dtype=np.int32), offsets,
                  document_sentences.astype(np.int64))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cycle collector while millions of small objects are made: none form cycles, and its
    passes over the growing word cache would otherwise double the time spent reading."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_file(path: Path, encoder: WordCachedEncoder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, ids per sentence, document block per sentence) of one file; sentences without ids dropped."""
    data = read_utf8(path)
    token_blocks, length_blocks, text_blocks = [], [], []
    for block, final in _line_blocks(data, _LINE_BLOCK_BYTES):
        block_tokens, block_lengths, block_is_text = encoder.encode_text(block, final)
        token_blocks.append(block_tokens)
        length_blocks.append(block_lengths)
        text_blocks.append(block_is_text)
    lengths, is_text = np.concatenate(length_blocks), np.concatenate(text_blocks)
    blocks = np.cumsum(~is_text)[is_text]  # blank lines before a sentence: equal for one document's sentences
    # A line of characters the tokenizer drops is neither a sentence nor a document break.
    lengths = lengths[is_text]
    has_ids = lengths > 0
    return np.concatenate(token_blocks), lengths[has_ids], blocks[has_ids]


def _line_blocks(data: bytes, block_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """`data` in pieces of about `block_bytes` that end just after a \\n (the last piece: the rest, final)."""
    start = 0
    while len(data) - start > block_bytes:
        end = data.find(b"\n", start + block_bytes) + 1
        if end == 0:
            break
        yield data[start:end], False
        start = end
    yield data[start:], True


# --------------------------------------------------------------------------------------------
# Instance creation (Google's create_instances_from_document and create_masked_lm_predictions)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabIds:
    """The ids the algorithm needs from the vocab."""

    cls: int
    sep: int
    mask: int
    random_words: np.ndarray  # id of each vocab entry in file order: the original draws random words from it
    is_continuation: np.ndarray  # per id: the piece starts with "##" (whole-word masking)

    @classmethod
    def from_tokenizer(cls, tokenizer: tokenization.FullTokenizer, vocab_file: str | os.PathLike) -> VocabIds:
        vocab = tokenizer.vocab
        missing = [token for token in REQUIRED_TOKENS if token not in vocab]
        if missing:
            raise InputError(f"{vocab_file}: vocab has no {', '.join(missing)} token (needed for pretraining data)")
        is_continuation = np.zeros(max(vocab.values()) + 1, dtype=np.bool_)
        for token, index in vocab.items():
            is_continuation[index] = token.startswith("##")
        random_words = np.fromiter(vocab.values(), dtype=np.int32, count=len(vocab))
        return cls(vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"], random_words, is_continuation)


class InstanceBuffers:
    """Growable flat arrays the compiled loop writes instances into; `to_arrays` pads them into the shard layout."""

    def __init__(self, max_seq_length: int, max_predictions: int):
        self.max_seq_length = max_seq_length
        self.max_predictions = max_predictions
        self.fill = np.zeros(3, dtype=np.int64)  # instances, tokens, predictions written
        self.tokens = np.empty(0, dtype=np.int32)
        self.positions = np.empty(0, dtype=np.int32)
        self.labels = np.empty(0, dtype=np.int32)
        self.lengths = np.empty(0, dtype=np.int32)
        self.a_lengths = np.empty(0, dtype=np.int32)
        self.num_predictions = np.empty(0, dtype=np.int32)
        self.random_next = np.empty(0, dtype=np.int8)

    def reserve(self, instances: int) -> None:
        """Room for `instances` more instances of full length with full predictions."""
        self.tokens = _grown(self.tokens, self.fill[1] + instances * self.max_seq_length)
        self.positions = _grown(self.positions, self.fill[2] + instances * self.max_predictions)
        self.labels = _grown(self.labels, self.fill[2] + instances * self.max_predictions)
        for name in ("lengths", "a_lengths", "num_predictions", "random_next"):
            setattr(self, name, _grown(getattr(self, name), self.fill[0] + instances))

    def to_arrays(self, order: np.ndarray) -> dict[str, np.ndarray]:
        """The six shard arrays with rows in `order` (row i is the instance made order[i]-th)."""
        count = len(order)
        arrays = {
            "input_ids": np.zeros((count, self.max_seq_length), dtype=np.int32),
            "input_mask": np.zeros((count, self.max_seq_length), dtype=np.int8),
            "segment_ids": np.zeros((count, self.max_seq_length), dtype=np.int8),
            "masked_lm_positions": np.zeros((count, self.max_predictions), dtype=np.int32),
            "masked_lm_ids": np.zeros((count, self.max_predictions), dtype=np.int32),
            "next_sentence_labels": np.zeros(count, dtype=np.int8),
        }
        _fill_rows(order, self.tokens, self.lengths, self.a_lengths, self.positions, self.labels,
                   self.num_predictions, self.random_next, *arrays.values())
        return arrays


@njit(cache=True)
def _fill_rows(order, tokens, lengths, a_lengths, positions, labels, counts, random_next,
               input_ids, input_mask, segment_ids, masked_lm_positions, masked_lm_ids, next_sentence_labels):
    """Pad instance k into row r where order[r] = k; everything not written stays 0."""
    token_starts = np.zeros(len(order) + 1, dtype=np.int64)
    prediction_starts = np.zeros(len(order) + 1, dtype=np.int64)
    for k in range(len(order)):
        token_starts[k + 1] = token_starts[k] + lengths[k]
        prediction_starts[k + 1] = prediction_starts[k] + counts[k]
    for row in range(len(order)):
        k = order[row]
        length, start = lengths[k], token_starts[k]
        input_ids[row, :length] = tokens[start:start + length]
        input_mask[row, :length] = 1
        segment_ids[row, a_lengths[k] + 2:length] = 1
        count, first = counts[k], prediction_starts[k]
        masked_lm_positions[row, :count] = positions[first:first + count]
        masked_lm_ids[row, :count] = labels[first:first + count]
        next_sentence_labels[row] = random_next[k]


def _grown(buffer: np.ndarray, needed: int) -> np.ndarray:
    if needed <= len(buffer):
        return buffer
    grown = np.empty(max(int(needed), 2 * len(buffer)), dtype=buffer.dtype)
    grown[:len(buffer)] = buffer
    return grown


@njit(cache=True)
def _truncate_pair(state, a_lo, a_hi, b_lo, b_hi, max_num_tokens):
    """Drop one token at a time from the longer side (B on a tie), front or back with equal chance."""
    while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
        if a_hi - a_lo > b_hi - b_lo:
            if _random(state) < 0.5:
                a_lo += 1
            else:
                a_hi -= 1
        elif _random(state) < 0.5:
            b_lo += 1
        else:
            b_hi -= 1
    return a_lo, a_hi, b_lo, b_hi


@njit(cache=True)
def _choose_pieces(state, length, a_length, num_to_predict, chosen):
    """Shuffle all non-special positions; the first num_to_predict are masked. Returns how many."""
    count = 0
    for position in range(1, length - 1):
        if position != a_length + 1:
            chosen[count] = position
            count += 1
    _shuffle(state, chosen, count)
    return min(count, num_to_predict)


@njit(cache=True)
def _choose_words(state, sequence, length, a_length, num_to_predict, is_continuation, members, starts, order, chosen):
    """Google's whole-word masking: shuffle words ("##" pieces join the word before, as in the original,
    even across the middle [SEP]) and take whole words while they fit in num_to_predict."""
    num_words = 0
    count = 0
    for position in range(1, length - 1):
        if position == a_length + 1:
            continue
        if num_words == 0 or not is_continuation[sequence[position]]:
            starts[num_words] = count
            num_words += 1
        members[count] = position
        count += 1
    starts[num_words] = count
    for word in range(num_words):
        order[word] = word
    _shuffle(state, order, num_words)
    taken = 0
    for index in range(num_words):
        if taken >= num_to_predict:
            break
        word = order[index]
        size = starts[word + 1] - starts[word]
        if taken + size <= num_to_predict:
            for member in range(starts[word], starts[word + 1]):
                chosen[taken] = members[member]
                taken += 1
    return taken


@njit(cache=True)
def _mask(state, sequence, length, a_length, num_to_predict, whole_words, is_continuation, mask_id, random_words,
          scratch, positions_out, labels_out):
    """Choose and replace the masked positions of one instance; writes sorted positions and original ids."""
    chosen = scratch[0]
    if whole_words:
        count = _choose_words(state, sequence, length, a_length, num_to_predict, is_continuation,
                              scratch[1], scratch[2], scratch[3], chosen)
    else:
        count = _choose_pieces(state, length, a_length, num_to_predict, chosen)
    for index in range(count):  # insertion sort: at most max_predictions_per_seq positions
        position = chosen[index]
        slot = index
        while slot > 0 and positions_out[slot - 1] > position:
            positions_out[slot] = positions_out[slot - 1]
            slot -= 1
        positions_out[slot] = position
    for index in range(count):
        labels_out[index] = sequence[positions_out[index]]
    # 80% [MASK], 10% unchanged, 10% a random vocab entry; draws in the order positions were chosen.
    for index in range(count):
        position = chosen[index]
        if _random(state) < 0.8:
            sequence[position] = mask_id
        elif _random(state) >= 0.5:
            sequence[position] = random_words[_below(state, len(random_words))]
    return count


@njit(cache=True)
def _document_instances(state, document, corpus, vocab, options, scratch, out, fill):
    """All instances of one document (position `document` in the shuffled document list)."""
    tokens, sentence_offsets, document_sentences, document_order = corpus
    cls_id, sep_id, mask_id, random_words, is_continuation = vocab
    max_seq_length, short_seq_prob, num_to_predict, whole_words = options
    out_tokens, out_lengths, out_a_lengths, out_positions, out_labels, out_counts, out_random_next = out
    num_documents = len(document_order)
    first = document_sentences[document_order[document]]
    num_sentences = document_sentences[document_order[document] + 1] - first
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if _random(state) < short_seq_prob:
        target_seq_length = _randint(state, 2, max_num_tokens)

    chunk_start = 0
    i = 0
    while i < num_sentences:
        if i == num_sentences - 1 or (sentence_offsets[first + i + 1] - sentence_offsets[first + chunk_start]
                                      >= target_seq_length):
            chunk_sentences = i - chunk_start + 1
            a_end = 1 if chunk_sentences < 2 else _randint(state, 1, chunk_sentences - 1)
            a_lo = sentence_offsets[first + chunk_start]
            a_hi = sentence_offsets[first + chunk_start + a_end]
            if chunk_sentences == 1 or _random(state) < 0.5:
                # B from a random document: whole sentences from a random start until it is long enough.
                target_b_length = target_seq_length - (a_hi - a_lo)
                other = 0
                for _ in range(10):
                    other = _randint(state, 0, num_documents - 1)
                    if other != document:
                        break
                random_next = other != document  # NVIDIA: a partner from the document itself is not random
                other_first = document_sentences[document_order[other]]
                other_sentences = document_sentences[document_order[other] + 1] - other_first
                sentence = _randint(state, 0, other_sentences - 1)
                b_lo = sentence_offsets[other_first + sentence]
                b_hi = sentence_offsets[other_first + sentence + 1]
                while b_hi - b_lo < target_b_length and sentence < other_sentences - 1:
                    sentence += 1
                    b_hi = sentence_offsets[other_first + sentence + 1]
                i -= chunk_sentences - a_end  # the unused sentences of the chunk are "put back"
            else:
                random_next = False
                b_lo, b_hi = a_hi, sentence_offsets[first + i + 1]
            a_lo, a_hi, b_lo, b_hi = _truncate_pair(state, a_lo, a_hi, b_lo, b_hi, max_num_tokens)

            row, start, predictions = fill[0], fill[1], fill[2]
            a_length, length = a_hi - a_lo, (a_hi - a_lo) + (b_hi - b_lo) + 3
            sequence = out_tokens[start:start + length]
            sequence[0] = cls_id
            sequence[1:a_length + 1] = tokens[a_lo:a_hi]
            sequence[a_length + 1] = sep_id
            sequence[a_length + 2:length - 1] = tokens[b_lo:b_hi]
            sequence[length - 1] = sep_id
            count = _mask(state, sequence, length, a_length, num_to_predict[length], whole_words, is_continuation,
                          mask_id, random_words, scratch, out_positions[predictions:], out_labels[predictions:])
            out_lengths[row] = length
            out_a_lengths[row] = a_length
            out_counts[row] = count
            out_random_next[row] = random_next
            fill[0], fill[1], fill[2] = row + 1, start + length, predictions + count
            chunk_start = i + 1
        i += 1


@njit(cache=True)
def _documents_instances(state, first_document, last_document, corpus, vocab, options, out, fill):
    max_seq_length = options[0]
    scratch = np.zeros((4, max_seq_length + 1), dtype=np.int64)
    for document in range(first_document, last_document):
        _document_instances(state, document, corpus, vocab, options, scratch, out, fill)


def create_instance_arrays(corpus: Corpus, vocab: VocabIds, options: InstanceOptions,
                           random_seed: int) -> dict[str, np.ndarray]:
    """Shuffle documents, make `dupe_factor` passes of instances, shuffle them: the six shard arrays."""
    options.validate()
    if not COMPILED:
        print("warning: numba is not installed; instance creation runs uncompiled, many times slower "
              "(pip install numba)", file=sys.stderr)
    if not draws_match_python_random():
        print("warning: this Python's random module draws differently from the one the port follows; "
              "shards are still valid but differ from the original's for the same seed", file=sys.stderr)
    state = mersenne_state(random_seed)
    document_order = _shuffled_range(state, corpus.num_documents)
    sentences_per_document = np.diff(corpus.document_sentences)[document_order]
    corpus_arrays = (corpus.tokens, corpus.sentence_offsets, corpus.document_sentences, document_order)
    vocab_arrays = (vocab.cls, vocab.sep, vocab.mask, vocab.random_words, vocab.is_continuation)
    options_tuple = (options.max_seq_length, options.short_seq_prob, _num_to_predict_table(options),
                     options.do_whole_word_mask)
    buffers = InstanceBuffers(options.max_seq_length, options.max_predictions_per_seq)
    for _ in range(options.dupe_factor):
        for first, last in _document_batches(sentences_per_document):
            # An instance uses at least one sentence of its document: this bounds what a batch can write.
            buffers.reserve(int(sentences_per_document[first:last].sum()))
            out = (buffers.tokens, buffers.lengths, buffers.a_lengths, buffers.positions, buffers.labels,
                   buffers.num_predictions, buffers.random_next)
            _documents_instances(state, first, last, corpus_arrays, vocab_arrays, options_tuple, out, buffers.fill)
    order = _shuffled_range(state, int(buffers.fill[0]))
    return buffers.to_arrays(order)


def _num_to_predict_table(options: InstanceOptions) -> np.ndarray:
    return predictions_per_length(options.max_seq_length, options.max_predictions_per_seq, options.masked_lm_prob)


def _document_batches(sentences_per_document: np.ndarray, sentences_per_batch: int = 50_000):
    """Ranges of documents to hand the compiled loop at once, so buffers grow in steps of bounded size."""
    first, running = 0, 0
    for index, count in enumerate(sentences_per_document.tolist()):
        running += count
        if running >= sentences_per_batch:
            yield first, index + 1
            first, running = index + 1, 0
    if first < len(sentences_per_document):
        yield first, len(sentences_per_document)


# --------------------------------------------------------------------------------------------
# HDF5 output
# --------------------------------------------------------------------------------------------


def _chunk_rows(array_: np.ndarray) -> int:
    return max(1, min(len(array_), _CHUNK_BYTES // max(1, array_[:1].nbytes)))


def write_shard(arrays: dict[str, np.ndarray], output_file: str | os.PathLike,
                settings: dict[str, str | int | float | bool] | None = None) -> None:
    """Write the six gzip datasets (and `settings` as file attributes) to a temp file beside `output_file`,
    then rename it into place.

    Datasets use HDF5's byte-shuffle filter before gzip (level 1): about 10% smaller than the
    original's plain level-4 gzip and twice as fast to write; every HDF5 reader, the original's
    loader included, decodes it transparently. Chunks (whole rows) are filtered on a few threads
    (deflate releases the GIL; ISA-L's when installed) and stored with direct chunk writes, what
    HDF5's own filters would store up to the deflate encoder's choices (the decoded arrays are the same).
    """
    import h5py

    with atomic_path(output_file) as tmp, h5py.File(tmp, "w") as shard, ThreadPoolExecutor(_WRITE_THREADS) as pool:
        shard.attrs.update(settings or {})  # readers that look only at the datasets (the original's) ignore them
        for key, dtype in SHARD_DTYPES.items():
            data = np.ascontiguousarray(arrays[key], dtype=dtype)
            rows = _chunk_rows(data)
            dataset = shard.create_dataset(key, shape=data.shape, dtype=dtype, chunks=(rows, *data.shape[1:]),
                                           shuffle=True, compression="gzip", compression_opts=_GZIP_LEVEL)
            starts = range(0, len(data), rows)
            chunks = pool.map(functools.partial(_filtered_chunk, data, rows=rows), starts)
            for start, stored in zip(starts, chunks, strict=True):
                dataset.id.write_direct_chunk((start,) + (0,) * (data.ndim - 1), stored)


def _filtered_chunk(data: np.ndarray, first: int, rows: int) -> bytes:
    """Rows [first, first + rows) through the shuffle and deflate filters (the last chunk zero-padded to full
    size, as HDF5 stores it)."""
    chunk = data[first:first + rows]
    if len(chunk) < rows:
        chunk = np.concatenate([chunk, np.zeros((rows - len(chunk), *data.shape[1:]), dtype=data.dtype)])
    shuffled = chunk.reshape(-1).view(np.uint8).reshape(-1, data.itemsize).T  # byte j of every value together
    return deflate(shuffled.tobytes(), _GZIP_LEVEL)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_settings(input_files: Sequence[Path], vocab_file: str | os.PathLike, do_lower_case: bool,
                   options: InstanceOptions, random_seed: int) -> dict[str, str | int | float | bool]:
    """Everything a shard's contents depend on, stored as its HDF5 attributes: a rerun can tell whether a
    shard on disk is the one it would make."""
    return {
        "input_sha256": ",".join(file_sha256(path) for path in input_files),
        "vocab_sha256": file_sha256(vocab_file),
        "do_lower_case": bool(do_lower_case),
        "do_whole_word_mask": bool(options.do_whole_word_mask),
        "max_seq_length": int(options.max_seq_length),
        "max_predictions_per_seq": int(options.max_predictions_per_seq),
        "masked_lm_prob": float(options.masked_lm_prob),
        "short_seq_prob": float(options.short_seq_prob),
        "dupe_factor": int(options.dupe_factor),
        "random_seed": int(random_seed),
    }


def check_shard_settings(path: str | os.PathLike, expected: dict[str, str | int | float | bool]) -> None:
    """Raise InputError naming the shard and the first setting it was made with that differs from `expected`."""
    import h5py

    try:
        with h5py.File(path, "r") as shard:
            recorded = {key: shard.attrs[key] for key in expected if key in shard.attrs}
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc}); delete it to remake it") from None
    for key, value in expected.items():
        if key not in recorded:
            raise InputError(f"{path}: records no '{key}' setting (made by another tool or version); "
                             "delete it to remake it")
        have = recorded[key].item() if hasattr(recorded[key], "item") else recorded[key]
        if have != value:
            raise InputError(f"{path}: made with {key}={have!r}, this run asks for {key}={value!r}; "
                             "use another output folder or delete the shard")


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def load_tokenizer(vocab_file: str, do_lower_case: bool) -> tokenization.FullTokenizer:
    """One tokenizer per (vocab, case) and process: a pool worker making many shards builds it once.

    It tokenizes only distinct words (see WordCachedEncoder); on single words the pure-Python path
    measured faster than a `tokenizers` batch call (whose per-text overhead dominates), and both
    give identical ids.
    """
    return tokenization.FullTokenizer(vocab_file, do_lower_case=do_lower_case, fast=False)


@functools.lru_cache(maxsize=4)
def load_encoder(vocab_file: str, do_lower_case: bool) -> WordCachedEncoder:
    """The process's word cache for this tokenizer: later shards reuse the words earlier ones learned."""
    return WordCachedEncoder(load_tokenizer(vocab_file, do_lower_case))


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
    if tokenizer is None:
        tokenizer = load_tokenizer(str(vocab_file), do_lower_case)
        encoder = load_encoder(str(vocab_file), do_lower_case)
    else:
        encoder = WordCachedEncoder(tokenizer)
    vocab = VocabIds.from_tokenizer(tokenizer, vocab_file)
    corpus = read_corpus(paths, tokenizer, encoder)
    described = ", ".join(str(path) for path in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    if corpus.num_documents == 0:
        raise InputError(f"{described}: no text to make instances from (empty or only blank lines)")
    if corpus.num_documents == 1:
        print(f"warning: {described}: only one document (no blank line between documents), so no pair can "
              "have a random next sentence: every next_sentence_label is 0", file=sys.stderr)
    arrays = create_instance_arrays(corpus, vocab, options, random_seed)
    write_shard(arrays, output_file, shard_settings(paths, vocab_file, do_lower_case, options, random_seed))
    return ShardSummary(
        output_file=str(output_file),
        instances=len(arrays["next_sentence_labels"]),
        documents=corpus.num_documents,
        sentences=corpus.num_sentences,
        tokens=len(corpus.tokens),
        seconds=time.perf_counter() - started,
    )
