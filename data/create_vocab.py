"""Train a WordPiece vocabulary on your own corpus, laid out like Google's BERT vocab files.

    python data/create_vocab.py --input_files shard_0.txt,shard_1.txt --output_file vocab.txt \
        --vocab_size 30522 --lowercase 1

Rows, as in Google's uncased vocab: `[PAD]` (id 0), `[unused0]`..`[unused98]`, `[UNK]` (100),
`[CLS]` (101), `[SEP]` (102), `[MASK]` (103), the remaining `[unusedN]` rows, then the learned
tokens (single characters, their `##` continuations, then longer pieces) from the Hugging Face
`tokenizers` WordPiece trainer. Google's 30,522-row vocab has 994 unused rows; a smaller vocab gets
a proportional number (at least 99 when the vocab has 1,000+ rows, so ids 0-103 match Google's).
The result works with tokenization.FullTokenizer and create_pretraining_data.py unchanged.
"""
from __future__ import annotations

import argparse
import os
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from atomic_io import atomic_write_text
from input_checks import InputError, run_main

GOOGLE_VOCAB_SIZE = 30522
GOOGLE_UNUSED = 994
UNUSED_BEFORE_UNK = 99
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def default_num_unused(vocab_size: int) -> int:
    scaled = round(GOOGLE_UNUSED * vocab_size / GOOGLE_VOCAB_SIZE)
    if vocab_size >= 1000:
        scaled = max(UNUSED_BEFORE_UNK, scaled)
    return min(GOOGLE_UNUSED, scaled)


def google_layout_head(num_unused: int) -> list[str]:
    """Special and unused rows in Google's order."""
    before = min(UNUSED_BEFORE_UNK, num_unused)
    rows = ["[PAD]"] + [f"[unused{i}]" for i in range(before)]
    rows += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    rows += [f"[unused{i}]" for i in range(before, num_unused)]
    return rows


def _is_bert_punctuation(char: str) -> bool:
    """BERT's rule (tokenization._is_punctuation): ASCII non-alphanumerics and Unicode P* categories."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(char: str) -> bool:
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def character_counts(files: list[Path], normalize: Callable[[str], str]) -> Counter:
    """How often each character occurs after BERT normalisation (whitespace excluded)."""
    counts: Counter = Counter()
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                counts.update(normalize(line))
    for char in [c for c in counts if c.isspace()]:
        del counts[char]
    return counts


def choose_alphabet(counts: Counter, limit: int) -> list[str]:
    """The `limit` most frequent characters, ties broken by code point (the trainer breaks them at random)."""
    return sorted(sorted(counts, key=lambda c: (-counts[c], c))[:limit])


def train_wordpiece(
    files: list[Path], vocab_size: int, lowercase: bool, min_frequency: int = 2, limit_alphabet: int = 1000
) -> list[str]:
    """Learned tokens (no special tokens): characters, their `##` forms, then merged pieces.

    The `tokenizers` trainer numbers `##x` pieces in hash-map order and breaks ties between equally
    frequent merges by those numbers, so two runs can differ. Choosing the alphabet here and handing
    the trainer every `##x` up front (as special tokens, which get fixed ids) makes it deterministic.
    """
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    alphabet = choose_alphabet(character_counts(files, tokenizer.normalizer.normalize_str), limit_alphabet)
    # Punctuation and CJK characters are always split off as words of their own: never "##x".
    continuations = [f"##{c}" for c in alphabet if not (_is_bert_punctuation(c) or _is_cjk(c))]
    tokenizer.train(
        [str(f) for f in files],
        vocab_size=vocab_size + len(SPECIALS),
        min_frequency=min_frequency,
        limit_alphabet=len(alphabet),
        initial_alphabet=alphabet,
        special_tokens=list(SPECIALS) + continuations,
        show_progress=False,
        wordpieces_prefix="##",
    )
    by_id = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    merged = [t for t in by_id if t not in SPECIALS and t not in alphabet and t not in continuations]
    return [t for t in alphabet if t in tokenizer.get_vocab()] + continuations + merged


def build_vocab(
    files: list[str | os.PathLike],
    vocab_size: int = GOOGLE_VOCAB_SIZE,
    lowercase: bool = True,
    num_unused: int | None = None,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
) -> list[str]:
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"create_vocab: input file(s) not found: {', '.join(missing)}")
    if not paths:
        raise InputError("create_vocab: no input files")
    num_unused = default_num_unused(vocab_size) if num_unused is None else num_unused
    head = google_layout_head(num_unused)
    if vocab_size <= len(head):
        raise InputError(f"--vocab_size {vocab_size} leaves no room for learned tokens after {len(head)} special rows")
    learned = train_wordpiece(paths, vocab_size - len(head), lowercase, min_frequency, limit_alphabet)
    if not learned:
        raise InputError(f"create_vocab: no tokens learned from {', '.join(map(str, paths))} (empty input?)")
    return head + learned[: vocab_size - len(head)]


def write_vocab(tokens: list[str], output_file: str | os.PathLike) -> None:
    atomic_write_text(output_file, "".join(token + "\n" for token in tokens))


def create_vocab(input_files: list[str | os.PathLike], output_file: str | os.PathLike, **options) -> list[str]:
    tokens = build_vocab(input_files, **options)
    write_vocab(tokens, output_file)
    print(f"wrote {len(tokens)} tokens to {output_file}", flush=True)
    return tokens


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_files", required=True, help="comma-separated text files (e.g. the training shards)")
    parser.add_argument("--output_file", required=True, help="vocab.txt to write (one token per line)")
    parser.add_argument("--vocab_size", type=int, default=GOOGLE_VOCAB_SIZE)
    parser.add_argument("--lowercase", type=int, default=1, help=">0: uncased vocab (lowercase, strip accents)")
    parser.add_argument("--num_unused", type=int, default=None,
                        help="[unusedN] rows (default: scaled from Google's 994)")
    parser.add_argument("--min_frequency", type=int, default=2)
    parser.add_argument("--limit_alphabet", type=int, default=1000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    files = [f for f in args.input_files.split(",") if f]
    create_vocab(
        files, args.output_file, vocab_size=args.vocab_size, lowercase=args.lowercase > 0,
        num_unused=args.num_unused, min_frequency=args.min_frequency, limit_alphabet=args.limit_alphabet,
    )


if __name__ == "__main__":
    run_main(main)
