"""A small, real English corpus that every machine able to run this project already has.

Sources, both from the running Python installation (nothing is downloaded):
  1. `pydoc_data.topics.topics`: the Language Reference sections that `help()` shows ("The if
     statement", "Naming and binding", ...), one document per topic, sorted by topic name.
  2. The standard library's own docstrings, read with `ast` from the `.py` source files (no module
     is imported, so nothing runs): for each public module, its module, class and function
     docstrings in source order form one document; modules sorted by dotted name. Tests, private
     modules and private names are skipped.
Prose is kept and code is dropped (indented blocks, doctest `>>>` lines, grammar rules, headings);
reST markup such as :func:`len` becomes `len`. The text is split into sentences with the Punkt
model and written one sentence per line with a blank line between documents, the input format of
create_pretraining_data.py. The output depends only on the Python version (about 1.5 MB for 3.11).

    python data/demo_corpus.py --output_file demo_corpus.txt
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from atomic_io import atomic_write_text
from data.sentence_split import split_sentences
from input_checks import run_main

DEFAULT_MAX_BYTES = 4_000_000
SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "turtledemo"}
_ROLE = re.compile(r":[a-zA-Z:]+:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``|`([^`]*)`")
_EMPHASIS = re.compile(r"\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")
_RULE_LINE = re.compile(r"^[\s*=\-~^#+]+$")
MIN_WORDS_PER_SENTENCE = 3


def _strip_markup(text: str) -> str:
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), text)
    return _EMPHASIS.sub(lambda m: m.group(1) or m.group(2), text)


def _is_prose(lines: list[str]) -> bool:
    if any(line[:1].isspace() for line in lines):  # code, grammar, literal blocks, list continuations
        return False
    text = " ".join(lines)
    if ">>>" in text or len(text.split()) < 4:
        return False
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / len(text) > 0.8


def prose_paragraphs(text: str) -> Iterator[str]:
    """Paragraphs of running text in a docstring or help topic, one line each, markup removed."""
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.split("\n") if line.strip() and not _RULE_LINE.match(line)]
        if lines and _is_prose(lines):
            yield " ".join(_strip_markup(" ".join(lines)).split())


def document_sentences(texts: list[str]) -> list[str]:
    sentences = []
    for text in texts:
        for paragraph in prose_paragraphs(text):
            sentences.extend(s for s in split_sentences(paragraph) if len(s.split()) >= MIN_WORDS_PER_SENTENCE)
    return sentences


def help_topic_documents() -> Iterator[list[str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield document_sentences([topics[name]])


def _public(name: str) -> bool:
    return not name.startswith("_")


def _docstrings(node: ast.AST) -> Iterator[str]:
    """Docstrings of a module/class and of its public classes and functions, in source order."""
    doc = ast.get_docstring(node, clean=True)
    if doc:
        yield doc
    for child in getattr(node, "body", []):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and _public(child.name):
            yield from _docstrings(child)


def stdlib_modules(stdlib: Path) -> list[tuple[str, Path]]:
    """(dotted name, file) of the public stdlib modules, sorted by name."""
    modules = []
    for path in stdlib.rglob("*.py"):
        parts = path.relative_to(stdlib).with_suffix("").parts
        if any(part in SKIPPED_DIRS for part in parts[:-1]):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not parts or not all(_public(part) and part.isidentifier() for part in parts):
            continue
        modules.append((".".join(parts), path))
    return sorted(modules)


def module_documents(stdlib: Path | None = None) -> Iterator[list[str]]:
    stdlib = Path(stdlib or sysconfig.get_paths()["stdlib"])
    for _name, path in stdlib_modules(stdlib):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # e.g. lib2to3 test data written in Python 2
        yield document_sentences(list(_docstrings(tree)))


def build_demo_corpus(max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The corpus text: documents of 2+ sentences until `max_bytes` (UTF-8) would be exceeded."""
    pieces, size = [], 0
    for sentences in _all_documents():
        if len(sentences) < 2:
            continue
        block = "\n".join(sentences) + "\n\n"
        block_size = len(block.encode("utf-8"))
        if size + block_size > max_bytes:
            break
        pieces.append(block)
        size += block_size
    return "".join(pieces)


def _all_documents() -> Iterator[list[str]]:
    yield from help_topic_documents()
    yield from module_documents()


def write_demo_corpus(output_file: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    output_file = Path(output_file)
    text = build_demo_corpus(max_bytes)
    atomic_write_text(output_file, text)
    documents = text.count("\n\n")
    print(f"demo corpus: {documents} documents, {len(text.encode('utf-8'))} bytes -> {output_file}", flush=True)
    return output_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--max_bytes", type=int, default=DEFAULT_MAX_BYTES)
    args = parser.parse_args(argv)
    write_demo_corpus(args.output_file, args.max_bytes)


if __name__ == "__main__":
    run_main(main)
