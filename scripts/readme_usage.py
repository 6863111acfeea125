"""Regenerate the "Script parameters" section of README.md from each script's --help.

  python scripts/readme_usage.py           # rewrite README.md in place
  python scripts/readme_usage.py --check   # exit 1 when README.md is stale
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = (
    "run_pretraining.py", "run_pretraining_inference.py", "create_pretraining_data.py", "data/bertPrep.py",
    "run_squad.py", "run_glue.py", "run_swag.py", "inference.py", "extract_features.py", "convert_checkpoint.py",
    "triton/export.py", "triton/server.py", "triton/client.py", "triton/run_squad_client.py", "triton/perf.py",
    "bind_pyt.py",
)
BEGIN, END = "<!-- usage:begin -->", "<!-- usage:end -->"


def help_text(script: str) -> str:
    env = {**os.environ, "COLUMNS": "110", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"{script} --help failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.rstrip()


def usage_section() -> str:
    parts = []
    for script in SCRIPTS:
        if (ROOT / script).is_file():
            parts.append(f"<details><summary><code>{script}</code></summary>\n\n```text\n{help_text(script)}\n```\n</details>\n")
    return "\n".join(parts)


def render(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{usage_section()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check; exit 1 when stale")
    args = p.parse_args(argv)
    path = ROOT / "README.md"
    current = path.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print("README.md's script parameters are stale: run python scripts/readme_usage.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
