"""Triton python-backend model: BERT token tensors in, logits out (copied as <repo>/<name>/<version>/model.py).

Runs the exported `model.onnx` with ONNX Runtime or `model.pt` with TorchScript, chosen by the
config's `runtime` parameter. It takes the same tensors as the onnxruntime and pytorch backends'
configs (int64 `input_ids`, `token_type_ids`, `attention_mask` [batch, sequence]) so clients do not
care which backend serves them. Requests are checked before they reach the model: a bad request
gets an error response that says what is wrong, and the other requests of the batch are still served.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")


def _parameter(config: dict, key: str, default: str | None = None) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if value is None:
        if default is None:
            raise pb_utils.TritonModelException(f"model config has no parameter {key!r}")
        return default
    return value


def bad_request_error(message: str):  # noqa: ANN201 - pb_utils.TritonError
    """The client's fault: INVALID_ARG, which Triton answers as HTTP 400 / gRPC INVALID_ARGUMENT (not 500).

    Backends older than the error codes (before Triton 23.04) only have the message. The same few lines
    are in both model files: each is copied alone into its model's folder and cannot import the other.
    """
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def request_error(inputs: dict[str, np.ndarray], limits: dict[str, int]) -> str | None:
    """What is wrong with one request's tensors, or None when they can be run."""
    shapes = {name: tuple(array.shape) for name, array in inputs.items()}
    if len(set(shapes.values())) != 1:
        return f"input_ids, token_type_ids and attention_mask must have the same shape, got {shapes}"
    batch, sequence = shapes["input_ids"]
    if sequence < 1:
        return "sequence length is 0: send at least the [CLS] and [SEP] tokens"
    if sequence > limits["max_sequence"]:
        return (f"sequence length {sequence} is longer than the model allows ({limits['max_sequence']}); "
                "split the text into windows (the text model and the clients do this)")
    checks = (("input_ids", limits["vocab_size"]), ("token_type_ids", limits["type_vocab_size"]), ("attention_mask", 2))
    for name, bound in checks:
        array = inputs[name]
        if array.size and (array.min() < 0 or array.max() >= bound):
            return f"{name} values must lie in [0, {bound - 1}], got [{array.min()}, {array.max()}]"
    return None


class OnnxRunner:
    def __init__(self, path: Path, threads: int, use_gpu: bool, device_id: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {name: inputs[name] for name in self.input_names})


class TorchScriptRunner:
    def __init__(self, path: Path, threads: int, use_gpu: bool, device_id: int):
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(f"cuda:{device_id}" if use_gpu and torch.cuda.is_available() else "cpu")
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.torch.inference_mode():
            outputs = self.module(*(self.torch.from_numpy(inputs[n]).to(self.device) for n in INPUT_NAMES))
        if isinstance(outputs, self.torch.Tensor):
            outputs = (outputs,)
        return [t.float().cpu().numpy() for t in outputs]


RUNNERS = {"onnxruntime": OnnxRunner, "torchscript": TorchScriptRunner}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        runtime = _parameter(config, "runtime", "onnxruntime")
        if runtime not in RUNNERS:
            raise pb_utils.TritonModelException(f"parameter runtime={runtime!r}: choose from {', '.join(RUNNERS)}")
        version_dir = Path(args["model_repository"]) / args["model_version"]
        path = version_dir / _parameter(config, "model_file")
        use_gpu = args.get("model_instance_kind") == "GPU"
        device_id = int(args.get("model_instance_device_id", 0))
        threads = int(_parameter(config, "intra_op_threads", "0"))
        self.run = RUNNERS[runtime](path, threads, use_gpu, device_id)
        self.output_names = [output["name"] for output in config["output"]]
        self.limits = {key: int(_parameter(config, key)) for key in ("max_sequence", "vocab_size", "type_vocab_size")}

    def execute(self, requests: list) -> list:
        """Checks every request, runs the good ones together when their shapes allow, answers all."""
        responses: list = [None] * len(requests)
        runnable: dict[int, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in INPUT_NAMES}
            problem = request_error(inputs, self.limits)
            if problem:
                responses[index] = pb_utils.InferenceResponse(error=bad_request_error(problem))
            else:
                runnable.setdefault(inputs["input_ids"].shape[1], []).append((index, inputs))
        for group in runnable.values():
            self._run_group(group, responses)
        return responses

    def _run_group(self, group: list[tuple[int, dict[str, np.ndarray]]], responses: list) -> None:
        """One forward pass over requests of equal sequence length, split back per request."""
        merged = {name: np.concatenate([inputs[name] for _, inputs in group]) for name in INPUT_NAMES}
        try:
            outputs = self.run(merged)
        except Exception as exc:  # noqa: BLE001 - report the failure to the client, keep serving
            for index, _ in group:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {exc}"))
            return
        offset = 0
        for index, inputs in group:
            rows = slice(offset, offset + len(inputs["input_ids"]))
            offset = rows.stop
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[rows], dtype=np.float32))
                       for name, out in zip(self.output_names, outputs, strict=True)]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
