"""Raw corpora -> one document per line (blank line after each), the input of TextSharding.

Wikipedia: the fast extractor (`data/wiki_extract.py`, the default) or WikiExtractor (the
`wikiextractor` package, `run_wikiextractor` here) turns the XML dump into `<doc>` blocks;
each block becomes one line (title dropped, paragraphs joined by spaces), as the original's
WikicorpusTextFormatting did. BookCorpus-style folders: each `*.txt` book becomes one line, as
BookscorpusTextFormatting did. Everything streams: no corpus is held in memory.
"""
from __future__ import annotations

import codecs
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from atomic_io import atomic_path
from data.workers import die_with_parent, worker_pool
from input_checks import InputError


def run_wikiextractor(dump: str | os.PathLike, output_dir: str | os.PathLike, n_processes: int) -> None:
    """`python -m wikiextractor.WikiExtractor DUMP -o OUT -b 100M --processes N` (argument list, no shell).

    Its log goes to `<OUT>.log` (hours of progress lines); on failure the last line is quoted.
    """
    dump, output_dir = Path(dump), Path(output_dir)
    if not dump.exists():
        raise InputError(f"{dump}: Wikipedia dump not found; run --action download first")
    command = [
        sys.executable, "-m", "wikiextractor.WikiExtractor", str(dump),
        "-o", str(output_dir), "-b", "100M", "--processes", str(max(1, n_processes)),
    ]
    log_path = output_dir.with_name(output_dir.name + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"running {' '.join(command)} (log: {log_path})", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False, preexec_fn=die_with_parent)
    if result.returncode != 0:
        raise InputError(f"WikiExtractor failed on {dump} (exit {result.returncode}: {_last_line(log_path)}); "
                         f"a truncated or damaged dump? delete it and download again (log: {log_path})")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def extracted_files(extracted_dir: str | os.PathLike) -> list[Path]:
    """The extracted files in WikiExtractor's layout (`AA/wiki_00`, `AA/wiki_01`, ..., `AB/...`) in order."""
    return sorted(p for p in Path(extracted_dir).glob("*/wiki_*") if p.is_file())


def iter_wiki_articles(files: Iterable[Path]) -> Iterator[str]:
    """Each `<doc ...>` block as one line: title (first line) dropped, non-blank lines joined."""
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines: list[str] | None = None
            for raw in fh:
                line = raw.strip()
                if line.startswith("<doc ") or line == "<doc>":
                    lines = []
                elif line == "</doc>":
                    if lines:
                        text = " ".join(lines[1:])  # lines[0] is the title
                        if text:
                            yield text
                    lines = None
                elif lines is not None and line:
                    lines.append(line)


def detect_encoding(path: Path) -> str:
    """'utf-8-sig' when the whole file decodes as UTF-8, else 'cp1252' (a superset of Latin-1's text)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8-sig"


def read_text_lenient(path: Path) -> Iterator[str]:
    """Lines of a text file: UTF-8 (with or without BOM), else Windows-1252/Latin-1 with a warning.

    Real book collections mix encodings (Gutenberg's Julius Caesar is Latin-1); CRLF and CR line
    ends are normalised by universal newlines.
    """
    encoding = detect_encoding(path)
    if encoding != "utf-8-sig":
        print(f"warning: {path} is not UTF-8; reading it as Windows-1252/Latin-1", file=sys.stderr, flush=True)
    with open(path, encoding=encoding, errors="replace") as fh:
        yield from fh


def iter_books(books_dir: str | os.PathLike) -> Iterator[str]:
    """Each `*.txt` book in the folder (sorted by name) as one line of space-joined non-blank lines."""
    books = sorted(Path(books_dir).glob("*.txt"))
    if not books:
        raise InputError(f"{books_dir}: no *.txt books found")
    for book in books:
        text = " ".join(line.strip() for line in read_text_lenient(book) if line.strip())
        if text:
            yield text


def iter_documents_from_sentences(path: str | os.PathLike) -> Iterator[str]:
    """A one-sentence-per-line file with blank lines between documents -> one line per document."""
    sentences: list[str] = []
    for line in read_text_lenient(Path(path)):
        line = line.strip()
        if line:
            sentences.append(line)
        elif sentences:
            yield " ".join(sentences)
            sentences = []
    if sentences:
        yield " ".join(sentences)


def write_one_document_per_line(documents: Iterable[str], output: str | os.PathLike) -> int:
    """Write each document as one line followed by a blank line, atomically; return the count."""
    count = 0
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as out:
        count = _write_documents(documents, out)
    if count == 0:
        Path(output).unlink()
        raise InputError(f"{output}: no documents were found in the input; nothing written")
    return count


def _write_documents(documents: Iterable[str], out: TextIO) -> int:
    count = 0
    for document in documents:
        out.write(" ".join(document.split()) + "\n\n")
        count += 1
    return count


def format_wikipedia(extracted_dir: str | os.PathLike, output: str | os.PathLike, n_processes: int = 1) -> int:
    """WikiExtractor's files -> one article per line, each file on a worker; written atomically, in file order."""
    files = extracted_files(extracted_dir)
    if not files:
        raise InputError(f"{extracted_dir}: no extracted articles (AA/wiki_00 ...); run the extraction first")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    parts = Path(tempfile.mkdtemp(prefix=".tmp-formatting-", dir=output.parent))
    jobs = [(path, parts / f"{index:06d}.txt") for index, path in enumerate(files)]
    try:
        with atomic_path(output) as tmp, open(tmp, "wb") as out:
            count = 0
            for part, part_count in _map_in_order(_format_wiki_file, jobs, n_processes):
                with open(part, "rb") as formatted:  # in file order, so the output equals a serial run's
                    shutil.copyfileobj(formatted, out, 1 << 20)
                part.unlink()
                count += part_count
        if count == 0:
            output.unlink()
            raise InputError(f"{output}: no documents were found in the input; nothing written")
        return count
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def _format_wiki_file(job: tuple[Path, Path]) -> tuple[Path, int]:
    source, part = job
    with open(part, "w", encoding="utf-8") as out:
        return part, _write_documents(iter_wiki_articles([source]), out)


def _map_in_order(function, jobs: list, n_processes: int) -> Iterator:
    """`function` over `jobs`, results in order: on a pool of workers when more than one is asked for."""
    if n_processes <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    with worker_pool(min(n_processes, len(jobs))) as pool:
        yield from pool.map(function, jobs)


def format_books(books_dir: str | os.PathLike, output: str | os.PathLike) -> int:
    return write_one_document_per_line(iter_books(books_dir), output)


def format_sentence_file(path: str | os.PathLike, output: str | os.PathLike) -> int:
    return write_one_document_per_line(iter_documents_from_sentences(path), output)
