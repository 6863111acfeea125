"""WordPiece tokenization with the original BERT behaviour, plus a fast path that gives identical output.

The reference path (`BasicTokenizer` + `WordpieceTokenizer`) follows Google's released algorithm:
control characters, NUL and U+FFFD are dropped, \\t \\n \\r and Unicode Zs are whitespace, CJK
ideographs become words of their own, lower-casing is followed by NFD and removal of non-spacing
marks (only when lower-casing), punctuation (Unicode P* and every non-alphanumeric ASCII symbol)
splits words, and WordPiece is greedy longest-match-first with "##" continuations. A word longer
than `max_input_chars_per_word` (100, as in the original PyTorch code) becomes "[UNK]". Text that
happens to contain "[MASK]" or "[SEP]" is tokenized like any other text: user text can never
inject a special token.

The fast path runs the same pipeline in the Rust `tokenizers` library. Where the two could differ,
it does not guess. They disagree on some characters: code points Python's Unicode tables leave
unassigned (Python drops them, Rust keeps them), about 800 marks and punctuation signs of various
scripts whose Unicode properties differ between the two libraries' table versions, and capital sigma, which
Python lower-cases to "ς" at the end of a word. So each distinct character is checked once against
the reference (ASCII up front), and a text holding one that behaves differently is tokenized by the
reference path instead. Output is identical either way; on English text nearly every line goes fast.
"""
from __future__ import annotations

import collections
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from input_checks import InputError

UNK_TOKEN = "[UNK]"
MAX_INPUT_CHARS_PER_WORD = 100
_CAPITAL_SIGMA = "\u03a3"  # Python lower-cases it by context (σ or word-final ς); Rust maps it one char at a time.

# --------------------------------------------------------------------------------------------
# Helpers with the names Google's module uses
# --------------------------------------------------------------------------------------------


def convert_to_unicode(text: str | bytes) -> str:
    """Text as `str`; bytes are read as UTF-8 and undecodable bytes dropped (the original's choice)."""
    if isinstance(text, str):
        return text
    if isinstance(text, bytes):
        return text.decode("utf-8", "ignore")
    raise TypeError(f"unsupported string type: {type(text).__name__}")


def printable_text(text: str | bytes) -> str:
    """Text suitable for print() or logging; on Python 3 that is simply `str`."""
    return convert_to_unicode(text)


def whitespace_tokenize(text: str) -> list[str]:
    """Split on runs of whitespace, dropping empty pieces."""
    return text.split()


def load_vocab(vocab_file: str | Path) -> collections.OrderedDict[str, int]:
    """Read a WordPiece vocab (one token per line; the line number is the id) into token -> id.

    Raises InputError naming the file when it is missing, not UTF-8 or empty.
    """
    path = Path(vocab_file)
    if not path.is_file():
        raise InputError(f"vocab file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: vocab file is not UTF-8 text (byte {exc.start})") from None
    # Google strips each line; a later duplicate overrides the earlier id, as in the original.
    vocab: collections.OrderedDict[str, int] = collections.OrderedDict()
    for index, line in enumerate(lines):
        vocab[line.strip()] = index
    if not vocab:
        raise InputError(f"{path}: vocab file is empty")
    return vocab


def convert_by_vocab(vocab: dict[Any, Any], items: Iterable[Any]) -> list[Any]:
    """Map each item through `vocab` (tokens -> ids or ids -> tokens); unknown items raise KeyError."""
    return [vocab[item] for item in items]


# --------------------------------------------------------------------------------------------
# Character classes (the original's definitions)
# --------------------------------------------------------------------------------------------


def _is_whitespace(char: str) -> bool:
    # \t \n \r are control characters by category, but text uses them as spaces.
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    # Every non-alphanumeric ASCII symbol counts, "$", "^", "`" included although Unicode files them as S*.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_chinese_char(cp: int) -> bool:
    """CJK Unified Ideographs (and extensions, compatibility ideographs); not Hangul, kana or CJK punctuation."""
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _cleaned_char(char: str) -> str:
    """What the cleaning pass turns one character into: dropped, a space, itself, or itself set apart (CJK)."""
    cp = ord(char)
    if cp == 0 or cp == 0xFFFD or _is_control(char):
        return ""
    if _is_whitespace(char):
        return " "
    if _is_chinese_char(cp):
        return f" {char} "
    return char


class _CharMemo(dict):
    """Per-character results computed on first sight; text reuses few distinct characters."""

    def __init__(self, compute: Callable[[str], Any]):
        super().__init__()
        self._compute = compute

    def __missing__(self, char: str):
        value = self[char] = self._compute(char)
        return value


_CLEANED = _CharMemo(_cleaned_char)
_PUNCTUATION = _CharMemo(_is_punctuation)


# --------------------------------------------------------------------------------------------
# Reference path
# --------------------------------------------------------------------------------------------


