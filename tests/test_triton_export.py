"""triton/export.py: TorchScript and ONNX exports give PyTorch's logits on real SQuAD windows.

The exported files are reloaded here, independently of the script's own check, and run on SQuAD
windows the export never saw, at other batch sizes and sequence lengths (the axes are dynamic).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from triton_helpers import TRITON_DIR, load_triton_module, make_checkpoint, run_script, squad_dev, vocab_file

ATOL = 1e-4


@pytest.fixture(scope="module")
def squad_windows():
    """int64 inputs of SQuAD dev windows 16..27, plus the same rows cut to a shorter sequence."""
    from processors import squad
    from tokenization import FullTokenizer

    bert_io = load_triton_module("bert_io")
    tokenizer = FullTokenizer(str(vocab_file()), do_lower_case=True)
    examples = squad.read_squad_examples(squad_dev(), is_training=False)[16:28]
    features = squad.convert_examples_to_features(examples, tokenizer, max_seq_length=384)
    full = bert_io.feature_arrays(features[:12])
    longest = int(full["attention_mask"][:3].sum(axis=1).max())
    short = {k: v[:3, :longest] for k, v in full.items()}
    return [full, short]


@pytest.fixture(scope="module")
def qa_export(tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    checkpoint = make_checkpoint(work / "ckpt")
    out = work / "export"
    done = run_script(TRITON_DIR / "export.py", "--checkpoint", checkpoint, "--output_dir", out,
                      "--format", "onnx", "ts-trace", "--vocab_file", vocab_file(), "--do_lower_case",
                      "--predict_file", squad_dev(), "--batch_size", "4", "--nbatches", "2")
    return checkpoint, out, done.stdout


def pytorch_logits(checkpoint, batch):
    bert_io = load_triton_module("bert_io")
    model = bert_io.load_finetuned_model(checkpoint, None, "qa")
    with torch.no_grad():
        outputs = model(*(torch.from_numpy(batch[name]) for name in bert_io.INPUT_NAMES))
    return [t.numpy() for t in outputs]


def test_onnx_matches_pytorch_on_squad_windows(qa_export, squad_windows):
    import onnxruntime as ort

    checkpoint, out, _ = qa_export
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "token_type_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["start_logits", "end_logits"]
    for batch in squad_windows:
        got = session.run(None, batch)
        for mine, ref in zip(got, pytorch_logits(checkpoint, batch), strict=True):
            assert mine.shape == ref.shape == batch["input_ids"].shape
            np.testing.assert_allclose(mine, ref, atol=ATOL, rtol=0)


def test_torchscript_matches_pytorch_on_squad_windows(qa_export, squad_windows):
    checkpoint, out, _ = qa_export
    module = torch.jit.load(str(out / "model.pt"))
    for batch in squad_windows:
        with torch.no_grad():
            got = module(*(torch.from_numpy(batch[n]) for n in ("input_ids", "token_type_ids", "attention_mask")))
        for mine, ref in zip(got, pytorch_logits(checkpoint, batch), strict=True):
            assert tuple(mine.shape) == ref.shape == batch["input_ids"].shape
            np.testing.assert_allclose(mine.numpy(), ref, atol=ATOL, rtol=0)


def test_export_info_and_reported_errors(qa_export):
    _, out, stdout = qa_export
    info = json.loads((out / "export_info.json").read_text())
    assert info["files"] == {"onnx": "model.onnx", "ts-trace": "model.pt"}
    assert info["task"] == "qa" and info["max_position_embeddings"] == 512 and info["vocab_size"] == 30528
    errors = json.loads(stdout.strip().splitlines()[-1])["max_abs_diff"]
    assert set(errors) == {"onnx", "ts-trace"} and max(errors.values()) <= ATOL


def test_classification_onnx_export_matches_pytorch(tmp_path):
    import onnxruntime as ort

    bert_io = load_triton_module("bert_io")
    checkpoint = make_checkpoint(tmp_path / "cls", task="classification", num_labels=3)
    run_script(TRITON_DIR / "export.py", "--checkpoint", checkpoint, "--task", "classification",
               "--output_dir", tmp_path / "out", "--format", "onnx", "--max_seq_length", "64")
    batch = bert_io.random_token_batch(np.random.default_rng(5), 5, 40)
    model = bert_io.load_finetuned_model(checkpoint, None, "classification")
    with torch.no_grad():
        ref = model(*(torch.from_numpy(batch[n]) for n in bert_io.INPUT_NAMES)).numpy()
    got = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, batch)
    assert got[0].shape == (5, 3)
    np.testing.assert_allclose(got[0], ref, atol=ATOL, rtol=0)


def test_export_fails_when_the_check_tolerance_is_not_met(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    done = run_script(TRITON_DIR / "export.py", "--checkpoint", checkpoint, "--output_dir", tmp_path / "out",
                      "--format", "onnx", "--max_seq_length", "32", "--atol", "0", check=False)
    assert done.returncode != 0
    assert "onnx export differs from PyTorch" in done.stderr


def test_export_rejects_a_checkpoint_without_qa_head(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "cls", task="classification")
    done = run_script(TRITON_DIR / "export.py", "--checkpoint", checkpoint, "--output_dir", tmp_path / "out",
                      check=False)
    assert done.returncode == 2
    assert "qa_outputs" in done.stderr and len(done.stderr.strip().splitlines()) == 1
