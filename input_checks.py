"""Bad input as one clear line: `InputError`, the checked readers of input files, the checks of flags and
output paths, and `run_main`, which turns an InputError into `error: ...` and exit code 2."""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn


def die(message: str, code: int = 2) -> NoReturn:
    """Exit with one clear line on stderr (bad input, not a bug)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class InputError(ValueError):
    """Bad user input (a file, line or key that is wrong). Scripts print it as one line and exit 2."""


def allow_csv_fields_of(text: str) -> str:
    """`text`, after raising the csv module's field limit (131,072 characters) to its length: a long GLUE or
    SWAG field is text to read (and truncate to --max_seq_length), not an error. The text is in memory
    already."""
    import csv

    csv.field_size_limit(max(csv.field_size_limit(), len(text)))
    return text


def read_text_file(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """A whole input text file; InputError naming the file (and the line of a bad byte) instead of a traceback."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text "
                         f"(byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def read_json_file(path: str | os.PathLike, what: str = "file") -> Any:
    """A whole JSON file; InputError naming the file and, for a syntax error, its line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def check_number_ranges(ranges: dict[str, tuple[float, float, bool, float]]) -> None:
    """InputError for the first flag whose value is not finite or outside its range.

    `ranges`: {flag: (value, lowest allowed, whether the lowest itself is allowed, highest)}."""
    for flag, (value, low, low_ok, high) in ranges.items():
        inside = (value >= low if low_ok else value > low) and value <= high
        if not (math.isfinite(value) and inside):
            bound = f"{'>=' if low_ok else '>'} {low:g}" + (f" and <= {high:g}" if math.isfinite(high) else "")
            raise InputError(f"{flag} must be a finite number {bound}, got {value}")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_can_create_in(folder: Path, flag: str, path: Path) -> None:
    """InputError unless a file can be created in `folder` (tried for real: root ignores permission bits)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{flag} {path}: cannot write in {folder} ({exc.strerror})") from None


def _check_folder_usable(folder: Path, flag: str, shown: Path) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise InputError(f"{flag} {shown}: {'not a folder' if existing == shown else f'{existing} is not a folder'}")
    _check_can_create_in(existing, flag, shown)


def check_output_dir(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """An output folder that exists or can be created; InputError before any work otherwise."""
    path = Path(path)
    _check_folder_usable(path, flag, path)
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--output_file") -> Path:
    """An output file path whose folder is usable and that is not itself a folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder, expected a file name")
    _check_folder_usable(path.parent, flag, path)
    return path


def check_at_least_one(value: float, flag: str) -> None:
    """InputError unless `value` is a number above 0 (batch sizes, counts)."""
    if not value > 0:
        raise InputError(f"{flag} must be at least 1, got {value}")


def run_main(main: Any, argv: list[str] | None = None) -> None:
    """Call `main(argv)`; turn an InputError into a one-line message instead of a traceback."""
    try:
        main(argv)
    except InputError as exc:
        die(str(exc))
