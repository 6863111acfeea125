"""triton/scripts/*.sh and the deployer flags, with the original's arguments, run for real on a tiny model.

export_model.sh's twelve positional arguments, the original deployer's flag names on
model_repository.py, and launch → wait → run_perf_client.sh / evaluate.sh against the real
tritonserver bundled with nvidia-pytriton (python backend; no container here).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, script_env
from triton_helpers import TRITON_DIR, free_port, load_triton_module, make_checkpoint, run_script, squad_dev, vocab_file

from input_checks import InputError

SCRIPTS = TRITON_DIR / "scripts"
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse_config(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def script_environment(**extra: str) -> dict[str, str]:
    env = script_env()
    env.update(PYTHON=sys.executable, TRITON_LAUNCHER="python", **extra)
    for name in ("VOCAB_FILE", "PREDICT_FILE", "BERT_DIR"):
        if name not in extra:
            env.pop(name, None)
    return env


def run_sh(script: str, *args, env: dict[str, str], timeout: float = 600, check: bool = True):
    done = subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, (f"{script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                                      f"{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny QA checkpoint and a BERT_DIR (bert_config.json + vocab.txt) as the original's scripts expect."""
    work = tmp_path_factory.mktemp("scripts")
    checkpoint = make_checkpoint(work / "ckpt")
    bert_dir = work / "bert_dir"
    bert_dir.mkdir()
    shutil.copy(checkpoint / "bert_config.json", bert_dir / "bert_config.json")
    shutil.copy(vocab_file(), bert_dir / "vocab.txt")
    return work, checkpoint, bert_dir


# --------------------------------------------------------------------------------------------
# export_model.sh
# --------------------------------------------------------------------------------------------


