"""Parse command lines with the scripts' own argparse parsers, without running the scripts.

Reads a JSON list of ``{"target": "inference.py" | "-m processors.squad_metrics", "argv": [...]}`` on
stdin and prints one JSON line per entry: ``{"ok": bool, "error": str}``. Each script is executed as
``__main__`` (as ``python X.py`` would) until its first ``ArgumentParser.parse_args`` call returns;
that parse is the real one, with the script's real flags, so an unknown flag, a missing required flag
or a value outside ``choices`` fails exactly as it would on the command line. Nothing after the parse
runs. All entries share one interpreter so torch is imported once.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class _Parsed(Exception):
    """Raised right after a successful parse, to stop the script before it does any work."""


_original_parse_args = argparse.ArgumentParser.parse_args


def _parse_then_stop(self, args=None, namespace=None):
    _original_parse_args(self, args, namespace)
    raise _Parsed


def probe(target: str, argv: list[str]) -> dict:
    """Run one script's argument parsing on argv; report whether argparse accepted it."""
    module = target[3:] if target.startswith("-m ") else None
    program = module or str(ROOT / target)
    if not module and "ArgumentParser" not in Path(program).read_text(encoding="utf-8"):
        return {"ok": False, "error": "not an argparse script: it would run for real, so it is not probed"}
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [program, *argv]
    # `python X.py` puts X's folder first on sys.path; `python -m` puts the working directory there.
    sys.path.insert(0, str(ROOT) if module else str(Path(program).parent))
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(program, run_name="__main__")
    except _Parsed:
        return {"ok": True, "error": ""}
    except SystemExit as exc:
        lines = stderr.getvalue().strip().splitlines()
        return {"ok": False, "error": lines[-1] if lines else f"exited {exc.code} before parsing its arguments"}
    except Exception as exc:  # noqa: BLE001 - any failure before the parse is reported, not raised
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return {"ok": False, "error": "the script finished without calling ArgumentParser.parse_args"}


def main() -> int:
    argparse.ArgumentParser.parse_args = _parse_then_stop
    for entry in json.load(sys.stdin):
        print(json.dumps(probe(entry["target"], entry["argv"])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
