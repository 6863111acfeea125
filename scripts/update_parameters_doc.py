"""Regenerate docs/parameters.md, every script's flags, from each script's own --help.

  python scripts/update_parameters_doc.py           # rewrite docs/parameters.md (also: make docs)
  python scripts/update_parameters_doc.py --check   # exit 1 when docs/parameters.md is stale
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from atomic_io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

DOC = ROOT / "docs" / "parameters.md"
COMMAND = "python scripts/update_parameters_doc.py"
# (group title, scripts in the order a user meets them)
GROUPS = (
    ("Pretraining", ("run_pretraining.py", "run_pretraining_inference.py", "create_pretraining_data.py")),
    ("Data preparation", ("data/bertPrep.py", "data/create_vocab.py", "data/inspect_hdf5.py")),
    ("Fine-tuning", ("run_squad.py", "run_glue.py", "run_swag.py", "processors/squad_metrics.py")),
    ("Inference and checkpoints", ("inference.py", "extract_features.py", "convert_checkpoint.py")),
    ("Triton", ("triton/export.py", "triton/model_repository.py", "triton/server.py", "triton/client.py",
                "triton/run_squad_client.py", "triton/perf.py")),
    ("Launch and tools", ("bind_pyt.py", "scripts/plot_loss.py")),
    ("Benchmarks", ("benchmarks/bench_pretraining.py", "benchmarks/bench_inference.py", "benchmarks/bench_squad.py",
                    "benchmarks/bench_tokenizer.py", "benchmarks/bench_create_pretraining_data.py")),
)
HEADER = f"""# Script parameters

Every flag of every Python entry point, exactly as its `--help` prints it. This file is generated:
do not edit it by hand. After changing a flag, regenerate it with one command,

```bash
{COMMAND}
```

(or `make docs`); `tests/test_readme.py` fails while this file differs from the scripts' `--help`.
The shell wrappers (`scripts/run_*.sh`, `run.sub`, `scripts/docker/*.sh`, `triton/scripts/*.sh`)
document their positional arguments and environment knobs in their header comments.
"""


def help_text(script: str) -> str:
    # A fixed width keeps the wrapping, and so this file, the same on every machine.
    env = {**os.environ, "COLUMNS": "110", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"error: {script} --help failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.rstrip()


def anchor(script: str) -> str:
    """GitHub's heading anchor for a heading that is just the script's path in backticks."""
    return "".join(c for c in script.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def render() -> str:
    scripts = [s for _, group in GROUPS for s in group if (ROOT / s).is_file()]
    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(zip(scripts, pool.map(help_text, scripts), strict=True))
    parts = [HEADER]
    for title, group in GROUPS:
        present = [s for s in group if s in helps]
        parts.append(f"- {title}: " + ", ".join(f"[`{s}`](#{anchor(s)})" for s in present))
    for title, group in GROUPS:
        parts.append(f"\n## {title}")
        for script in (s for s in group if s in helps):
            parts.append(f"\n### `{script}`\n\n```text\n{helps[script]}\n```")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check; exit 1 when docs/parameters.md is stale")
    args = p.parse_args(argv)
    fresh = render()
    if args.check:
        current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
        if fresh != current:
            print(f"docs/parameters.md is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(DOC, fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
