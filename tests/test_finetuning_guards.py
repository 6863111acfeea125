"""Fine-tuning never trains on or saves non-finite numbers (issue 22, item 3): a NaN or infinite STS-B
score is refused on reading, a run whose loss turns non-finite stops with one line, and no NaN
weights are ever written to pytorch_model.bin. Listed in docs/reliability.md.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, script_env, shared_path
from test_bad_inputs import assert_one_line_error, files_under, glue_argv, glue_folder, work, write  # noqa: F401

import finetuning as ft
from distributed import DistEnv
from input_checks import InputError
from modeling import BertConfig, BertForSequenceClassification
from run_log import Logger
from training import LOCK_NAME


def sts_folder(folder: Path, score: str, row: int = 3) -> Path:
    """An STS-B folder of real rows (8 train, 8 dev) whose train.tsv row `row` (1 = first after the header)
    has `score`."""
    src = shared_path("glue", "STS-B")
    for name in ("train.tsv", "dev.tsv"):
        lines = (src / name).read_text(encoding="utf-8").splitlines(keepends=True)[:9]
        if name == "train.tsv":
            fields = lines[row].rstrip("\n").split("\t")
            fields[-1] = score
            lines[row] = "\t".join(fields) + "\n"
        write(folder / name, "".join(lines))
    return folder


@pytest.mark.parametrize("score", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_non_finite_sts_b_scores_are_refused_on_reading(tmp_path, capsys, work, score):  # noqa: F811
    data = sts_folder(tmp_path / "sts", score)
    out = tmp_path / "out"
    argv = ["--task_name", "sts-b", "--data_dir", data, "--init_checkpoint", work / "ckpt.pt", "--vocab_file",
            work / "vocab.txt", "--output_dir", out, "--do_train", "--do_eval"]
    assert_one_line_error(capsys, "run_glue", argv, f"{data / 'train.tsv'}:4: score '{score}' is not a finite number")
    assert [p.name for p in files_under(out)] == ["dllogger.json"]  # no model, no results


def test_a_diverging_fine_tuning_run_stops_with_one_line_and_writes_no_model(tmp_path, work):  # noqa: F811
    """MRPC with --learning_rate 1e6: AdamW's weight decay alone multiplies the weights by 1 - 1e4 per update,
    so they overflow within a few updates; the run used to save that model and report metrics."""
    out = tmp_path / "out"
    argv = glue_argv(work, glue_folder(tmp_path / "glue"), out, "--do_train", "--do_eval", "--learning_rate", "1e6",
                     "--train_batch_size", 2, "--num_train_epochs", 10, "--max_seq_length", 32,
                     "--disable_progress_bar")
    proc = subprocess.run([sys.executable, str(ROOT / "run_glue.py"), *map(str, argv)], env=script_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: training diverged: 10 updates in a row had a non-finite loss "
                           "(fp32, last loss "), line
    assert "no model written" in line and "Traceback" not in proc.stdout + proc.stderr
    assert not (out / "pytorch_model.bin").exists() and not (out / "results.txt").exists()
    assert not (out / LOCK_NAME).exists()  # released at the end of the process


def test_save_model_refuses_non_finite_weights(tmp_path):
    config = BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    model = BertForSequenceClassification(config, num_labels=2)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("inf")
    args = argparse.Namespace(skip_checkpoint=False)
    ctx = ft.RunContext(args, DistEnv(), "fp32", Logger(None, enabled=False), 1, tmp_path)
    with pytest.raises(InputError,
                       match=r"weights are not finite \(classifier.weight\); .*pytorch_model.bin not written"):
        ft.save_model(ctx, model, config)
    assert list(tmp_path.iterdir()) == []
