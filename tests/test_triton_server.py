"""A real Triton server (nvidia-pytriton's tritonserver, python backend) serving an exported QA model.

One server runs for the module: triton/export.py → triton/model_repository.py → triton/server.py on
free loopback ports. Real SQuAD questions go through triton/client.py over HTTP and gRPC and must
get inference.py's answers; triton/run_squad_client.py must score like run_squad.py --do_predict;
bad requests must get clear errors while the server keeps serving; and stopping the launcher by PID
must leave no tritonserver, backend stub or /dev/shm region behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, script_env
from triton_helpers import (
    TRITON_DIR,
    free_port,
    load_triton_module,
    make_checkpoint,
    run_script,
    squad_dev,
    subset_squad,
    vocab_file,
)

pytest.importorskip("pytriton", reason="nvidia-pytriton (bundled tritonserver) is not installed")
pytest.importorskip("tritonclient.grpc")

pytestmark = pytest.mark.slow

SHM = Path("/dev/shm")
SHM_GLOB = "triton_python_backend_shm_region_*"
MAX_CONTEXT_CHARS = 20_000


def cmdlines_containing(marker: str) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found[int(entry.name)] = cmdline
    return found


class Server:
    def __init__(self, process: subprocess.Popen, repo: Path, http: int, grpc: int, log: Path, checkpoint: Path):
        self.process, self.repo, self.log, self.checkpoint = process, repo, log, checkpoint
        self.http, self.grpc = f"127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        self.shm_prefix = f"triton_python_backend_shm_region_bert{process.pid}_"

    def url(self, protocol: str) -> str:
        return self.http if protocol == "http" else self.grpc

    def model(self, name: str, protocol: str = "http"):
        client_lib = load_triton_module("client_lib")
        return client_lib.TritonModel(self.url(protocol), protocol, name).load_metadata()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("serving")
    checkpoint = make_checkpoint(work / "ckpt")
    export_args = ["--checkpoint", checkpoint, "--max_seq_length", "64", "--batch_size", "2", "--nbatches", "1"]
    run_script(TRITON_DIR / "export.py", *export_args, "--output_dir", work / "export", "--format", "onnx", "ts-trace")
    run_script(TRITON_DIR / "export.py", *export_args, "--output_dir", work / "export_script", "--format", "ts-script")
    repo = work / "models"
    mr = load_triton_module("model_repository")
    common = ["--export-dir", str(work / "export"), "--model-repository", str(repo), "--backend", "python",
              "--threads", "2"]
    mr.main([*common, "--vocab_file", str(vocab_file()), "--do_lower_case",
             "--max-context-chars", str(MAX_CONTEXT_CHARS)])
    # The same weights as TorchScript (traced and scripted), also through the python backend.
    mr.main([*common, "--runtime", "torchscript", "--model-name", "bert_ts", "--no-text-model"])
    mr.main([*common, "--export-dir", str(work / "export_script"), "--runtime", "torchscript",
             "--model-name", "bert_ts_script", "--no-text-model"])
    http, grpc, metrics = free_port(), free_port(), free_port()
    log = work / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(TRITON_DIR / "server.py"), "--model-repository", str(repo),
             "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
            stdout=out, stderr=subprocess.STDOUT, env=script_env(), cwd=ROOT)
    served = Server(process, repo, http, grpc, log, checkpoint)
    client_lib = load_triton_module("client_lib")
    try:
        for name in ("bert", "bert_ts", "bert_ts_script", "bert_qa"):
            client_lib.TritonModel(served.http, "http", name).wait_ready(180)
    except Exception:
        process.kill()
        process.wait()
        pytest.fail(f"server did not become ready:\n{log.read_text(errors='replace')[-4000:]}")
    yield served
    if process.poll() is None:  # a failed test before the stop test: still leave nothing behind
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)


# --------------------------------------------------------------------------------------------
# Real questions: server answers == inference.py answers
# --------------------------------------------------------------------------------------------


def squad_cases() -> list[tuple[str, str]]:
    """Three real questions on their paragraphs, and one on a context of four paragraphs (> 384 tokens)."""
    dataset = json.loads(squad_dev().read_text(encoding="utf-8"))["data"]
    paragraphs = dataset[0]["paragraphs"]
    cases = [(paragraphs[i]["qas"][0]["question"], paragraphs[i]["context"]) for i in (0, 3, 7)]
    long_context = " ".join(p["context"] for p in paragraphs[:4])
    cases.append((paragraphs[2]["qas"][1]["question"], long_context))
    return cases


@pytest.fixture(scope="module")
def reference_answers(server):
    """inference.py (PyTorch) on the same checkpoint, windowing long contexts like run_squad.py."""
    import inference

    answers = []
    for question, context in squad_cases():
        args = inference.parse_args(["--init_checkpoint", str(server.checkpoint), "--vocab_file", str(vocab_file()),
                                     "--do_lower_case", "--n_best_size", "20", "--question", question,
                                     "--context", context])
        answers.append(inference.answer(args))
    return answers


def test_served_logits_match_pytorch_for_onnx_and_torchscript(server):
    """Real SQuAD windows through both python-backend runtimes (ONNX, traced and scripted TorchScript),
    against the PyTorch model."""
    import torch

    from processors import squad
    from tokenization import FullTokenizer

    bert_io = load_triton_module("bert_io")
    examples = squad.read_squad_examples(squad_dev(), is_training=False)[:6]
    features = squad.convert_examples_to_features(examples, FullTokenizer(str(vocab_file()), do_lower_case=True))
    batch = bert_io.feature_arrays(features[:6])
    model = bert_io.load_finetuned_model(server.checkpoint, None, "qa")
    with torch.no_grad():
        reference = [t.numpy() for t in model(*(torch.from_numpy(batch[n]) for n in bert_io.INPUT_NAMES))]
    for name, protocol in (("bert", "http"), ("bert_ts", "grpc"), ("bert_ts_script", "http")):
        got = server.model(name, protocol).infer(batch)
        np.testing.assert_allclose(got["start_logits"], reference[0], atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["end_logits"], reference[1], atol=1e-4, rtol=0)


def test_long_context_really_needs_windows():
    from tokenization import FullTokenizer

    question, context = squad_cases()[-1]
    assert len(FullTokenizer(str(vocab_file()), do_lower_case=True).tokenize(context)) > 384


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_gets_inference_py_answers(server, reference_answers, protocol, capsys):
    client = load_triton_module("client")  # its main(), in this process: a subprocess per question is slow
    for (question, context), (answer, nbest) in zip(squad_cases(), reference_answers, strict=True):
        client.main(["-u", server.url(protocol), "-i", protocol, "--question", question, "--context", context,
                     "--json"])
        got = json.loads(capsys.readouterr().out)
        assert got["answer"] == answer, question
        assert [e["text"] for e in got["nbest"][:3]] == [e["text"] for e in nbest[:3]]


def test_client_with_tensor_model_windows_on_the_client(server, reference_answers):
    question, context = squad_cases()[-1]
    done = run_script(TRITON_DIR / "client.py", "-u", server.grpc, "-i", "grpc", "-m", "bert",
                      "--vocab_file", vocab_file(), "--do_lower_case", "--question", question,
                      "--context", context, "--json")
    assert json.loads(done.stdout)["answer"] == reference_answers[-1][0]


# --------------------------------------------------------------------------------------------
# A SQuAD slice: run_squad_client.py scores exactly like run_squad.py --do_predict
# --------------------------------------------------------------------------------------------


def test_run_squad_client_scores_like_run_squad(server, tmp_path):
    from processors import squad_metrics

    subset = subset_squad(squad_dev(), tmp_path / "dev-subset.json", 40)
    run_script(ROOT / "run_squad.py", "--init_checkpoint", server.checkpoint, "--vocab_file", vocab_file(),
               "--do_lower_case", "--do_predict", "--predict_file", subset, "--output_dir", tmp_path / "torch",
               "--json-summary", tmp_path / "torch" / "dllogger.json", "--skip_cache", "--disable_progress_bar")
    done = run_script(TRITON_DIR / "run_squad_client.py", "-u", server.grpc, "-i", "grpc", "--model_name", "bert",
                      "--vocab_file", vocab_file(), "--do_lower_case", "--predict_file", squad_dev(),
                      "--max_questions", "40", "--output_dir", tmp_path / "triton", "--batch_size", "4")
    dataset = json.loads(subset.read_text())["data"]
    ours = json.loads((tmp_path / "triton" / "predictions.json").read_text())
    theirs = json.loads((tmp_path / "torch" / "predictions.json").read_text())
    assert len(ours) == 40 and set(ours) == set(theirs)
    assert squad_metrics.evaluate_v1(dataset, ours) == squad_metrics.evaluate_v1(dataset, theirs)
    assert ours == theirs
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["questions"] == 40
    assert summary["exact_match"] == squad_metrics.evaluate_v1(dataset, ours)["exact_match"]


# --------------------------------------------------------------------------------------------
# Bad input: a clear error, and the server keeps serving
# --------------------------------------------------------------------------------------------


def text_request(question, context):
    return {"question": np.array([[question]], dtype=np.object_), "context": np.array([[context]], dtype=np.object_)}


def token_request(seq: int = 16, batch: int = 1) -> dict[str, np.ndarray]:
    ids = np.full((batch, seq), 2000, dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": np.ones_like(ids)}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, protocol):
    client_lib = load_triton_module("client_lib")
    text, tensor = server.model("bert_qa", protocol), server.model("bert", protocol)
    question, context = squad_cases()[0]
    wrong_type = token_request()
    wrong_type["input_ids"] = wrong_type["input_ids"].astype(np.float32)
    mismatched = token_request()
    mismatched["attention_mask"] = mismatched["attention_mask"][:, :-1]
    out_of_vocab = token_request()
    out_of_vocab["input_ids"][0, 3] = 40_000
    cases = [
        (text, text_request(b"", context.encode()), True, "question is empty"),
        (text, text_request(b"   \t", context.encode()), True, "question is empty"),
        (text, text_request(question.encode(), b"  "), True, "context is empty"),
        (text, text_request(question.encode(), b"x " * MAX_CONTEXT_CHARS), True, "at most 20000 (max_context_chars)"),
        (text, text_request(question.encode(), b"\xff\xfe broken"), True, "context is not valid UTF-8"),
        (text, {"question": np.array([[1]], dtype=np.int64), "context": np.array([[2]], dtype=np.int64)}, False,
         "data-type"),
        (tensor, wrong_type, False, "data-type is 'FP32', but model 'bert' expects 'INT64'"),
        (tensor, mismatched, True, "must have the same shape"),
        (tensor, token_request(seq=600), True, "sequence length 600 is longer than the model allows (512)"),
        (tensor, out_of_vocab, True, "input_ids values must lie in [0, 30527]"),
        (tensor, {k: v[..., None] for k, v in token_request().items()}, False, "unexpected shape"),
        (tensor, token_request(batch=9), False, "batch-size must be <= 8"),
    ]
    for model, arrays, cast, message in cases:
        with pytest.raises(client_lib.ServerError) as caught:
            model.infer(arrays, cast=cast)
        assert message in str(caught.value), str(caught.value)
        assert "\n" not in str(caught.value)
        # After every refusal the same server still answers good requests.
        assert client_lib.ask_text_model(text, [question], [context])[0][0]
        assert tensor.infer(token_request())["start_logits"].shape == (1, 16)


def http_infer(server, model: str, inputs: list[dict]) -> tuple[int, dict]:
    """A raw KServe v2 JSON request: (HTTP status, decoded body), so the status code itself is checked."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://{server.http}/v2/models/{model}/infer", method="POST",
                                     data=json.dumps({"inputs": inputs}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def text_inputs(question: str, context: str) -> list[dict]:
    return [{"name": name, "shape": [1, 1], "datatype": "BYTES", "data": [value]}
            for name, value in (("question", question), ("context", context))]


def token_inputs(seq: int, **overrides: int) -> list[dict]:
    arrays = token_request(seq=seq)
    for name, value in overrides.items():
        arrays[name][0, 1] = value
    return [{"name": name, "shape": list(array.shape), "datatype": "INT64", "data": array.reshape(-1).tolist()}
            for name, array in arrays.items()]


def test_content_errors_are_client_errors_400_not_500(server):
    """What is wrong with the request itself is the client's fault: HTTP 400 and gRPC INVALID_ARGUMENT."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    question, context = squad_cases()[0]
    cases = [
        ("bert_qa", text_inputs("", context), "question is empty"),
        ("bert_qa", text_inputs(question, " "), "context is empty"),
        ("bert_qa", text_inputs(question, "x " * MAX_CONTEXT_CHARS), "at most 20000 (max_context_chars)"),
        ("bert", token_inputs(600), "sequence length 600 is longer than the model allows (512)"),
        ("bert", token_inputs(16, input_ids=40_000), "input_ids values must lie in [0, 30527]"),
        ("bert", token_inputs(16, token_type_ids=7), "token_type_ids values must lie in [0, 1]"),
    ]
    for model, inputs, message in cases:
        status, body = http_infer(server, model, inputs)
        assert (status, message in body.get("error", "")) == (400, True), (model, message, status, body)
    good_status, good_body = http_infer(server, "bert_qa", text_inputs(question, context))
    assert good_status == 200 and good_body["outputs"], good_body
    # The same refusal over gRPC carries INVALID_ARGUMENT.
    client = grpcclient.InferenceServerClient(server.grpc)
    arrays = token_request(seq=600)
    tensors = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("bert", tensors)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value.status()
    assert "sequence length 600" in caught.value.message()


def test_mixed_batch_rows_are_answered_independently(server):
    """Good and bad requests queued together: the bad one fails, the good ones are still answered."""
    from concurrent.futures import ThreadPoolExecutor

    client_lib = load_triton_module("client_lib")
    tensor = server.model("bert", "grpc")
    requests = [token_request(seq=24, batch=2), token_request(seq=600), token_request(seq=24), token_request(seq=32)]

    def send(arrays):
        try:
            return tensor.infer(arrays)["end_logits"].shape
        except client_lib.ServerError as exc:
            return str(exc)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, requests))
    assert results[0] == (2, 24) and results[2] == (1, 24) and results[3] == (1, 32)
    assert "longer than the model allows" in results[1]


def test_perf_reports_every_setting_as_table_csv_json_and_png(server, tmp_path, capsys):
    perf = load_triton_module("perf")
    rows = perf.main(["-u", server.grpc, "-i", "grpc", "-m", "bert", "--batch-sizes", "1", "3", "--concurrency", "1",
                      "2", "--seq-length", "64", "--requests", "6", "--warmup", "1", "--output-dir", str(tmp_path)])
    assert [(r["batch_size"], r["concurrency"], r["requests"]) for r in rows] == [(1, 1, 6), (1, 2, 6), (3, 1, 6),
                                                                                (3, 2, 6)]
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["sequences_per_second"] > 0
    assert "| batch | concurrency | seq/s | p50 ms | p90 ms | p95 ms | p99 ms | avg ms |" in capsys.readouterr().out
    assert len((tmp_path / "perf.csv").read_text().strip().splitlines()) == 5
    assert json.loads((tmp_path / "perf.json").read_text())["results"] == rows
    assert (tmp_path / "perf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# A crashed tritonserver is started again (the bundled 2.51 dies on crafted requests, CVE-2025-23310)
# --------------------------------------------------------------------------------------------


def tritonserver_pid(server) -> int:
    (pid,) = [pid for pid, cmd in cmdlines_containing(str(server.repo)).items()
              if cmd.split(" ", 1)[0].endswith("/tritonserver")]
    return pid


def test_a_crashed_tritonserver_is_restarted_and_answers_the_next_request(server, reference_answers, capsys):
    crashed = tritonserver_pid(server)
    os.kill(crashed, signal.SIGSEGV)
    while Path(f"/proc/{crashed}").exists():  # the launcher reaps it
        time.sleep(0.1)
    client_lib = load_triton_module("client_lib")
    client_lib.TritonModel(server.http, "http", "bert_qa").wait_ready(180)
    assert server.process.poll() is None
    log = server.log.read_text(errors="replace")
    assert "warning: tritonserver died (signal SIGSEGV); starting it again (restart 1)" in log, log[-3000:]
    assert tritonserver_pid(server) != crashed
    question, context = squad_cases()[0]
    load_triton_module("client").main(["-u", server.http, "-i", "http", "--question", question, "--context", context,
                                       "--json"])
    assert json.loads(capsys.readouterr().out)["answer"] == reference_answers[0][0]


# --------------------------------------------------------------------------------------------
# Stopping by PID leaves nothing behind (runs last)
# --------------------------------------------------------------------------------------------


def test_stop_by_pid_leaves_nothing_running(server):
    children = cmdlines_containing(str(server.repo))
    assert any("tritonserver" in cmd for cmd in children.values()), children
    assert any("triton_python_backend_stub" in cmd for cmd in children.values()), children
    assert list(SHM.glob(server.shm_prefix + "*")), "the python backend should be using shared memory"

    os.kill(server.process.pid, signal.SIGTERM)
    assert server.process.wait(timeout=120) == 0, server.log.read_text(errors="replace")[-3000:]

    deadline = time.monotonic() + 10
    while cmdlines_containing(str(server.repo)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cmdlines_containing(str(server.repo)) == {}
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} survived: {children[pid]}"
    assert list(SHM.glob(server.shm_prefix + "*")) == []
    assert not [p for p in SHM.glob(SHM_GLOB) if f"bert{server.process.pid}_" in p.name]
    assert "tritonserver stopped (exit code 0)" in server.log.read_text(errors="replace")
