"""Talking to the BERT models on a Triton server with `tritonclient`, over HTTP or gRPC.

A `TritonModel` reads the model's metadata once, so callers use the logical tensor names
(`input_ids`, `start_logits`, `question`...) whatever the backend calls them (`input_ids__0` for
libtorch), and gets numpy arrays back. Errors from the server become `ServerError`, one line.
Used by client.py, run_squad_client.py and perf.py.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bert_io
import numpy as np

from input_checks import InputError

PROTOCOLS = ("http", "grpc")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


class ServerError(InputError):
    """The server refused a request or could not be reached; the message says why."""


def add_connection_args(parser: argparse.ArgumentParser, model_default: str) -> None:
    parser.add_argument("-u", "--url", "--triton-server-url", dest="url", default=None,
                        help="host:port of the server (default localhost:8000 for http, localhost:8001 for grpc)")
    parser.add_argument("-i", "--protocol", choices=PROTOCOLS, default="http")
    parser.add_argument("-m", "--model_name", "--triton-model-name", dest="model_name", default=model_default)
    parser.add_argument("--model_version", "--triton-model-version", dest="model_version", default="",
                        help="model version (default: the server's choice; the original's -1 means the same)")
    parser.add_argument("-H", dest="headers", action="append", default=[], metavar="NAME=VALUE",
                        help="HTTP/gRPC header to send with every request (repeatable)")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the model to become ready")


def url_of(args: argparse.Namespace) -> str:
    return args.url or f"localhost:{DEFAULT_PORTS[args.protocol]}"


def parse_headers(pairs: Sequence[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InputError(f"-H {pair!r}: expected NAME=VALUE")
        headers[name] = value
    return headers


def _protocol_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as module
    elif protocol == "grpc":
        import tritonclient.grpc as module
    else:
        raise InputError(f"protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    return module


def error_message(exc: Exception) -> str:
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return " ".join(str(message).split())


class TritonModel:
    """One model on one server. Thread-safe: every thread gets its own connection."""

    def __init__(self, url: str, protocol: str, model_name: str, model_version: str = "",
                 headers: dict[str, str] | None = None, timeout_s: float = 600.0):
        self.url, self.protocol, self.name = url, protocol, model_name
        self.version = "" if model_version in ("", "-1", None) else str(model_version)
        self.headers = headers or None
        self.timeout_s = timeout_s
        self.module = _protocol_module(protocol)
        self._local = threading.local()
        self.inputs: dict[str, tuple[str, str]] = {}
        self.outputs: dict[str, str] = {}
        self.max_batch_size = 0

    # ---------------------------------------------------------------- connection

    @property
    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self.module.InferenceServerClient(self.url, network_timeout=self.timeout_s,
                                                           connection_timeout=self.timeout_s)
            else:
                client = self.module.InferenceServerClient(self.url)
            self._local.client = client
        return client

    def wait_ready(self, timeout_s: float) -> None:
        """Poll until the model answers ready (timeout 0: check once)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.client.is_model_ready(self.name, self.version, headers=self.headers):
                    return
                reason = f"model {self.name!r} is not ready on {self.url}"
            except Exception as exc:  # noqa: BLE001 - connection refused, DNS... all mean "not yet"
                reason = f"cannot reach {self.protocol} server at {self.url}: {error_message(exc)}"
            if time.monotonic() >= deadline:
                raise ServerError(reason)
            time.sleep(0.5)

    def load_metadata(self) -> TritonModel:
        """Tensor names and types from the server, keyed by their logical names."""
        try:
            if self.protocol == "http":
                meta = self.client.get_model_metadata(self.name, self.version, headers=self.headers)
                config = self.client.get_model_config(self.name, self.version, headers=self.headers)
            else:
                meta = self.client.get_model_metadata(self.name, self.version, headers=self.headers, as_json=True)
                config = self.client.get_model_config(self.name, self.version, headers=self.headers,
                                                      as_json=True)["config"]
        except Exception as exc:  # noqa: BLE001
            raise ServerError(f"model {self.name!r} on {self.url}: {error_message(exc)}") from None
        self.inputs = {bert_io.logical_name(t["name"]): (t["name"], t["datatype"]) for t in meta["inputs"]}
        self.outputs = {bert_io.logical_name(t["name"]): t["name"] for t in meta["outputs"]}
        self.max_batch_size = int(config.get("max_batch_size", 0))
        return self

    @property
    def takes_text(self) -> bool:
        return "question" in self.inputs

    # ---------------------------------------------------------------- inference

    def infer(self, arrays: dict[str, np.ndarray], cast: bool = True) -> dict[str, np.ndarray]:
        """Run the model on arrays keyed by logical input names; outputs keyed by logical names.

        `cast` converts each array to the dtype the model declares; cast=False sends it as it is.
        """
        from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

        inputs = []
        for logical, array in arrays.items():
            if logical not in self.inputs:
                raise InputError(f"model {self.name!r} has no input {logical!r} (it has {', '.join(self.inputs)})")
            actual, datatype = self.inputs[logical]
            array = np.asarray(array)
            if cast:
                array = array.astype(triton_to_np_dtype(datatype))
            sent_type = datatype if cast else np_to_triton_dtype(array.dtype)
            tensor = self.module.InferInput(actual, list(array.shape), sent_type)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        requested = [self.module.InferRequestedOutput(actual) for actual in self.outputs.values()]
        try:
            result = self.client.infer(self.name, inputs, model_version=self.version, outputs=requested,
                                       headers=self.headers)
        except Exception as exc:  # noqa: BLE001 - InferenceServerException and transport errors alike
            raise ServerError(f"{self.name}: {error_message(exc)}") from None
        return {logical: result.as_numpy(actual) for logical, actual in self.outputs.items()}

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None


