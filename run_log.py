"""The run log: dllogger-compatible JSON lines (`DLLL {...}`) plus a readable stdout line, and their reader."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def format_step(step: Any) -> str:
    if isinstance(step, str):
        return step
    if isinstance(step, (tuple, list)):
        parts = []
        names = ("Training Epoch", "Training Iteration", "Validation Iteration")
        for name, value in zip(names, step, strict=False):
            parts.append(f"{name}: {value}")
        return " ".join(parts)
    return str(step)


def _jsonable(value: Any) -> Any:
    """Tensors and numpy scalars as plain numbers (checked by module so torch need not be imported)."""
    module = type(value).__module__
    if module.startswith("torch") and hasattr(value, "numel"):
        return value.item() if value.numel() == 1 else value.tolist()
    if module == "numpy" and hasattr(value, "item"):
        return value.item()
    return value


class Logger:
    """A small stand-in for NVIDIA's dllogger with the same file format (`DLLL {...}` lines).

    Only rank 0 writes. `step` is "PARAMETER", a tuple (epoch, iteration[, val_iteration]) or () for
    the final summary, as in the original.
    """

    def __init__(self, json_path: str | os.PathLike | None, enabled: bool = True, stdout: bool = True):
        self.enabled = enabled
        self.stdout = stdout and enabled
        self.start = time.time()
        self._fh = None
        self.path = Path(json_path) if json_path else None
        if enabled and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, record: dict) -> None:
        if self._fh is None:
            return
        try:
            self._fh.write("DLLL " + json.dumps(record) + "\n")
            self._fh.flush()
        except OSError as exc:  # a full disk must not end a training run over a log line
            print(f"warning: {self.path}: cannot write the log ({exc.strerror}); from now on it goes to stdout only",
                  file=sys.stderr, flush=True)
            with contextlib.suppress(OSError):  # closing flushes the same unwritable line again
                self._fh.close()
            self._fh = None

    def _base(self, kind: str) -> dict:
        now = time.time()
        return {
            "timestamp": f"{now:.6f}",
            "datetime": _dt.datetime.now().isoformat(sep=" "),
            "elapsedtime": f"{now - self.start:.6f}",
            "type": kind,
        }

    def log(self, step: Any, data: dict[str, Any]) -> None:
        if not self.enabled:
            return
        data = {k: _jsonable(v) for k, v in data.items()}
        record = self._base("LOG")
        record.update(step=list(step) if isinstance(step, tuple) else step, data=data)
        self._write(record)
        if self.stdout:
            fields = " ".join(f"{k} : {_fmt(v)}" for k, v in data.items())
            prefix = format_step(step)
            print(f"DLL {record['datetime']} - {prefix} {fields}".replace("  ", " "), flush=True)

    def metadata(self, metric: str, meta: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = self._base("METADATA")
        record.update(metric=metric, metadata=meta)
        self._write(record)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_dllogger(path: str | os.PathLike) -> list[dict]:
    """Parse a dllogger JSON-lines file (ours or NVIDIA's) into records."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("DLLL "):
                records.append(json.loads(line[5:]))
    return records