def test_export_model_sh_takes_the_originals_positional_arguments(tiny, tmp_path):
    _, checkpoint, bert_dir = tiny
    repo = tmp_path / "repo"
    env = script_environment(MODEL_REPOSITORY=str(repo), EXPORT_DIR=str(tmp_path / "export"))
    #      GPUS BRIDGE     CHECKPOINT  BATCH BERT_DIR  FORMAT  PREC  VER NAME   DELAY ENGINES OVERWRITE extras...
    args = ["0", "host", checkpoint, "4", bert_dir, "onnx", "fp32", "3", "squad", "0", "2", "True",
            "--backend", "python"]
    run_sh("export_model.sh", *args, env=env)
    config = parse_config(repo / "squad" / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("squad", "python", 4)
    assert not config.HasField("dynamic_batching")  # delay 0: static batching, as the original
    assert config.instance_group[0].count == 2
    assert sorted(p.name for p in (repo / "squad" / "3").iterdir()) == ["model.onnx", "model.py"]
    text = parse_config(repo / "squad_qa" / "config.pbtxt")  # vocab.txt in BERT_DIR: the text model too
    assert text.parameters["tensor_model"].string_value == "squad"
    assert (repo / "squad_qa" / "3" / "vocab.txt").read_bytes() == vocab_file().read_bytes()

    # OVERWRITE False keeps what is there.
    refused = run_sh("export_model.sh", *args[:11], "False", env=env, check=False)
    assert refused.returncode == 2 and "already exists (pass --overwrite" in refused.stderr

    # TorchScript for the libtorch backend (the original's pairing), dynamic batching at 5 ms, default name.
    run_sh("export_model.sh", "0", "tritonnet", checkpoint, "2", "", "ts-trace", "fp32", "1", "", "5", "1",
           "true", env=env)
    config = parse_config(repo / "bertQA-ts-trace" / "config.pbtxt")
    assert (config.platform, config.max_batch_size) == ("pytorch_libtorch", 2)
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert [p.name for p in (repo / "bertQA-ts-trace" / "1").iterdir()] == ["model.pt"]
    assert not (repo / "bertQA-ts-trace_qa").exists()  # no vocab given or found: no text model


@pytest.mark.parametrize("position, value, message", [
    (3, "eight", "BATCH_SIZE (4th argument) must be a positive integer, got 'eight'"),
    (4, "/nonexistent", "BERT_DIR (5th argument): /nonexistent/bert_config.json not found"),
    (5, "tensorrt", "EXPORT_FORMAT (6th argument) must be onnx, ts-trace or ts-script, not 'tensorrt'"),
    (6, "int8", "PRECISION (7th argument) must be fp16 or fp32, not 'int8'"),
    (9, "soon", "DYN_BATCHING_DELAY_MS (10th argument) must be a number, got 'soon'"),
    (11, "maybe", "OVERWRITE (12th argument) must be True or False, not 'maybe'"),
])
def test_export_model_sh_bad_arguments_are_one_line_errors(tmp_path, position, value, message):
    args = ["0", "host", tmp_path / "ckpt", "8", "", "onnx", "fp32", "1", "bert", "0", "1", "False"]
    args[position] = value
    done = run_sh("export_model.sh", *args, env=script_environment(MODEL_REPOSITORY=str(tmp_path)), check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: export_model.sh: {message}"]


def test_export_model_sh_ts_script_gives_a_compiled_libtorch_model_equal_to_pytorch(tiny, tmp_path):
    """EXPORT_FORMAT ts-script, the original's default: torch.jit.script's model.pt in a
    pytorch_libtorch repository, with PyTorch's logits."""
    _, checkpoint, _ = tiny
    repo = tmp_path / "repo"
    env = script_environment(MODEL_REPOSITORY=str(repo), EXPORT_DIR=str(tmp_path / "export"))
    #                                                      FORMAT (default)                NAME (default)
    run_sh("export_model.sh", "0", "host", checkpoint, "2", "", "", "fp32", "1", "", "0", "1", "False", env=env)
    config = parse_config(repo / "bertQA-ts-script" / "config.pbtxt")
    assert (config.platform, config.max_batch_size) == ("pytorch_libtorch", 2)
    assert [i.name for i in config.input] == ["input_ids__0", "token_type_ids__1", "attention_mask__2"]
    module = torch.jit.load(str(repo / "bertQA-ts-script" / "1" / "model.pt"))
    assert "prim::If" in str(module.inlined_graph)  # compiled code; a traced graph has no branches

    bert_io = load_triton_module("bert_io")
    batch = bert_io.random_token_batch(np.random.default_rng(3), 3, 24)
    inputs = [torch.from_numpy(batch[n]) for n in bert_io.INPUT_NAMES]
    with torch.no_grad():
        got = module(*inputs)
        ref = bert_io.load_finetuned_model(checkpoint, None, "qa")(*inputs)
    for mine, theirs in zip(got, ref, strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# The original deployer's flags on model_repository.py / export.py
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_export(tmp_path):
    """An export folder as triton/export.py leaves it (the model file's contents do not matter here)."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx bytes")
    info = {"task": "qa", "files": {"onnx": "model.onnx"}, "max_position_embeddings": 512, "vocab_size": 30528,
            "type_vocab_size": 2, "outputs": {}}
    (folder / "export_info.json").write_text(json.dumps(info))
    return folder


def test_deployer_flag_names_write_the_same_repository(fake_export, tmp_path):
    mr = load_triton_module("model_repository")
    new, old = tmp_path / "new", tmp_path / "old"
    mr.main(["--export-dir", str(fake_export), "--no-text-model", "--backend", "onnxruntime",
             "--model-repository", str(new), "--model-name", "qa", "--model-version", "2", "--max-batch-size", "16",
             "--dyn-batching-delay", "3", "--engine-count", "4", "--device", "cpu", "--capture-cuda-graph"])
    mr.main(["--export-dir", str(fake_export), "--no-text-model", "--backend", "onnxruntime",
             "--save-dir", str(old), "--triton-model-name", "qa", "--triton-model-version", "2",
             "--triton-max-batch-size", "16", "--triton-dyn-batching-delay", "3", "--triton-engine-count", "4",
             "--triton-no-cuda", "--capture-cuda-graph", "1", "--triton-server-url", "localhost:8001"])
    assert (old / "qa" / "config.pbtxt").read_text() == (new / "qa" / "config.pbtxt").read_text()
    assert (old / "qa" / "2" / "model.onnx").is_file()
    config = parse_config(old / "qa" / "config.pbtxt")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.optimization.cuda.graphs is True
    assert config.dynamic_batching.max_queue_delay_microseconds == 3000


@pytest.mark.parametrize("flags, dynamic, graphs", [
    (["--triton-dyn-batching-delay", "0"], False, False),     # the original's default: static batching
    (["--triton-dyn-batching-delay", "-1"], False, False),
    (["--dyn-batching-delay", "0"], True, False),             # ours: 0 ms is dynamic batching without delay
    (["--capture-cuda-graph", "0"], True, False),
])
def test_deployer_batching_delay_and_cuda_graph_keep_the_originals_meaning(fake_export, tmp_path, flags, dynamic,
                                                                           graphs):
    mr = load_triton_module("model_repository")
    mr.main(["--export-dir", str(fake_export), "--no-text-model", "--backend", "onnxruntime",
             "--save-dir", str(tmp_path / "repo"), *flags])
    config = parse_config(tmp_path / "repo" / "bert" / "config.pbtxt")
    assert config.HasField("dynamic_batching") is dynamic
    assert config.HasField("optimization") is graphs


def test_deployer_flags_refuse_contradictions_and_say_what_applies_on_cpu(fake_export, tmp_path):
    mr = load_triton_module("model_repository")
    with pytest.raises(SystemExit):
        mr.parse_args(["--export-dir", str(fake_export), "--triton-no-cuda", "--device", "gpu"])
    helped = run_script(TRITON_DIR / "model_repository.py", "--help").stdout
    for flag in ("--triton-model-name", "--triton-model-version", "--triton-max-batch-size",
                 "--triton-dyn-batching-delay", "--triton-engine-count", "--triton-no-cuda", "--save-dir",
                 "--capture-cuda-graph", "--triton-server-url"):
        assert flag in helped
    assert "no effect on CPU instances" in " ".join(helped.split())
    export = load_triton_module("export")
    assert export.parse_args(["--checkpoint", "c", "--output_dir", "o", "--triton-no-cuda", "--fp16"]).device == "cpu"
    with pytest.raises(SystemExit):
        export.parse_args(["--checkpoint", "c", "--output_dir", "o", "--triton-no-cuda", "--device", "cuda"])
    with pytest.raises(InputError, match="not found"):
        mr.main(["--export-dir", str(tmp_path / "none"), "--save-dir", str(tmp_path)])


# --------------------------------------------------------------------------------------------
# wait_for_triton_server.sh / run_perf_client.sh argument checks (no server needed)
# --------------------------------------------------------------------------------------------


def test_wait_for_triton_server_host_form_times_out_on_a_silent_port():
    port = free_port()
    env = script_environment(TRITON_HTTP_PORT=str(port))
    done = run_sh("wait_for_triton_server.sh", "127.0.0.1", "1", env=env, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"Triton server at 127.0.0.1:{port} not ready after 1 s"]
    bad = run_sh("wait_for_triton_server.sh", "127.0.0.1", "soon", env=env, check=False)
    assert bad.returncode == 2 and "TIMEOUT_S must be a whole number" in bad.stderr


@pytest.mark.parametrize("args, message", [
    (["bert", "1", "fp32", "1", "500", "10", "50", "localhost:8001"], "give SERVER_HOSTNAME without a port"),
    (["bert", "1", "fp32", "0"], "BATCH_SIZE must be a positive integer, got '0'"),
    (["bert", "1", "fp32", "1", "fast"], "MAX_LATENCY_MS must be a number, got 'fast'"),
    (["bert", "1", "fp32", "1", "500", "10", "50", "localhost", "host", "", "triton/profiling_data_int64"],
     "PROFILING_DATA must be 'random' or a SQuAD .json file"),
])
def test_run_perf_client_bad_arguments_are_one_line_errors(args, message):
    done = run_sh("run_perf_client.sh", *args, env=script_environment(), check=False)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: run_perf_client.sh: ") and message in line


def test_launch_triton_server_refuses_a_missing_repository(tmp_path):
    env = script_environment(MODEL_REPOSITORY=str(tmp_path / "absent"))
    done = run_sh("launch_triton_server.sh", "tritonnet", "--NV_VISIBLE_DEVICES=0", env=env, check=False)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: launch_triton_server.sh: model repository {tmp_path / 'absent'} "
                                        "not found (triton/scripts/export_model.sh writes it)"]


# --------------------------------------------------------------------------------------------
# A real server: launch (the original's form) → wait → run_perf_client.sh; evaluate.sh end to end
# --------------------------------------------------------------------------------------------

HAVE_SERVER = shutil.which("curl") is not None and importlib.util.find_spec("pytriton") is not None
needs_server = pytest.mark.skipif(not HAVE_SERVER, reason="curl or nvidia-pytriton (bundled tritonserver) missing")


def stop(pid: int, timeout: float = 120) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain `text` (a server left behind would)."""
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if text in line]


def perf_rows(results: Path) -> list[dict[str, str]]:
    (folder,) = results.iterdir()
    with open(folder / "perf.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@needs_server
def test_launch_wait_and_run_perf_client_with_the_originals_arguments(tiny, tmp_path):
    _, checkpoint, bert_dir = tiny
    repo = tmp_path / "repo"
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = script_environment(MODEL_REPOSITORY=str(repo), EXPORT_DIR=str(tmp_path / "export"),
                             TRITON_HTTP_PORT=str(http), TRITON_GRPC_PORT=str(grpc), TRITON_METRICS_PORT=str(metrics),
                             TRITON_SERVER_LOG=str(tmp_path / "server.log"), PERF_RESULTS_DIR=str(tmp_path / "perf"))
    run_sh("export_model.sh", "0", "host", checkpoint, "2", bert_dir, "onnx", "fp32", "1", "bert", "0", "1", "True",
           "--backend", "python", "--no-text-model", env=env)
    launched = run_sh("launch_triton_server.sh", "tritonnet", "--NV_VISIBLE_DEVICES=0", env=env)
    pid = int(launched.stdout.strip())
    try:
        ready = run_sh("wait_for_triton_server.sh", "127.0.0.1", "180", env=env, check=False)
        assert ready.returncode == 0, (tmp_path / "server.log").read_text(errors="replace")[-3000:]
        assert ready.stdout.strip() == f"Triton server at 127.0.0.1:{http} is ready"

        results = tmp_path / "perf" / "bert"
        #   MODEL VERSION PRECISION BATCH MAX_LATENCY THREADS CONCURRENCY HOST BRIDGE RESULTS_ID DATA GPUS
        run_sh("run_perf_client.sh", "bert", "1", "fp32", "2", "100000", "2", "3", "127.0.0.1", "host", "t1",
               "random", "0", "--requests", "3", "--warmup", "1", "--seq-length", "32", env=env)
        rows = perf_rows(results)
        assert [(r["batch_size"], r["concurrency"], r["requests"]) for r in rows] == [("2", "1", "3"), ("2", "2", "3")]
        assert [p.name.startswith("results_t1_") for p in results.iterdir()] == [True]
        shutil.rmtree(results)
        # A latency limit below any real latency: the sweep stops after concurrency 1, as perf_client -d -l.
        run_sh("run_perf_client.sh", "bert", "1", "fp32", "1", "0", "10", "50", "127.0.0.1", "host", "",
               "random", "0", "--requests", "2", "--warmup", "0", "--seq-length", "16", env=env)
        assert [r["concurrency"] for r in perf_rows(results)] == ["1"]
        shutil.rmtree(results)
    finally:
        stop(pid)
    assert not processes_mentioning(str(repo))


@pytest.mark.slow
@needs_server
def test_evaluate_sh_scores_squad_through_the_server(tiny, tmp_path):
    _, checkpoint, _ = tiny
    http = free_port()
    env = script_environment(
        VOCAB_FILE=str(vocab_file()), PREDICT_FILE=str(squad_dev()), OUT_DIR=str(tmp_path / "eval"),
        MODEL_REPOSITORY=str(tmp_path / "repo"), EXPORT_DIR=str(tmp_path / "export"), BATCH_SIZE="2",
        TRITON_HTTP_PORT=str(http), TRITON_GRPC_PORT=str(free_port()), TRITON_METRICS_PORT=str(free_port()),
        TRITON_SERVER_LOG=str(tmp_path / "server.log"))
    #                         BERT_MODEL PRECISION CHECKPOINT  FORMAT  run_squad_client.py flags
    done = run_sh("evaluate.sh", "tiny", "fp32", checkpoint, "onnx", "--max_questions", "4",
                  "--max_seq_length", "128", env=env)
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    assert scores["questions"] == 4 and {"exact_match", "f1"} <= set(scores)
    predictions = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert len(predictions) == 4
    assert parse_config(tmp_path / "repo" / "bert_tiny_fp32" / "config.pbtxt").backend == "python"
    # The server was stopped when the script ended.
    assert not processes_mentioning(str(tmp_path / "repo"))