class BasicTokenizer:
    """Cleaning, CJK separation, optional lower-casing with accent stripping, punctuation splitting."""

    def __init__(self, do_lower_case: bool = True):
        self.do_lower_case = do_lower_case

    def tokenize(self, text: str | bytes) -> list[str]:
        text = "".join(map(_CLEANED.__getitem__, convert_to_unicode(text)))
        words: list[str] = []
        for word in whitespace_tokenize(text):
            if self.do_lower_case:
                word = _strip_accents(word.lower())
            words.extend(_split_on_punctuation(word))
        return words


def _strip_accents(word: str) -> str:
    if word.isascii():
        return word
    return "".join(char for char in unicodedata.normalize("NFD", word) if unicodedata.category(char) != "Mn")


def _split_on_punctuation(word: str) -> list[str]:
    """Each punctuation character becomes a word; the runs between them stay whole."""
    if word.isascii() and word.isalnum():
        return [word]
    pieces: list[str] = []
    run_start = 0
    for index, char in enumerate(word):
        if _PUNCTUATION[char]:
            if index > run_start:
                pieces.append(word[run_start:index])
            pieces.append(char)
            run_start = index + 1
    if run_start < len(word):
        pieces.append(word[run_start:])
    return pieces


class WordpieceTokenizer:
    """Greedy longest-match-first WordPiece over words that BasicTokenizer produced."""

    def __init__(
        self,
        vocab: dict[str, int],
        unk_token: str = UNK_TOKEN,
        max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
    ):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word

    def tokenize(self, text: str) -> list[str]:
        pieces: list[str] = []
        for word in whitespace_tokenize(text):
            pieces.extend(self.tokenize_word(word))
        return pieces

    def tokenize_word(self, word: str) -> list[str]:
        """Pieces of one word, or [unk_token] when the word is too long or some part matches nothing."""
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        if word in self.vocab:
            return [word]
        pieces: list[str] = []
        start = 0
        while start < len(word):
            end = self._longest_match_end(word, start)
            if end is None:
                return [self.unk_token]
            pieces.append(("##" if start else "") + word[start:end])
            start = end
        return pieces

    def _longest_match_end(self, word: str, start: int) -> int | None:
        """End of the longest vocab piece starting at `start` ("##"-prefixed after the first piece)."""
        prefix = "##" if start else ""
        for end in range(len(word), start, -1):
            if prefix + word[start:end] in self.vocab:
                return end
        return None


# --------------------------------------------------------------------------------------------
# Fast path
# --------------------------------------------------------------------------------------------


def tokenizers_available() -> bool:
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


