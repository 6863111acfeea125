"""tokenization.py: parity with an independent implementation on real text, fast == reference, known answers.

The independent implementation is `transformers`' pure-Python `BertTokenizerLegacy` (Google's
algorithm re-written by Hugging Face). It differs from the original in two ways that the
comparison accounts for, and that are pinned by known-answer tests below:
  * it keeps literal special-token text ("[MASK]", "[SEP]", ...) whole; the original splits it,
    so lines containing such text are left out of that comparison (none of the shared files has any);
  * it NFC-composes the text before splitting; the original does not (with the cased vocab, an
    accent written as a separate combining mark gives a different result), so both tokenizers
    are given NFC text.
Its word-length limit is 100 characters, the original's; `test_hf_legacy_word_length_limit` checks it.
"""
from __future__ import annotations

import functools
import json
import os
import unicodedata

import pytest

from input_checks import InputError
from tests.conftest import shared_path
from tokenization import (
    BasicTokenizer,
    FullTokenizer,
    WordpieceTokenizer,
    convert_to_unicode,
    load_vocab,
    whitespace_tokenize,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

VOCABS = {"uncased": ("bert-base-uncased-vocab.txt", True), "cased": ("bert-base-cased-vocab.txt", False)}
SPECIAL_TOKENS = ("[MASK]", "[CLS]", "[SEP]", "[UNK]", "[PAD]")

EDGE_CASES = [
    "Café naïve résumé",
    "CAFÉ Naïve RÉSUMÉ",
    "cafe\u0301 decomposed accent",
    "中文字 and 日本語のテキスト, 한국어",
    "ah\u535a\u63a8zz",
    "nul\x00byte bell\x07char zero\u200bwidth replacement\ufffdchar",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeed \u2028line\u2029para",
    "non\u00a0breaking\u3000ideographic space",
    "x" * 100,
    "x" * 101,
    "y" * 150,
    "antidisestablishmentarianism" * 4 + "ism",
    "[MASK]",
    "[CLS] x [SEP]",
    "the [MASK] sat on the [MASK].",
    "emoji 😀👍🏽 and 🫨 (newer than Python's Unicode tables)",
    "ΟΔΟΣ ΣΟΦΙΑΣ Σ ΑΣ. σοφός",
    "İstanbul ǅemal ﬁnance Straße",
    "unassigned \u0378 code point",
    "",
    "   \t\n  ",
    "\x00\x01\x02",
    "Price: $5.00 (approx.) — 50% off! «quoted» ¿qué?",
    "Hanunoo \u1734 Arabic \u0890 mark",
]


def _read_text(path) -> str:
    """UTF-8, or Latin-1 for the one Gutenberg book stored that way."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _squad_texts(path) -> list[str]:
    texts = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        texts.append(article["title"])
        for paragraph in article["paragraphs"]:
            texts.append(paragraph["context"])
            for qa in paragraph["qas"]:
                texts.append(qa["question"])
                texts.extend(answer["text"] for answer in qa.get("answers", []))
    return texts


@functools.lru_cache(maxsize=1)
def _real_lines() -> tuple[str, ...]:
    """Every line of the shared real texts (SQuAD fields, whole GLUE tsv rows, corpora), ~245k lines."""
    lines: list[str] = []
    for rel in ("v1.1/train-v1.1.first11articles.json", "v1.1/dev-v1.1.first4articles.json",
                "v2.0/dev-v2.0.first5articles.json"):
        lines.extend(_squad_texts(shared_path("squad", *rel.split("/"))))
    for task, splits in {"MRPC": ("train", "dev", "test"), "SST-2": ("train", "dev", "test"),
                         "CoLA": ("train", "test"), "STS-B": ("train", "dev", "test")}.items():
        for split in splits:
            lines.extend(_read_text(shared_path("glue", task, f"{split}.tsv")).splitlines())
    lines.extend(_read_text(shared_path("corpus", "bert_sample_text.txt")).splitlines())
    lines.extend(_read_text(shared_path("corpus", "wikitext-2-raw", "wiki.test.raw")).splitlines())
    for book in sorted(shared_path("corpus", "gutenberg").glob("*.txt")):
        lines.extend(_read_text(book).splitlines())
    return tuple(lines)


def _lines_with_special_text(lines: tuple[str, ...]) -> list[str]:
    """Real lines with a word replaced by literal special-token text, as masked or packed text would show it."""
    out = []
    for index, line in enumerate(lines[::40]):
        words = line.split()
        if len(words) >= 3:
            words[1] = SPECIAL_TOKENS[index % len(SPECIAL_TOKENS)]
            out.append(" ".join(words) + " [SEP]")
    return out


@functools.lru_cache(maxsize=2)
def _tokenizers(case: str) -> tuple[FullTokenizer, FullTokenizer]:
    name, lower = VOCABS[case]
    vocab = shared_path("vocab", name)
    return FullTokenizer(vocab, do_lower_case=lower, fast=False), FullTokenizer(vocab, do_lower_case=lower, fast=True)


@functools.lru_cache(maxsize=2)
def _reference_tokens(case: str) -> tuple[list[str], ...]:
    slow, _ = _tokenizers(case)
    return tuple(slow.tokenize(line) for line in _real_lines())


def _first_difference(texts, got, expected) -> str:
    for text, a, b in zip(texts, got, expected, strict=True):
        if a != b:
            return f"{text[:120]!r}: {a[:30]} != {b[:30]}"
    return ""


# --------------------------------------------------------------------------------------------
# 1. Parity with transformers' BertTokenizerLegacy on real text
# --------------------------------------------------------------------------------------------


def _hf_legacy(case: str):
    transformers = pytest.importorskip("transformers")
    name, lower = VOCABS[case]
    return transformers.BertTokenizerLegacy(
        str(shared_path("vocab", name)), do_lower_case=lower, tokenize_chinese_chars=True
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(VOCABS))
def test_reference_path_matches_hf_legacy_on_all_real_lines(case):
    """Every line of SQuAD, GLUE, WikiText-2 test, 13 Gutenberg books and the CJK/Bengali sample (~15M chars)."""
    hf = _hf_legacy(case)
    slow, _ = _tokenizers(case)
    lines = [unicodedata.normalize("NFC", line) for line in _real_lines()
             if not any(special in line for special in SPECIAL_TOKENS)]
    assert len(lines) > 200_000
    assert sum(not line.isascii() for line in lines) > 2_000, "the real text should exercise non-ASCII input"
    expected = [hf.tokenize(line) for line in lines]
    got = [slow.tokenize(line) for line in lines]
    assert got == expected, _first_difference(lines, got, expected)
    flat_tokens = [token for tokens in got for token in tokens]
    assert slow.convert_tokens_to_ids(flat_tokens) == hf.convert_tokens_to_ids(flat_tokens)
    assert sum(token.startswith("##") for token in flat_tokens) > 10_000, "WordPiece splitting must be exercised"


@pytest.mark.parametrize("case", sorted(VOCABS))
def test_reference_path_matches_hf_legacy_on_edge_cases(case):
    hf = _hf_legacy(case)
    slow, _ = _tokenizers(case)
    for text in EDGE_CASES:
        if any(special in text for special in SPECIAL_TOKENS):
            continue
        nfc = unicodedata.normalize("NFC", text)
        assert slow.tokenize(nfc) == hf.tokenize(nfc), repr(text)


def test_hf_legacy_word_length_limit():
    """Both cut at 100 characters (Google's TF code allows 200; the PyTorch original uses 100)."""
    hf = _hf_legacy("uncased")
    slow, _ = _tokenizers("uncased")
    assert hf.wordpiece_tokenizer.max_input_chars_per_word == 100
    for length in (100, 101, 150, 200, 201):
        word = "ab" * (length // 2) + "a" * (length % 2)
        assert slow.tokenize(word) == hf.tokenize(word), length
        assert (slow.tokenize(word) == ["[UNK]"]) == (length > 100), length


# --------------------------------------------------------------------------------------------
# 2. Fast path == reference path
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(VOCABS))
def test_fast_path_matches_reference_on_all_real_lines(case):
    slow, fast = _tokenizers(case)
    assert fast.is_fast and not slow.is_fast
    lines = list(_real_lines())
    expected = list(_reference_tokens(case))
    assert fast.tokenize_batch(lines) == expected, _first_difference(lines, fast.tokenize_batch(lines), expected)
    # ids and the one-text call on deterministic thirds of the lines, to keep the test near 20 s.
    assert fast.encode_batch_ids(lines[1::3]) == [slow.convert_tokens_to_ids(tokens) for tokens in expected[1::3]]
    assert [fast.tokenize(line) for line in lines[2::3]] == expected[2::3]
    # The guard must leave almost everything to Rust, or this test would only compare the reference with itself.
    assert sum(fast.uses_fast_path(line) for line in lines) > 0.99 * len(lines)


@pytest.mark.parametrize("case", sorted(VOCABS))
def test_fast_path_splits_special_token_text_like_the_reference(case):
    slow, fast = _tokenizers(case)
    lines = _lines_with_special_text(_real_lines()) + [text for text in EDGE_CASES if "[" in text]
    assert len(lines) > 5_000
    expected = [slow.tokenize(line) for line in lines]
    assert fast.tokenize_batch(lines) == expected
    assert fast.encode_batch_ids(lines) == [slow.convert_tokens_to_ids(tokens) for tokens in expected]
    assert not {"[MASK]", "[CLS]", "[SEP]", "[PAD]"} & {token for tokens in expected for token in tokens}
    tokens = fast.tokenize("[CLS] x [SEP]")
    assert tokens[0] == "[" and tokens[-1] == "]" and "x" in tokens


@pytest.mark.parametrize("case", sorted(VOCABS))
def test_fast_path_matches_reference_on_edge_cases(case):
    slow, fast = _tokenizers(case)
    expected = [slow.tokenize(text) for text in EDGE_CASES]
    assert [fast.tokenize(text) for text in EDGE_CASES] == expected
    assert fast.tokenize_batch(EDGE_CASES) == expected
    assert fast.encode_batch_ids(EDGE_CASES) == [slow.convert_tokens_to_ids(tokens) for tokens in expected]


@pytest.mark.parametrize("case", sorted(VOCABS))
def test_guard_catches_characters_where_raw_tokenizers_differs(case):
    """Without the per-character guard these would differ: Python's final sigma, Unicode table vintages."""
    slow, fast = _tokenizers(case)
    rust = fast._rust
    risky = ["a\U0001fae8b", "a\u0378b", "a\u0890b", "a\u2e5db"]
    if case == "uncased":
        risky += ["a\u1734b", "ΟΔΟΣ"]
    for text in risky:
        assert rust.words(text) != slow.basic_tokenizer.tokenize(text), f"{text!r} no longer differs; guard test stale"
        assert not fast.uses_fast_path(text)
        assert fast.tokenize(text) == slow.tokenize(text)
    assert fast.uses_fast_path("Café 中文 😀")


# --------------------------------------------------------------------------------------------
# 3. Known answers on a hand vocab
# --------------------------------------------------------------------------------------------

HAND_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "want", "##want", "##ed", "wa", "un", "runn", "##ing",
              ",", "[", "]", "mask", "caf", "##e", "##é", "a", "##a", "οδος", "οδοσ", "Café", "中", "!", "?"]


@pytest.fixture
def hand_vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(HAND_VOCAB) + "\n", encoding="utf-8")
    return path


