"""convert_checkpoint.py checks everything before writing (issue 14, item 5).

Before, a checkpoint that did not fit its config (another layer count, other shapes, a missing layer)
was written and the converter exited 0; transformers then loaded the missing layer at random. A
missing --vocab_file was noticed only after the weights were written. Now each of these is one
`error:` line, exit 2, and no output at all; good checkpoints still convert and load in transformers
with no missing key.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import convert_checkpoint
from input_checks import run_main
from modeling import BertConfig, BertForPreTraining, BertForQuestionAnswering

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64)


def write_checkpoint(folder: Path, model_class: type = BertForPreTraining,
                     edit: Callable[[dict], None] | None = None, **config_changes) -> Path:
    """ckpt.pt ({'model': sd}) of a tiny model, with bert_config.json beside it (optionally different)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    sd = model_class(BertConfig(**TINY)).state_dict()
    if edit is not None:
        edit(sd)
    torch.save({"model": sd}, folder / "ckpt.pt")
    BertConfig(**{**TINY, **config_changes}).to_json_file(folder / "bert_config.json")
    (folder / "vocab.txt").write_text("".join(f"w{i}\n" for i in range(TINY["vocab_size"])), encoding="utf-8")
    return folder / "ckpt.pt"


def drop(*prefixes: str) -> Callable[[dict], None]:
    def edit(sd: dict) -> None:
        for key in [k for k in sd if k.startswith(prefixes)]:
            del sd[key]
    return edit


def trim_vocab(rows: int) -> Callable[[dict], None]:
    def edit(sd: dict) -> None:
        for key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight", "cls.predictions.bias"):
            sd[key] = sd[key][:rows].clone()
    return edit


BAD_CHECKPOINTS = [
    # (case, model class, state-dict edit, config changes, message fragments)
    ("config has more layers", BertForPreTraining, None, dict(num_hidden_layers=3),
     ["missing backbone keys: bert.encoder.layer.2."]),
    ("config has fewer layers", BertForPreTraining, None, dict(num_hidden_layers=1),
     ["tensors the config has no place for (another num_hidden_layers?): bert.encoder.layer.1."]),
    ("other hidden size", BertForPreTraining, None, dict(hidden_size=64),
     ["shapes do not fit the model config", "(32,) vs model (64,)"]),
    ("other intermediate size", BertForPreTraining, None, dict(intermediate_size=40),
     ["shapes do not fit the model config", "intermediate"]),
    ("a layer is missing", BertForPreTraining, drop("bert.encoder.layer.1.attention."), {},
     ["missing backbone keys: bert.encoder.layer.1.attention."]),
    ("the MLM transform is missing", BertForPreTraining, drop("cls.predictions.transform."), {},
     ["BertForPreTraining needs tensors the checkpoint lacks: cls.predictions.transform."]),
    ("the pooler of a pretraining model is missing", BertForPreTraining, drop("bert.pooler."), {},
     ["BertForPreTraining needs tensors the checkpoint lacks: bert.pooler."]),
    ("fewer vocab rows than vocab_size", BertForPreTraining, trim_vocab(50), {},
     ["bert.embeddings.word_embeddings.weight has 50 rows but the config says vocab_size 99"]),
]


@pytest.mark.parametrize(("case", "model_class", "edit", "changes", "fragments"), BAD_CHECKPOINTS,
                         ids=[row[0] for row in BAD_CHECKPOINTS])
def test_checkpoint_that_does_not_fit_its_config_is_refused_and_nothing_is_written(
        tmp_path, capsys, case, model_class, edit, changes, fragments):
    checkpoint = write_checkpoint(tmp_path / "in", model_class, edit, **changes)
    out = tmp_path / "hf"
    for argv in (["--to_hf", checkpoint, out],
                 ["--to_hf", checkpoint, out, "--vocab_file", tmp_path / "in" / "vocab.txt"]):
        with pytest.raises(SystemExit) as info:
            run_main(convert_checkpoint.main, [str(a) for a in argv])
        lines = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {checkpoint}: "), lines[0]
        for fragment in fragments:
            assert fragment in lines[0], lines[0]
        assert not out.exists()


def test_bad_paths_are_refused_before_anything_is_written(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "in")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    good_hf = tmp_path / "good_hf"
    convert_checkpoint.main(["--to_hf", str(checkpoint), str(good_hf)])
    cases = [
        (["--to_hf", checkpoint, tmp_path / "hf", "--vocab_file", tmp_path / "missing.txt"],
         f"vocab file not found: {tmp_path / 'missing.txt'}"),
        (["--to_hf", checkpoint, a_file], f"OUT_DIR {a_file}: not a folder"),
        (["--to_hf", checkpoint, a_file / "hf"], f"OUT_DIR {a_file / 'hf'}: {a_file} is not a folder"),
        (["--to_hf", checkpoint, "/proc/bert_hf"], "OUT_DIR /proc/bert_hf: cannot write in /proc"),
        (["--from_hf", good_hf, tmp_path / "in"], f"OUT_PT {tmp_path / 'in'}: is a folder, expected a file name"),
        (["--from_hf", good_hf, a_file / "x.pt"], f"OUT_PT {a_file / 'x.pt'}: {a_file} is not a folder"),
    ]
    before = sorted(tmp_path.rglob("*"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            run_main(convert_checkpoint.main, [str(a) for a in argv])
        lines = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: {message}"), lines[0]
        assert sorted(tmp_path.rglob("*")) == before


def test_hugging_face_checkpoint_that_does_not_fit_its_config_is_refused(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "in")
    hf = tmp_path / "hf"
    convert_checkpoint.main(["--to_hf", str(checkpoint), str(hf)])
    config = (hf / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3')
    (hf / "config.json").write_text(config)
    with pytest.raises(SystemExit):
        run_main(convert_checkpoint.main, ["--from_hf", str(hf), str(tmp_path / "back" / "model.pt")])
    assert "missing backbone keys: bert.encoder.layer.2." in capsys.readouterr().err
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize("model_class,drop_pooler", [(BertForPreTraining, False), (BertForQuestionAnswering, True)])
def test_fitting_checkpoints_convert_and_load_in_transformers_with_no_missing_key(tmp_path, model_class, drop_pooler):
    """The checks refuse nothing valid: a QA model without a pooler (as transformers saves it) is complete."""
    transformers = pytest.importorskip("transformers")
    checkpoint = write_checkpoint(tmp_path / "in", model_class, drop("bert.pooler.") if drop_pooler else None)
    out = tmp_path / "hf"
    convert_checkpoint.main(["--to_hf", str(checkpoint), str(out), "--vocab_file", str(tmp_path / "in" / "vocab.txt")])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    theirs, info = getattr(transformers, model_class.__name__).from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
