"""triton/export.py: TorchScript (traced and scripted) and ONNX exports give PyTorch's logits on real SQuAD windows.

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


def export_qa(work, *formats: str):
    checkpoint = make_checkpoint(work / "ckpt")
    out = work / "export"
    done = run_script(TRITON_DIR / "export.py", "--checkpoint", checkpoint, "--output_dir", out,
                      "--format", *formats, "--vocab_file", vocab_file(), "--do_lower_case",
                      "--predict_file", squad_dev(), "--batch_size", "4", "--nbatches", "2")
    return checkpoint, out, done.stdout


@pytest.fixture(scope="module")
def qa_export(tmp_path_factory):
    return export_qa(tmp_path_factory.mktemp("export"), "onnx", "ts-trace")


@pytest.fixture(scope="module")
def qa_script_export(tmp_path_factory):
    """The same checkpoint (same seed) compiled with torch.jit.script."""
    return export_qa(tmp_path_factory.mktemp("export_script"), "ts-script")


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


@pytest.mark.parametrize("export", ["qa_export", "qa_script_export"])
def test_torchscript_matches_pytorch_on_squad_windows(export, squad_windows, request):
    checkpoint, out, _ = request.getfixturevalue(export)
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


def test_ts_script_export_is_compiled_code_with_its_control_flow(qa_script_export, squad_windows):
    """Scripted, not traced: the graph keeps branches, and train() turns dropout on as in PyTorch
    (a traced graph records one evaluation run and ignores the mode)."""
    checkpoint, out, stdout = qa_script_export
    info = json.loads((out / "export_info.json").read_text())
    assert info["files"] == {"ts-script": "model.pt"}
    errors = json.loads(stdout.strip().splitlines()[-1])["max_abs_diff"]
    assert set(errors) == {"ts-script"} and errors["ts-script"] <= ATOL
    module = torch.jit.load(str(out / "model.pt"))
    assert "prim::If" in str(module.inlined_graph)
    inputs = [torch.from_numpy(squad_windows[1][n]) for n in ("input_ids", "token_type_ids", "attention_mask")]
    with torch.no_grad():
        evaluated = module(*inputs)[0]
        module.train()
        torch.manual_seed(0)
        trained = module(*inputs)[0]
        module.eval()
        again = module(*inputs)[0]
    assert not torch.equal(trained, evaluated)
    assert torch.equal(again, evaluated)


def test_ts_script_failure_is_one_clear_error(tmp_path):
    """A model TorchScript cannot compile: an InputError naming the alternative, and no model.pt."""
    import bert_kernels
    from input_checks import InputError

    export = load_triton_module("export")

    class PythonOnlyDropout(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor):
            return bert_kernels.dropout(input_ids.float(), 0.1, self.training)  # reads a module global

    with pytest.raises(InputError, match=r"^torch.jit.script cannot compile this model \(.+\): use --format ts-trace"):
        export.export_torchscript(export.ExportWrapper(PythonOnlyDropout()), (), tmp_path / "model.pt", "ts-script")
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("fmt", ["onnx", "ts-script"])
def test_classification_export_matches_pytorch(tmp_path, fmt):
    bert_io = load_triton_module("bert_io")
    checkpoint = make_checkpoint(tmp_path / "cls", task="classification", num_labels=3)
    run_script(TRITON_DIR / "export.py", "--checkpoint", checkpoint, "--task", "classification",
               "--output_dir", tmp_path / "out", "--format", fmt, "--max_seq_length", "64")
    batch = bert_io.random_token_batch(np.random.default_rng(5), 5, 40)
    model = bert_io.load_finetuned_model(checkpoint, None, "classification")
    inputs = [torch.from_numpy(batch[n]) for n in bert_io.INPUT_NAMES]
    with torch.no_grad():
        ref = model(*inputs).numpy()
        if fmt == "onnx":
            import onnxruntime as ort

            got = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                                       providers=["CPUExecutionProvider"]).run(None, batch)[0]
        else:
            got = torch.jit.load(str(tmp_path / "out" / "model.pt"))(*inputs).numpy()
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


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