def test_basic_tokenizer_lower_case():
    tokenizer = BasicTokenizer(do_lower_case=True)
    assert tokenizer.tokenize(" \tHeLLo!how  \n Are yoU?  ") == ["hello", "!", "how", "are", "you", "?"]
    assert tokenizer.tokenize("H\u00e9llo") == ["hello"]
    assert tokenizer.tokenize("ah\u535a\u63a8zz") == ["ah", "\u535a", "\u63a8", "zz"]
    assert tokenizer.tokenize("a\x00b\ufffdc\x07d") == ["abcd"]
    assert tokenizer.tokenize("$5^`~x") == ["$", "5", "^", "`", "~", "x"]
    assert tokenizer.tokenize("«hi»—yes…") == ["«", "hi", "»", "—", "yes", "…"]
    assert tokenizer.tokenize("ΟΔΟΣ") == ["οδος"]


def test_basic_tokenizer_keeps_case_and_accents_when_cased():
    tokenizer = BasicTokenizer(do_lower_case=False)
    assert tokenizer.tokenize(" \tHeLLo!how  \n Are yoU?  ") == ["HeLLo", "!", "how", "Are", "yoU", "?"]
    assert tokenizer.tokenize("Café naïve") == ["Café", "naïve"]
    # No NFC step: a separately written accent stays separate (as in the original).
    assert tokenizer.tokenize("cafe\u0301") == ["cafe\u0301"]


