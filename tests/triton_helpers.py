"""Helpers for the serving tests: a small QA checkpoint, the triton/ scripts, free loopback ports."""
from __future__ import annotations

import ast
import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch
from conftest import ROOT, script_env, shared_path

TRITON_DIR = ROOT / "triton"
TINY_CONFIG = ROOT / "bert_configs" / "tiny.json"
SQUAD_DEV = ("squad", "v1.1", "dev-v1.1.first4articles.json")
VOCAB = ("vocab", "bert-base-uncased-vocab.txt")


def vocab_file() -> Path:
    return shared_path(*VOCAB)


def squad_dev() -> Path:
    return shared_path(*SQUAD_DEV)


def make_checkpoint(folder: Path, task: str = "qa", num_labels: int = 3, seed: int = 0) -> Path:
    """A fine-tuning output folder (pytorch_model.bin as {'model': sd} + bert_config.json), tiny config.

    Weights are random but fixed by the seed: the serving paths must agree with each other, not be right.
    """
    import modeling

    config = modeling.BertConfig.from_json_file(TINY_CONFIG)
    torch.manual_seed(seed)
    if task == "qa":
        model = modeling.BertForQuestionAnswering(config)
    else:
        model = modeling.BertForSequenceClassification(config, num_labels)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, folder / "pytorch_model.bin")
    config.to_json_file(folder / "bert_config.json")
    return folder


def sibling_imports(path: Path) -> list[str]:
    """The modules of path's own folder that it imports by their bare names at module level (as
    `python triton/X.py` finds them: the script's folder is first on sys.path)."""
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return [name for name in names if (path.parent / f"{name}.py").is_file()]


def load_triton_module(name: str) -> ModuleType:
    """A module of triton/ loaded from its file (the folder is not imported as a package), after the
    modules of the folder it imports by their bare names."""
    if name in sys.modules:
        return sys.modules[name]
    path = TRITON_DIR / f"{name}.py"
    for sibling in sibling_imports(path):
        load_triton_module(sibling)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]  # a later load tries again rather than finding half a module
        raise
    return module


def run_script(script: Path | str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run a project script with this interpreter; on failure show its output in the assertion."""
    done = subprocess.run([sys.executable, str(script), *map(str, args)], env=script_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, (f"{script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                                      f"{done.stderr[-3000:]}")
    return done


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subset_squad(source: Path, target: Path, questions: int) -> Path:
    """The first `questions` questions of a SQuAD file, written as a SQuAD file."""
    bert_io = load_triton_module("bert_io")
    dataset = json.loads(source.read_text(encoding="utf-8"))
    dataset["data"] = bert_io.first_questions(dataset["data"], questions)
    target.write_text(json.dumps(dataset), encoding="utf-8")
    return target
