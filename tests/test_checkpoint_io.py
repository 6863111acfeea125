"""Damaged checkpoint files: the one reader names the file and what is wrong, and every script that loads
weights turns that into one `error:` line and exit code 2 — no traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, script_env

from checkpoint_io import CheckpointError, load_config_for_checkpoint, read_state_dict
from data import shard_creation as cpd
from modeling import BertConfig, BertModel

TINY = ROOT / "bert_configs" / "tiny.json"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "dog", "runs", "?"]


def small_config() -> BertConfig:
    return BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=16)


def good_checkpoint(path: Path) -> Path:
    torch.save({"model": BertModel(small_config()).state_dict()}, path)
    return path


def damage(kind: str, path: Path, good: Path) -> Path:
    """An empty file, or the first third of a real checkpoint (a save cut short)."""
    data = good.read_bytes()
    path.write_bytes(b"" if kind == "empty" else data[: len(data) // 3])
    return path


# --------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "message"),
                         [("empty", "empty file"), ("truncated", "truncated or not a checkpoint: ")])
@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_damaged_torch_file_is_one_line_checkpoint_error(tmp_path, kind, message, suffix):
    bad = damage(kind, tmp_path / f"model{suffix}", good_checkpoint(tmp_path / "good.pt"))
    with pytest.raises(CheckpointError) as err:
        read_state_dict(bad)
    text = str(err.value)
    assert text.startswith(f"{bad}: {message}")
    assert "\n" not in text


@pytest.mark.parametrize(("kind", "message"), [("empty", "empty file"),
                                               ("truncated", "truncated or not a safetensors file: ")])
def test_damaged_safetensors_is_one_line_checkpoint_error(tmp_path, kind, message):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file(BertModel(small_config()).state_dict(), str(good))
    bad = damage(kind, tmp_path / "model.safetensors", good)
    with pytest.raises(CheckpointError, match=f"^{bad}: {message}"):
        read_state_dict(tmp_path)  # a folder resolves to its model.safetensors


def test_foreign_text_file_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=f"^{bad}: truncated or not a checkpoint: "):
        read_state_dict(bad)


def test_pickled_objects_are_refused_not_unpickled(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Path("/")}, bad)  # a class instance: needs unpickling
    with pytest.raises(CheckpointError, match="never unpickled"):
        read_state_dict(bad)


def test_stored_config_of_a_pretraining_checkpoint_is_used_when_allowed(tmp_path):
    config = small_config()
    ckpt = tmp_path / "ckpt_5.pt"
    torch.save({"model": BertModel(config).state_dict(), "config": config.to_dict()}, ckpt)
    with pytest.raises(Exception, match="no --config_file given"):
        load_config_for_checkpoint(ckpt)
    assert load_config_for_checkpoint(ckpt, allow_stored=True).to_dict() == config.to_dict()
    damage("empty", ckpt, ckpt)
    with pytest.raises(CheckpointError, match="empty file"):
        load_config_for_checkpoint(ckpt, allow_stored=True)


# --------------------------------------------------------------------------------------------
# Every script that loads weights
# --------------------------------------------------------------------------------------------


def write_inputs(folder: Path) -> dict[str, Path]:
    """A vocab, a one-row pretraining shard, SQuAD/GLUE/SWAG-shaped files: just enough for each script to
    reach the point where it loads the checkpoint."""
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    shards = folder / "shards"
    shards.mkdir()
    cpd.write_shard({
        "input_ids": np.array([[2, 5, 4, 3, 7, 3, 0, 0]], dtype=np.int32),
        "input_mask": np.array([[1] * 6 + [0] * 2], dtype=np.int8),
        "segment_ids": np.array([[0, 0, 0, 0, 1, 1, 0, 0]], dtype=np.int8),
        "masked_lm_positions": np.array([[2, 0]], dtype=np.int32),
        "masked_lm_ids": np.array([[6, 0]], dtype=np.int32),
        "next_sentence_labels": np.array([0], dtype=np.int8),
    }, shards / "tiny_training_test_0.hdf5")
    text = folder / "texts.txt"
    text.write_text("the dog runs\n")
    squad = folder / "dev.json"
    squad.write_text('{"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "the dog runs", '
                     '"qas": [{"id": "q1", "question": "the dog ?", "answers": [{"text": "runs", "answer_start": '
                     '8}]}]}]}]}')
    glue = folder / "glue"  # GLUE and SWAG dev files are read before the weights, so they must be valid
    glue.mkdir()
    (glue / "dev.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tthe dog runs\tthe dog runs\n")
    (glue / "val.csv").write_text("video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,"
                                  "ending3,label\nv,0,the dog runs,the dog,runs,gold,a,b,c,d,0\n")
    return {"vocab": vocab, "shards": shards, "text": text, "squad": squad, "glue": glue}


def script_commands(ckpt: Path, inputs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    common = ["--config_file", str(TINY), "--vocab_file", str(inputs["vocab"])]
    finetune = ["--init_checkpoint", str(ckpt), *common, "--output_dir", str(out), "--json-summary",
                str(out.parent / "dll.json"), "--disable_progress_bar"]
    return {
        "run_pretraining.py": ["--input_dir", str(inputs["shards"]), "--config_file", str(TINY), "--output_dir",
                               str(out), "--init_checkpoint", str(ckpt), "--do_train", "--max_steps", "1",
                               "--train_batch_size", "1", "--max_seq_length", "8", "--max_predictions_per_seq", "2",
                               "--json-summary", str(out.parent / "dll.json"), "--disable_progress_bar"],
        "run_squad.py": [*finetune, "--do_predict", "--predict_file", str(inputs["squad"])],
        "run_glue.py": [*finetune, "--task_name", "mrpc", "--data_dir", str(inputs["glue"]), "--do_eval"],
        "run_swag.py": [*finetune, "--data_dir", str(inputs["glue"]), "--do_eval"],
        "inference.py": ["--init_checkpoint", str(ckpt), *common],
        "extract_features.py": ["--init_checkpoint", str(ckpt), *common, "--input_file", str(inputs["text"]),
                                "--output_file", str(out.parent / "features.jsonl"), "--layers", "-1"],
        "convert_checkpoint.py": ["--to_hf", str(ckpt), str(out), "--config_file", str(TINY)],
        "triton/export.py": ["--checkpoint", str(ckpt), "--config_file", str(TINY), "--output_dir", str(out)],
        "run_pretraining_inference.py": ["--init_checkpoint", str(ckpt), "--config_file", str(TINY), "--eval_dir",
                                         str(inputs["shards"]), "--disable_progress_bar",
                                         "--json-summary", str(out.parent / "dll.json")],
    }


SCRIPTS = ("run_pretraining.py", "run_squad.py", "run_glue.py", "run_swag.py", "inference.py", "extract_features.py",
           "convert_checkpoint.py", "triton/export.py", "run_pretraining_inference.py")


@pytest.mark.parametrize("kind", ["empty", "truncated"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_weight_loading_script_reports_a_damaged_checkpoint_in_one_line(tmp_path, script, kind):
    inputs = write_inputs(tmp_path)
    ckpt = damage(kind, tmp_path / "pytorch_model.bin", good_checkpoint(tmp_path / "good.pt"))
    out = tmp_path / "out"
    argv = script_commands(ckpt, inputs, out)[script]
    proc = subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True,
                          env=script_env(), cwd=tmp_path, timeout=300)
    expected = f"error: {ckpt}: " + ("empty file" if kind == "empty" else "truncated or not a checkpoint: ")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and error_lines[0].startswith(expected), proc.stderr[-2000:]
    assert not any(out.glob("*.safetensors")) and not any(out.glob("*.onnx"))  # nothing written from bad weights