def test_wordpiece_greedy_longest_match(hand_vocab_file):
    vocab = load_vocab(hand_vocab_file)
    tokenizer = WordpieceTokenizer(vocab)
    assert tokenizer.tokenize("") == []
    assert tokenizer.tokenize("unwanted running") == ["un", "##want", "##ed", "runn", "##ing"]
    assert tokenizer.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]
    assert tokenizer.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert tokenizer.tokenize("a" * 101) == ["[UNK]"]
    assert WordpieceTokenizer(vocab, max_input_chars_per_word=200).tokenize("a" * 150) == ["a"] + ["##a"] * 149


@pytest.mark.parametrize("fast", [False, True])
def test_full_tokenizer_known_answers(hand_vocab_file, fast):
    uncased = FullTokenizer(hand_vocab_file, do_lower_case=True, fast=fast)
    assert uncased.is_fast == fast
    tokens = uncased.tokenize("UNwant\u00e9d,running [MASK]")
    assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing", "[", "mask", "]"]
    assert uncased.convert_tokens_to_ids(tokens) == [9, 6, 7, 12, 10, 11, 13, 15, 14]
    assert uncased.convert_ids_to_tokens([9, 6, 7, 4]) == ["un", "##want", "##ed", "[MASK]"]
    assert uncased.tokenize("cafe\u0301 CAFÉ ΟΔΟΣ 中!") == ["caf", "##e", "caf", "##e", "οδος", "中", "!"]
    assert uncased.tokenize("a" * 101 + " a") == ["[UNK]", "a"]
    assert uncased.encode_batch_ids(["want", "", "wanted?"]) == [[5], [], [5, 7, 26]]
    cased = FullTokenizer(hand_vocab_file, do_lower_case=False, fast=fast)
    assert cased.tokenize("Café cafe\u0301 café Want") == ["Café", "[UNK]", "caf", "##é", "[UNK]"]
    assert cased.tokenize_batch(["[MASK]", " \t "]) == [["[", "[UNK]", "]"], []]
    assert uncased.vocab["want"] == 5 and uncased.inv_vocab[5] == "want"


