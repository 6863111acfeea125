"""Atomic file output: every output is written to a temp name beside its final name and renamed into place."""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success fsync and rename it into place.

    A crash leaves only a `.tmp-*` file, which no reader ever picks up.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}.", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; give outputs the usual mode
        os.replace(tmp_path, final)
        _fsync_dir(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _ErrorKeepingWriter(io.RawIOBase):
    """A file for torch.save that remembers the OSError of a failed write: torch reports a full disk only
    as `[enforce fail at inline_container.cc...] unexpected pos`, losing "No space left on device"."""

    def __init__(self, fh: Any):
        super().__init__()
        self.fh, self.error = fh, None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise


def atomic_torch_save(obj: Any, final: str | os.PathLike) -> None:
    """torch.save to a temp file renamed into place; a failed write (e.g. a full disk) is an OSError whose
    filename is `final`, and nothing is left behind."""
    import torch

    with atomic_path(final) as tmp, open(tmp, "wb", buffering=0) as fh:
        writer = _ErrorKeepingWriter(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise OSError(writer.error.errno, writer.error.strerror, str(final)) from None


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(final: str | os.PathLike, obj: Any, indent: int = 4) -> None:
    atomic_write_text(final, json.dumps(obj, indent=indent) + "\n")
