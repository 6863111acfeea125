"""The layering rule, read from the source (ast): core modules import no script and nothing from `data/`,
each imports only the rooms below it; libraries above `data/` (the evaluator) import no script; and the
module-level imports between project modules form no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

# core module -> the project modules it may import (anything else of the project is a script or data/)
ALLOWED = {
    # the small leaf helpers, one job each: they import no project module but the input checks
    # (precision asks distributed which rank it is on, to speak once)
    "atomic_io": set(),
    "input_checks": set(),
    "distributed": {"input_checks"},
    "precision": {"distributed"},
    "run_log": set(),
    "loss_curve": {"atomic_io", "run_log"},
    "bert_kernels": {"input_checks"},
    "modeling": {"bert_kernels", "input_checks", "atomic_io"},
    "batch_packing": {"bert_kernels", "input_checks"},  # host-side preparation of the layout kernels run on
    "checkpoint_io": {"modeling", "bert_kernels", "input_checks"},
    "tokenization": {"input_checks"},
    "optimization": {"schedulers", "input_checks"},
    "schedulers": {"input_checks"},
    "checkpointing": {"checkpoint_io", "atomic_io", "distributed", "input_checks", "run_log"},
    "training": {"distributed", "input_checks", "precision"},
    "flops": {"modeling"},  # type hints only
}
LEAVES = {module for module, allowed in ALLOWED.items() if allowed <= {"distributed", "input_checks"}}
# data/ and processors/ are libraries of the scripts: besides their own package, only the leaf helpers and
# the tokenizer (never the model, the trainer or a script)
LIBRARY_MAY_IMPORT = LEAVES | {"tokenization"}

# library modules above data/ (they read shards) -> the project modules they may import: data/ and the core,
# never a script (run_pretraining.py and run_pretraining_inference.py both import the evaluator)
ABOVE_DATA = {
    "evaluation": {"batch_packing", "data", "modeling", "distributed", "input_checks", "precision"},
}


def project_modules() -> set[str]:
    """Top-level names that resolve to this repository: its .py files and packages (data, processors, ...)."""
    names = {p.stem for p in ROOT.glob("*.py")}
    names |= {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    return names


def imports_of(path: Path, module_level_only: bool = False) -> set[str]:
    """Top-level package names imported by a file (every import, or only those run at import time)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_core_module_imports_only_the_rooms_below_it(module):
    ours = imports_of(ROOT / f"{module}.py") & project_modules()
    assert ours <= ALLOWED[module], f"{module}.py imports {sorted(ours - ALLOWED[module])}"


@pytest.mark.parametrize("module", sorted(ABOVE_DATA))
def test_library_above_data_imports_no_script(module):
    ours = imports_of(ROOT / f"{module}.py") & project_modules()
    assert ours <= ABOVE_DATA[module], f"{module}.py imports {sorted(ours - ABOVE_DATA[module])}"


def test_no_import_cycle_between_project_modules():
    project = project_modules()
    graph = {p.stem: imports_of(p, module_level_only=True) & project for p in ROOT.glob("*.py")}

    finished: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in finished:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        finished.add(node)

    for start in sorted(graph):
        visit(start, [])


@pytest.mark.parametrize("path", sorted([*(ROOT / "data").glob("*.py"), *(ROOT / "processors").glob("*.py")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_data_and_processors_import_only_their_package_and_the_leaf_helpers(path):
    """data/ and processors/ may use the leaf helpers and the tokenizer, never a top-level script or a
    library above data/ (create_pretraining_data.py's engine is data/shard_creation.py for that reason)
    or the model."""
    ours = imports_of(path) & project_modules() - {path.parent.name}
    assert ours <= LIBRARY_MAY_IMPORT, f"{path.parent.name}/{path.name} imports {sorted(ours - LIBRARY_MAY_IMPORT)}"
