"""Bad input at every entry point: one `error: ...` line naming what is wrong, exit 2, no traceback,
nothing written (issue 14).

Each table row is (script, arguments, expected message). The scripts run in this process through
`utils.run_main`, exactly as their `__main__` does, so a traceback would fail the test as an uncaught
exception; the checks of the shell wrappers run the real scripts in a subprocess
(tests/e2e/test_finetune_scripts.py).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import shared_path
from triton_helpers import load_triton_module, make_checkpoint

from modeling import BertConfig, BertForPreTraining
from utils import run_main

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)


def entry_point(name: str) -> Callable[[list[str]], object]:
    """The `main` of a top-level script or of a triton/ script (`triton/<name>`)."""
    if name.startswith("triton/"):
        return load_triton_module(name.removeprefix("triton/")).main
    return __import__(name).main


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def assert_one_line_error(capsys, name: str, argv: list[str], expected: str) -> None:
    """`main(argv)` exits 2 with exactly `error: <expected…>` on stderr and nothing else."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(entry_point(name), [str(a) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {expected}"), lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny pretraining checkpoint, a QA fine-tuned folder, the real vocab and a real SQuAD slice."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    config = BertConfig(**TINY)
    torch.manual_seed(0)
    torch.save({"model": BertForPreTraining(config).state_dict()}, folder / "ckpt.pt")
    config.to_json_file(folder / "bert_config.json")
    make_checkpoint(folder / "qa")
    (folder / "vocab.txt").write_bytes(shared_path("vocab", "bert-base-uncased-vocab.txt").read_bytes())
    squad_json = json.loads(shared_path("squad", "v1.1", "dev-v1.1.first4articles.json").read_text(encoding="utf-8"))
    squad_json["data"] = [{"title": "t", "paragraphs": squad_json["data"][0]["paragraphs"][:1]}]
    (folder / "dev.json").write_text(json.dumps(squad_json), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------
# --doc_stride: a stride below 1 never finished windowing (memory grew without bound)
# --------------------------------------------------------------------------------------------

STRIDE_ENTRY_POINTS = [
    ("run_squad", lambda w: ["--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt",
                             "--output_dir", w / "out", "--do_predict", "--predict_file", w / "dev.json"]),
    ("inference", lambda w: ["--init_checkpoint", w / "qa", "--vocab_file", w / "vocab.txt"]),
    ("triton/client", lambda w: ["--question", "Who?", "--context", "Someone.", "--url", "127.0.0.1:9"]),
    ("triton/run_squad_client", lambda w: ["--predict_file", w / "dev.json", "--output_dir", w / "out",
                                           "--vocab_file", w / "vocab.txt", "--url", "127.0.0.1:9"]),
    ("triton/model_repository", lambda w: ["--export-dir", w / "export", "--model-repository", w / "out",
                                           "--vocab_file", w / "vocab.txt"]),
]


@pytest.mark.parametrize("stride", [0, -1])
@pytest.mark.parametrize(("name", "argv"), STRIDE_ENTRY_POINTS, ids=[n for n, _ in STRIDE_ENTRY_POINTS])
def test_non_positive_doc_stride_is_refused_at_every_entry_point(capsys, work, name, argv, stride):
    assert_one_line_error(capsys, name, [*argv(work), "--doc_stride", stride],
                          f"--doc_stride must be a positive number of tokens, got {stride}")
    assert not (work / "out").exists()


def test_model_repository_api_refuses_a_non_positive_doc_stride():
    """The config writer itself checks too: a repository with doc_stride 0 would hang its server on a request."""
    from utils import InputError

    mr = load_triton_module("model_repository")
    tensor = mr.TensorModelSpec(backend="python", max_sequence=512, vocab_size=30522, type_vocab_size=2)
    with pytest.raises(InputError, match="--doc_stride must be a positive number of tokens, got 0"):
        mr.text_model_config(mr.TextModelSpec(tensor=tensor, doc_stride=0))