def open_model(args: argparse.Namespace, timeout_s: float = 600.0) -> TritonModel:
    model = TritonModel(url_of(args), args.protocol, args.model_name, args.model_version,
                        parse_headers(args.headers), timeout_s)
    model.wait_ready(args.wait)
    return model.load_metadata()


# --------------------------------------------------------------------------------------------
# Question answering through either kind of model
# --------------------------------------------------------------------------------------------


def ask_text_model(model: TritonModel, questions: Sequence[str], contexts: Sequence[str]) -> list[tuple[str, list]]:
    """(answer, n-best list) per question, windowed and post-processed by the server."""
    shape = (len(questions), 1)
    outputs = model.infer({
        "question": np.array([q.encode("utf-8") for q in questions], dtype=np.object_).reshape(shape),
        "context": np.array([c.encode("utf-8") for c in contexts], dtype=np.object_).reshape(shape),
    })
    answers = [a.decode("utf-8") for a in outputs["answer"].reshape(-1)]
    nbest = [json.loads(n.decode("utf-8")) for n in outputs["nbest"].reshape(-1)]
    return list(zip(answers, nbest, strict=True))


def feature_logits(model: TritonModel, features: Sequence[Any], batch_size: int, concurrency: int = 1) -> list[Any]:
    """processors.squad.RawResult for every feature, from batches sent `concurrency` at a time."""
    from processors.squad import RawResult

    if "input_ids" not in model.inputs:
        raise InputError(f"model {model.name!r} does not take token tensors (inputs: {', '.join(model.inputs)}); "
                         "name the tensor model with --model_name")
    limit = model.max_batch_size or batch_size
    size = max(1, min(batch_size, limit))
    batches = [features[i:i + size] for i in range(0, len(features), size)]

    def run(batch: Sequence[Any]) -> list[Any]:
        outputs = model.infer(bert_io.feature_arrays(batch))
        start, end = outputs["start_logits"], outputs["end_logits"]
        return [RawResult(f.unique_id, start[i].tolist(), end[i].tolist()) for i, f in enumerate(batch)]

    if concurrency <= 1:
        return [result for batch in batches for result in run(batch)]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return [result for chunk in pool.map(run, batches) for result in chunk]
