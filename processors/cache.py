"""Feature caches: numpy `.npz` files named by a hash of every setting that changes the features.

Caches hold plain arrays only (loaded with `allow_pickle=False`), are written to a temp name and
renamed, and record their key inside so a file renamed by hand is never trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from atomic_io import atomic_path

_KEY_FIELD = "__cache_key__"


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(settings: Mapping[str, Any]) -> str:
    """A canonical JSON string of the settings; its hash names the cache file."""
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))


def cache_path(cache_dir: str | os.PathLike, stem: str, settings: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(cache_key(settings).encode("utf-8")).hexdigest()[:20]
    return Path(cache_dir) / f"{stem}.features-{digest}.npz"


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], settings: Mapping[str, Any]) -> None:
    """Write `arrays` plus the key atomically. A file object is passed so numpy adds no suffix."""
    payload = dict(arrays)
    payload[_KEY_FIELD] = np.array(cache_key(settings))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **payload)


def load_arrays(path: str | os.PathLike, settings: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is absent, unreadable or made with other settings."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if _KEY_FIELD not in data.files or str(data[_KEY_FIELD]) != cache_key(settings):
                return None
            return {name: data[name] for name in data.files if name != _KEY_FIELD}
    except (OSError, ValueError, EOFError):
        return None


def pack_strings(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Lists of strings (no newlines) as one UTF-8 byte array plus row offsets; no object arrays."""
    encoded = [("\n".join(row)).encode("utf-8") for row in rows]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, dtype=np.uint8)
    return blob, offsets


def unpack_strings(blob: np.ndarray, offsets: np.ndarray) -> list[list[str]]:
    raw = blob.tobytes()
    rows = []
    for start, end in zip(offsets[:-1], offsets[1:], strict=True):
        text = raw[int(start):int(end)].decode("utf-8")
        rows.append(text.split("\n") if text else [])
    return rows
