"""triton/model_repository.py: every generated config.pbtxt parses as Triton's ModelConfig message.

Parsing uses tritonclient's own protobuf definition (the one the server uses), so a typo in a field
name, a wrong enum or a misplaced bracket fails here rather than at server start.
"""
from __future__ import annotations

import json

import pytest
from triton_helpers import TRITON_DIR, load_triton_module, run_script

from input_checks import InputError

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


@pytest.fixture(scope="module")
def mr():
    return load_triton_module("model_repository")


def parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def params(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


@pytest.mark.parametrize("backend, platform, suffixes", [
    ("onnxruntime", "onnxruntime_onnx", False),
    ("pytorch", "pytorch_libtorch", True),
    ("python", "", False),
])
def test_tensor_model_config_parses_for_each_backend(mr, backend, platform, suffixes):
    spec = mr.TensorModelSpec(backend=backend, max_batch_size=16, dyn_batching_delay_ms=2.5, engine_count=2,
                              kind="gpu", gpus=[0, 1])
    config = parse(mr.tensor_model_config(spec))
    assert config.name == "bert"
    assert config.platform == platform
    assert config.backend == ("python" if backend == "python" else "")
    assert config.max_batch_size == 16
    inputs = ["input_ids__0", "token_type_ids__1", "attention_mask__2"] if suffixes else \
        ["input_ids", "token_type_ids", "attention_mask"]
    outputs = ["start_logits__0", "end_logits__1"] if suffixes else ["start_logits", "end_logits"]
    assert [i.name for i in config.input] == inputs
    assert [o.name for o in config.output] == outputs
    assert all(i.data_type == model_config_pb2.TYPE_INT64 and list(i.dims) == [-1] for i in config.input)
    assert all(o.data_type == model_config_pb2.TYPE_FP32 and list(o.dims) == [-1] for o in config.output)
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    (group,) = config.instance_group
    assert (group.count, group.kind, list(group.gpus)) == (2, model_config_pb2.ModelInstanceGroup.KIND_GPU, [0, 1])
    if backend == "python":
        assert params(config) == {"runtime": "onnxruntime", "model_file": "model.onnx", "max_sequence": "512",
                                  "vocab_size": "30528", "type_vocab_size": "2", "intra_op_threads": "0"}


def test_static_batching_cpu_instances_and_classification_outputs(mr):
    spec = mr.TensorModelSpec(backend="onnxruntime", task="classification", num_labels=3, dyn_batching_delay_ms=-1,
                              kind="cpu", engine_count=4, intra_op_threads=2)
    config = parse(mr.tensor_model_config(spec))
    assert not config.HasField("dynamic_batching")
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [3])]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 4
    assert params(config) == {"intra_op_thread_count": "2"}


def test_cuda_graphs_and_torchscript_python_runtime(mr):
    graphs = parse(mr.tensor_model_config(mr.TensorModelSpec(backend="onnxruntime", capture_cuda_graph=True)))
    assert graphs.optimization.cuda.graphs is True
    python_ts = parse(mr.tensor_model_config(mr.TensorModelSpec(backend="python", runtime="torchscript")))
    assert params(python_ts)["model_file"] == "model.pt"


def test_text_model_config_parses_and_names_the_tensor_model(mr):
    tensor = mr.TensorModelSpec(backend="pytorch", max_batch_size=4)
    text = mr.TextModelSpec(tensor=tensor, do_lower_case=False, doc_stride=64, max_context_chars=5000,
                            code_root='/srv/"odd" path\\x')
    config = parse(mr.text_model_config(text))
    assert (config.name, config.backend, config.max_batch_size) == ("bert_qa", "python", 8)
    assert [(i.name, i.data_type) for i in config.input] == [("question", model_config_pb2.TYPE_STRING),
                                                           ("context", model_config_pb2.TYPE_STRING)]
    assert [o.name for o in config.output] == ["answer", "nbest"]
    got = params(config)
    assert got["tensor_model"] == "bert"
    assert got["tensor_inputs"] == "input_ids__0,token_type_ids__1,attention_mask__2"
    assert got["tensor_outputs"] == "start_logits__0,end_logits__1"
    assert got["tensor_max_batch_size"] == "4"
    assert (got["do_lower_case"], got["doc_stride"], got["max_context_chars"]) == ("false", "64", "5000")
    assert got["code_root"] == '/srv/"odd" path\\x'  # quotes and backslashes survive the text format


@pytest.mark.parametrize("change, message", [
    ({"backend": "tensorrt"}, "backend 'tensorrt'"),
    ({"max_batch_size": 0}, "--max-batch-size"),
    ({"task": "classification"}, "num_labels"),
    ({"gpus": [0]}, "--gpus needs --device gpu"),
])
def test_bad_specs_are_refused_with_a_clear_message(mr, change, message):
    with pytest.raises(InputError, match=message):
        mr.tensor_model_config(mr.TensorModelSpec(**change))


def fake_export(folder, task="qa"):
    """An export folder as triton/export.py leaves it (contents of the model files do not matter here)."""
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx bytes")
    (folder / "model.pt").write_bytes(b"torchscript bytes")
    info = {"task": task, "files": {"onnx": "model.onnx", "ts-trace": "model.pt"}, "max_position_embeddings": 512,
            "vocab_size": 30528, "type_vocab_size": 2,
            "outputs": {"logits": {"shape": ["batch", 2]}} if task == "classification" else {}}
    (folder / "export_info.json").write_text(json.dumps(info))
    return folder


def test_cli_writes_the_repository_layout_for_each_backend(tmp_path, mr):
    export = fake_export(tmp_path / "export")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n")
    expected = {"onnxruntime": {"model.onnx"}, "pytorch": {"model.pt"}, "python": {"model.py", "model.onnx"}}
    for backend, files in expected.items():
        repo = tmp_path / f"repo_{backend}"
        mr.main(["--export-dir", str(export), "--model-repository", str(repo), "--backend", backend,
                 "--vocab_file", str(vocab), "--do_lower_case", "--model-version", "3"])
        assert {p.name for p in (repo / "bert" / "3").iterdir()} == files
        assert {p.name for p in (repo / "bert_qa" / "3").iterdir()} == {"model.py", "vocab.txt"}
        for model in ("bert", "bert_qa"):
            parse((repo / model / "config.pbtxt").read_text())
        assert not [p for p in repo.iterdir() if p.name.startswith(".tmp")]


def test_cli_refuses_to_overwrite_and_needs_an_export(tmp_path, mr):
    export = fake_export(tmp_path / "export")
    repo = tmp_path / "repo"
    args = ["--export-dir", str(export), "--model-repository", str(repo), "--no-text-model"]
    mr.main(args)
    with pytest.raises(InputError, match=r"already exists \(pass --overwrite"):
        mr.main(args)
    mr.main([*args, "--overwrite", "--backend", "onnxruntime"])
    assert parse((repo / "bert" / "config.pbtxt").read_text()).platform == "onnxruntime_onnx"
    # As a command, a missing export is one line on stderr and exit status 2.
    missing = run_script(TRITON_DIR / "model_repository.py", "--export-dir", tmp_path / "nothing",
                         "--model-repository", repo, check=False)
    assert missing.returncode == 2 and "export_info.json not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_classification_export_gets_no_text_model(tmp_path, mr):
    export = fake_export(tmp_path / "export", task="classification")
    repo = tmp_path / "repo"
    mr.main(["--export-dir", str(export), "--model-repository", str(repo), "--backend", "onnxruntime"])
    assert [p.name for p in repo.iterdir()] == ["bert"]
    config = parse((repo / "bert" / "config.pbtxt").read_text())
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [2])]