class _RustWordPiece:
    """The same pipeline on `tokenizers`, with a per-character guard that sends risky texts to the reference.

    No special tokens are registered with the Rust tokenizer, so "[MASK]" in text is split like
    other text (tokenizers would otherwise keep registered special tokens whole).
    """

    # Contexts each new character is tried in, so that splitting, dropping, case and accents all show.
    _PROBES = ("{}", "a{}b", "A{}B", "\u00c9{}\u00e9", "{}{}", "1 {} 2")

    def __init__(self, vocab: dict[str, int], do_lower_case: bool, unk_token: str, max_input_chars_per_word: int):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        model = models.WordPiece(
            vocab=dict(vocab),
            unk_token=unk_token,
            continuing_subword_prefix="##",
            max_input_chars_per_word=max_input_chars_per_word,
        )
        self._tokenizer = Tokenizer(model)
        self._tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=do_lower_case, lowercase=do_lower_case
        )
        self._tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._reference = BasicTokenizer(do_lower_case)
        self._do_lower_case = do_lower_case
        self._agreeing_chars: set[str] = set()
        self._disagreeing_chars: set[str] = set()
        self._learn_chars(chr(cp) for cp in range(128))
        self._ascii_agrees = not self._disagreeing_chars

    # ---- the guard -----------------------------------------------------------------------

    def agrees_on(self, text: str) -> bool:
        """True when the Rust pipeline is known to tokenize `text` exactly like the reference."""
        if text.isascii() and self._ascii_agrees:
            return True
        if self._do_lower_case and _CAPITAL_SIGMA in text:
            return False
        chars = set(text)
        unseen = chars - self._agreeing_chars - self._disagreeing_chars
        if unseen:
            self._learn_chars(unseen)
        return chars.isdisjoint(self._disagreeing_chars)

    def _learn_chars(self, chars: Iterable[str]) -> None:
        for char in chars:
            agrees = self._char_agrees(char)
            (self._agreeing_chars if agrees else self._disagreeing_chars).add(char)

    def _char_agrees(self, char: str) -> bool:
        if self._do_lower_case and _reorders_under_nfd(char):
            return False
        if "\ud800" <= char <= "\udfff":  # a lone surrogate cannot even cross into Rust (not UTF-8 encodable)
            return False
        for probe in self._PROBES:
            text = probe.format(char, char)
            if self.words(text) != self._reference.tokenize(text):
                return False
        return True

    def words(self, text: str) -> list[str]:
        """The words the Rust normalizer and pre-tokenizer make of `text` (what BasicTokenizer returns)."""
        normalized = self._tokenizer.normalizer.normalize_str(text)
        return [word for word, _ in self._tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]

    # ---- encoding ------------------------------------------------------------------------

    def encode(self, text: str) -> tuple[list[str], list[int]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return encoding.tokens, encoding.ids

    def encode_batch(self, texts: list[str]) -> list[tuple[list[str], list[int]]]:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [(encoding.tokens, encoding.ids) for encoding in encodings]


def _reorders_under_nfd(char: str) -> bool:
    """True when NFD of the lower-cased char holds a combining mark that survives accent stripping.

    NFD also sorts runs of combining marks by class, across neighbouring characters, which a
    one-character probe cannot show. Marks that accent stripping removes (Mn) cannot make that
    visible; the few kept marks with a class (some Mc) send their texts to the reference.
    """
    return any(
        unicodedata.combining(part) and unicodedata.category(part) != "Mn"
        for part in unicodedata.normalize("NFD", char.lower())
    )


# --------------------------------------------------------------------------------------------
# Public tokenizer
# --------------------------------------------------------------------------------------------


class FullTokenizer:
    """End-to-end tokenization: BasicTokenizer then WordPiece, optionally run by `tokenizers`.

    fast=None uses the Rust path when `tokenizers` is importable, fast=True requires it,
    fast=False uses the pure-Python reference. Both give identical tokens and ids.
    """

    def __init__(
        self,
        vocab_file: str | Path,
        do_lower_case: bool = True,
        fast: bool | None = None,
        max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD,
    ):
        self.vocab = load_vocab(vocab_file)
        if UNK_TOKEN not in self.vocab:
            raise InputError(f"{vocab_file}: vocab has no {UNK_TOKEN} token")
        self.inv_vocab = {index: token for token, index in self.vocab.items()}
        self.do_lower_case = do_lower_case
        self.basic_tokenizer = BasicTokenizer(do_lower_case=do_lower_case)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab, UNK_TOKEN, max_input_chars_per_word)
        if fast is None:
            fast = tokenizers_available()
        if fast and not tokenizers_available():
            raise ImportError("FullTokenizer(fast=True) needs the `tokenizers` package (pip install tokenizers)")
        self._rust = (
            _RustWordPiece(self.vocab, do_lower_case, UNK_TOKEN, max_input_chars_per_word) if fast else None
        )

    @property
    def is_fast(self) -> bool:
        return self._rust is not None

    def uses_fast_path(self, text: str) -> bool:
        """Whether `text` goes through `tokenizers` (False: the reference path tokenizes it)."""
        return self._rust is not None and self._rust.agrees_on(text)

    def tokenize(self, text: str | bytes) -> list[str]:
        text = convert_to_unicode(text)
        if self.uses_fast_path(text):
            return self._rust.encode(text)[0]  # type: ignore[union-attr]
        return self._reference_tokens(text)

    def tokenize_batch(self, texts: Sequence[str | bytes]) -> list[list[str]]:
        return [tokens for tokens, _ in self._encode_batch(texts)]

    def encode_batch_ids(self, texts: Sequence[str | bytes]) -> list[list[int]]:
        return [ids for _, ids in self._encode_batch(texts)]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> list[int]:
        return convert_by_vocab(self.vocab, tokens)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return convert_by_vocab(self.inv_vocab, ids)

    def _reference_tokens(self, text: str) -> list[str]:
        pieces: list[str] = []
        for word in self.basic_tokenizer.tokenize(text):
            pieces.extend(self.wordpiece_tokenizer.tokenize_word(word))
        return pieces

    def _reference_encoding(self, text: str) -> tuple[list[str], list[int]]:
        tokens = self._reference_tokens(text)
        return tokens, self.convert_tokens_to_ids(tokens)

    def _encode_batch(self, texts: Sequence[str | bytes]) -> list[tuple[list[str], list[int]]]:
        """(tokens, ids) per text; texts the Rust path agrees on go through one parallel batch call."""
        texts = [convert_to_unicode(text) for text in texts]
        if self._rust is None:
            return [self._reference_encoding(text) for text in texts]
        goes_fast = [self._rust.agrees_on(text) for text in texts]
        fast_texts = [text for text, fast in zip(texts, goes_fast, strict=True) if fast]
        fast_results = iter(self._rust.encode_batch(fast_texts))
        return [
            next(fast_results) if fast else self._reference_encoding(text)
            for text, fast in zip(texts, goes_fast, strict=True)
        ]