def test_max_input_chars_per_word_is_a_parameter(hand_vocab_file):
    for fast in (False, True):
        tokenizer = FullTokenizer(hand_vocab_file, fast=fast, max_input_chars_per_word=200)
        assert tokenizer.tokenize("a" * 150) == ["a"] + ["##a"] * 149
        assert tokenizer.tokenize("a" * 201) == ["[UNK]"]


def test_helpers():
    assert convert_to_unicode(b"caf\xc3\xa9 \xff!") == "café !"
    assert whitespace_tokenize("  a \t b\n") == ["a", "b"]
    with pytest.raises(TypeError):
        convert_to_unicode(3)  # type: ignore[arg-type]


def test_load_vocab_ids_are_line_numbers(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\r\nhello \n##lo\n", encoding="utf-8")
    assert list(load_vocab(path).items()) == [("[PAD]", 0), ("[UNK]", 1), ("hello", 2), ("##lo", 3)]


# --------------------------------------------------------------------------------------------
# 4. Bad input
# --------------------------------------------------------------------------------------------


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_vocab_file_names_it(tmp_path):
    missing = tmp_path / "no_such_vocab.txt"
    with pytest.raises(InputError) as excinfo:
        FullTokenizer(missing)
    assert _one_line_error(excinfo) == f"vocab file not found: {missing}"


@pytest.mark.parametrize(
    "content, problem",
    [(b"", "empty"), (b"hello\nworld\n", "no [UNK]"), (b"[UNK]\ncaf\xe9\n", "not UTF-8")],
)
def test_bad_vocab_file_names_it(tmp_path, content, problem):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(InputError) as excinfo:
        FullTokenizer(path)
    message = _one_line_error(excinfo)
    assert str(path) in message and problem in message
