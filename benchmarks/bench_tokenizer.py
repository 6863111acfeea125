"""Tokenizer throughput on real text: our reference and fast paths against transformers' BertTokenizerLegacy.

    python benchmarks/bench_tokenizer.py [--data-dir ../shared/data] [--max-chars 3000000] [--cased]

Reads the Gutenberg books and the WikiText-2 test split, one line per text (blank lines dropped),
tokenizes the same lines with each tokenizer, checks that all of them produced the same tokens, and
prints wall time, process CPU time and WordPiece tokens per second, with ratios against
BertTokenizerLegacy (the pure-Python tokenizer a user would otherwise reach for) and raw
`tokenizers.BertWordPieceTokenizer` (the Rust one, which keeps "[MASK]"-style text whole).
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from cpu_info import describe_cpu

from input_checks import InputError, run_main
from tokenization import FullTokenizer

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = ROOT.parent / "shared" / "data"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help="folder holding corpus/gutenberg/*.txt and corpus/wikitext-2-raw/wiki.test.raw")
    parser.add_argument("--vocab", type=Path, default=None,
                        help="vocab file (default: DATA/vocab/bert-base-{uncased,cased}-vocab.txt)")
    parser.add_argument("--cased", action="store_true", help="no lower-casing (use a cased vocab)")
    parser.add_argument("--max-chars", type=int, default=3_000_000, help="stop adding lines after this many characters")
    parser.add_argument("--batch-size", type=int, default=1024, help="lines per tokenize_batch call")
    parser.add_argument("--repeats", type=int, default=1, help="runs per tokenizer; the fastest is reported")
    parser.add_argument("--skip-hf", action="store_true", help="leave out the transformers reference")
    return parser.parse_args(argv)


def read_lines(data_dir: Path, max_chars: int) -> list[str]:
    books = sorted((data_dir / "corpus" / "gutenberg").glob("*.txt"))
    wikitext = data_dir / "corpus" / "wikitext-2-raw" / "wiki.test.raw"
    if not books or not wikitext.is_file():
        raise InputError(f"benchmark text not found under {data_dir}: needs corpus/gutenberg/*.txt and "
                         f"corpus/wikitext-2-raw/wiki.test.raw (pass --data-dir)")
    lines: list[str] = []
    total = 0
    for path in [wikitext, *books]:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # one Gutenberg book is Latin-1
        for line in text.splitlines():
            if line.strip():
                lines.append(line)
                total += len(line)
                if total >= max_chars:
                    return lines
    return lines


def batched(lines: list[str], size: int) -> list[list[str]]:
    return [lines[start:start + size] for start in range(0, len(lines), size)]


def timed(run: Callable[[], list[list[str]]], repeats: int) -> tuple[float, float, list[list[str]]]:
    """(best wall seconds, CPU seconds of that run, output)."""
    best = None
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        output = run()
        result = (time.perf_counter() - wall, time.process_time() - cpu, output)
        if best is None or result[0] < best[0]:
            best = result
    assert best is not None
    return best


def candidates(args: argparse.Namespace, vocab: Path, lines: list[str]) -> dict[str, Callable[[], list[list[str]]]]:
    lower = not args.cased
    slow = FullTokenizer(vocab, do_lower_case=lower, fast=False)
    fast = FullTokenizer(vocab, do_lower_case=lower, fast=True)
    chunks = batched(lines, args.batch_size)
    runs: dict[str, Callable[[], list[list[str]]]] = {}
    if not args.skip_hf:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import BertTokenizerLegacy
        except ImportError:
            print("transformers not installed: BertTokenizerLegacy row left out")
        else:
            hf = BertTokenizerLegacy(str(vocab), do_lower_case=lower, tokenize_chinese_chars=True)
            runs["transformers BertTokenizerLegacy"] = lambda: [hf.tokenize(line) for line in lines]
    runs["ours, reference path, tokenize"] = lambda: [slow.tokenize(line) for line in lines]
    runs["ours, fast path, tokenize"] = lambda: [fast.tokenize(line) for line in lines]
    runs["ours, fast path, tokenize_batch"] = lambda: [tokens for chunk in chunks
                                                       for tokens in fast.tokenize_batch(chunk)]
    runs["ours, fast path, encode_batch_ids"] = lambda: [
        fast.convert_ids_to_tokens(ids) for chunk in chunks for ids in fast.encode_batch_ids(chunk)
    ]
    from tokenizers import BertWordPieceTokenizer

    raw = BertWordPieceTokenizer(str(vocab), lowercase=lower, strip_accents=lower, clean_text=True,
                                 handle_chinese_chars=True)
    runs["tokenizers BertWordPieceTokenizer, batch"] = lambda: [
        encoding.tokens for chunk in chunks for encoding in raw.encode_batch(chunk, add_special_tokens=False)
    ]
    return runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    vocab = args.vocab or args.data_dir / "vocab" / f"bert-base-{'cased' if args.cased else 'uncased'}-vocab.txt"
    if not vocab.is_file():
        raise InputError(f"vocab file not found: {vocab} (pass --vocab or --data-dir)")
    lines = read_lines(args.data_dir, args.max_chars)
    chars = sum(map(len, lines))
    print(f"{len(lines):,} lines, {chars:,} characters from {args.data_dir}; vocab {vocab.name}; "
          f"{os.cpu_count()} CPUs, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}")
    print(f"CPU: {describe_cpu()}")

    rows = []
    reference = None
    for name, run in candidates(args, vocab, lines).items():
        wall, cpu, output = timed(run, args.repeats)
        if reference is None:
            reference = output
        differing = sum(a != b for a, b in zip(output, reference, strict=True))
        same = "yes" if output == reference else f"no ({differing} lines)"
        rows.append((name, wall, cpu, sum(map(len, output)), same))

    base = rows[0][1]
    print(f"\n{'tokenizer':<42} {'wall s':>7} {'CPU s':>7} {'tokens/s':>11} {'speed vs ' + rows[0][0][:12]:>22}  same "
          "tokens")
    for name, wall, cpu, tokens, same in rows:
        print(f"{name:<42} {wall:>7.2f} {cpu:>7.2f} {tokens / wall:>11,.0f} {base / wall:>21.2f}x  {same}")


if __name__ == "__main__":
    run_main(main)
