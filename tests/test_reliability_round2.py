"""Reliability round 2, items 8-15 of issue 22, for the scripts other than pretraining: non-finite weights
refused by every downstream entry point, SQuAD files read as written, leftovers and surprises.

Each table row runs a script's `main` in this process through `utils.run_main`, as its `__main__` does
(tests/test_bad_inputs.py explains why): one `error:` line naming the file, key or flag, exit 2, nothing
written. The pretraining cases are in tests/test_pretraining_guards.py. docs/reliability.md lists them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_inputs import assert_one_line_error, files_under, work  # noqa: F401 (work is a fixture)
from triton_helpers import load_triton_module, make_checkpoint

NAN_KEY = "bert.encoder.layer.0.attention.self.query.weight"


def with_nan_weight(source: Path, target: Path, key: str = NAN_KEY, value: float = float("nan")) -> Path:
    """A copy of checkpoint `source` ({'model': sd}) with one value of tensor `key` set to `value`."""
    state = torch.load(source, weights_only=True)["model"]
    state[key].view(-1)[3] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, target)
    for beside in ("bert_config.json", "vocab.txt"):
        if (source.parent / beside).is_file():
            shutil.copyfile(source.parent / beside, target.parent / beside)
    return target


# --------------------------------------------------------------------------------------------
# 10. Non-finite weights are refused at load, by every downstream entry point
# --------------------------------------------------------------------------------------------


def non_finite_cases(w: Path, t: Path) -> list[tuple[str, list, Path]]:
    nan_ckpt = with_nan_weight(w / "ckpt.pt", t / "nan" / "ckpt.pt")
    inf_ckpt = with_nan_weight(w / "ckpt.pt", t / "inf" / "ckpt.pt", value=float("inf"))
    qa = make_checkpoint(t / "qa_source")
    nan_qa = with_nan_weight(qa / "pytorch_model.bin", t / "nan_qa" / "pytorch_model.bin")
    out = t / "out"
    return [
        ("triton/export", ["--checkpoint", nan_qa.parent, "--output_dir", out, "--format", "ts-trace"], nan_qa.parent),
        ("run_squad", ["--init_checkpoint", nan_ckpt, "--vocab_file", w / "vocab.txt", "--output_dir", out,
                       "--do_predict", "--predict_file", w / "dev.json"], nan_ckpt),
        ("extract_features", ["--init_checkpoint", nan_ckpt, "--vocab_file", w / "vocab.txt", "--input_file",
                              w / "vocab.txt", "--output_file", out / "f.jsonl", "--layers", "-1"], nan_ckpt),
        ("convert_checkpoint", ["--to_hf", nan_ckpt, out / "hf", "--vocab_file", w / "vocab.txt"], nan_ckpt),
        ("convert_checkpoint", ["--to_hf", inf_ckpt, out / "hf", "--vocab_file", w / "vocab.txt"], inf_ckpt),
        ("inference", ["--init_checkpoint", nan_qa.parent, "--vocab_file", w / "vocab.txt", "--question", "Who?",
                       "--context", "Someone."], nan_qa.parent),
    ]


NON_FINITE_IDS = ["export", "squad-predict", "extract-features", "convert-to-hf", "convert-to-hf-inf", "inference"]


@pytest.mark.parametrize("index", range(len(NON_FINITE_IDS)), ids=NON_FINITE_IDS)
def test_non_finite_weights_are_refused_at_load_naming_the_tensor(tmp_path, capsys, work, index):  # noqa: F811
    cases = non_finite_cases(work, tmp_path)
    assert len(cases) == len(NON_FINITE_IDS)
    name, argv, source = cases[index]
    assert_one_line_error(capsys, name, argv, f"{source}: tensor {NAN_KEY} holds NaN or infinite values")
    assert not [p for p in files_under(tmp_path / "out") if p.name != "dllogger.json"]


def test_export_parity_check_counts_nan_as_a_difference():
    """NaN − NaN is NaN and max(0.0, nan) is 0.0: the old check reported a NaN export as identical."""
    export = load_triton_module("export")
    finite = np.array([[1.0, 2.0]], dtype=np.float32)
    assert export.nan_aware_max_difference(finite, finite + 0.5) == pytest.approx(0.5)
    for broken in (np.array([[np.nan, 2.0]], dtype=np.float32), np.array([[1.0, np.inf]], dtype=np.float32)):
        assert export.nan_aware_max_difference(broken, finite) == float("inf")
        assert export.nan_aware_max_difference(finite, broken) == float("inf")
        assert export.nan_aware_max_difference(broken, broken.copy()) == float("inf")
