"""Triton python-backend model: question + context text in, answer out (copied as <repo>/<name>/<version>/model.py).

Does what run_squad.py does around the network, with the project's own code: WordPiece
tokenisation, doc-stride windows over contexts longer than one sequence, and n-best
post-processing with the max-context rule. The logits come from the tensor model named in the
config (`tensor_model`), called through Triton's business-logic scripting, so its dynamic batching
and instance groups apply and the weights are loaded once.

Every request is checked first; a bad one (empty question or context, text that is not UTF-8, a
context beyond `max_context_chars`) gets an error response saying so, and the rest are served.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def _parameter(config: dict, key: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if value is None:
        raise pb_utils.TritonModelException(f"model config has no parameter {key!r}")
    return value


class BadRequest(ValueError):
    """A request the server refuses, with the reason sent back to the client."""


def bad_request_error(message: str):  # noqa: ANN201 - pb_utils.TritonError
    """The client's fault: INVALID_ARG, which Triton answers as HTTP 400 / gRPC INVALID_ARGUMENT (not 500).

    Backends older than the error codes (before Triton 23.04) only have the message. The same few lines
    are in both model files: each is copied alone into its model's folder and cannot import the other.
    """
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def _texts(request, name: str) -> list[str]:
    values = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)
    texts = []
    for value in values:
        try:
            texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError:
            raise BadRequest(f"{name} is not valid UTF-8 text") from None
    return texts


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        code_root = config.get("parameters", {}).get("code_root", {}).get("string_value")
        if code_root and code_root not in sys.path:
            sys.path.insert(0, code_root)
        from processors import squad
        from tokenization import FullTokenizer

        self.squad = squad
        version_dir = Path(args["model_repository"]) / args["model_version"]
        lower = _parameter(config, "do_lower_case") == "true"
        self.tokenizer = FullTokenizer(version_dir / _parameter(config, "vocab_file"), do_lower_case=lower)
        self.windows = {key: int(_parameter(config, key))
                        for key in ("max_seq_length", "doc_stride", "max_query_length")}
        try:  # a hand-edited config with doc_stride 0 would make every request window forever
            squad.check_window_settings(**self.windows)
        except ValueError as exc:
            raise pb_utils.TritonModelException(f"model config: {exc}") from None
        self.answers = dict(
            n_best_size=int(_parameter(config, "n_best_size")),
            max_answer_length=int(_parameter(config, "max_answer_length")),
            do_lower_case=lower,
            version_2_with_negative=_parameter(config, "version_2_with_negative") == "true",
            null_score_diff_threshold=float(_parameter(config, "null_score_diff_threshold")),
        )
        self.max_context_chars = int(_parameter(config, "max_context_chars"))
        self.tensor_model = _parameter(config, "tensor_model")
        self.tensor_inputs = _parameter(config, "tensor_inputs").split(",")
        self.tensor_outputs = _parameter(config, "tensor_outputs").split(",")
        self.tensor_batch = max(1, int(_parameter(config, "tensor_max_batch_size")))

    # ---------------------------------------------------------------- checks

    def _examples(self, request) -> list:
        questions, contexts = _texts(request, "question"), _texts(request, "context")
        if len(questions) != len(contexts):
            raise BadRequest(f"got {len(questions)} questions but {len(contexts)} contexts; send one context per "
                             "question")
        examples = []
        for row, (question, context) in enumerate(zip(questions, contexts, strict=True)):
            where = f" (row {row})" if len(questions) > 1 else ""
            if not question.strip() or not self.tokenizer.tokenize(question):
                raise BadRequest(f"question is empty{where}")
            if not context.strip():
                raise BadRequest(f"context is empty{where}")
            if len(context) > self.max_context_chars:
                raise BadRequest(f"context has {len(context)} characters{where}; this server accepts at most "
                                 f"{self.max_context_chars} (max_context_chars)")
            examples.append(self.squad.example_from_text(question, context, qas_id=str(row)))
        return examples

    # ---------------------------------------------------------------- model calls

    def _logits(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Start and end logits of all windows, in chunks the tensor model accepts."""
        chunks: list[list[np.ndarray]] = []
        total = len(arrays["input_ids"])
        for start in range(0, total, self.tensor_batch):
            inputs = [pb_utils.Tensor(name, np.ascontiguousarray(arrays[key][start:start + self.tensor_batch]))
                      for name, key in zip(self.tensor_inputs, ("input_ids", "token_type_ids", "attention_mask"),
                                           strict=True)]
            response = pb_utils.InferenceRequest(model_name=self.tensor_model, inputs=inputs,
                                                 requested_output_names=self.tensor_outputs).exec()
            if response.has_error():
                raise RuntimeError(f"tensor model {self.tensor_model!r}: {response.error().message()}")
            chunks.append([pb_utils.get_output_tensor_by_name(response, name).as_numpy()
                           for name in self.tensor_outputs])
        return [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(self.tensor_outputs))]

    def _predict(self, examples: list) -> tuple[list[str], list[str]]:
        features = self.squad.convert_examples_to_features(examples, self.tokenizer, **self.windows)
        arrays = {
            "input_ids": np.asarray([f.input_ids for f in features], dtype=np.int64),
            "token_type_ids": np.asarray([f.segment_ids for f in features], dtype=np.int64),
            "attention_mask": np.asarray([f.input_mask for f in features], dtype=np.int64),
        }
        start_logits, end_logits = self._logits(arrays)
        results = [self.squad.RawResult(f.unique_id, start_logits[i].tolist(), end_logits[i].tolist())
                   for i, f in enumerate(features)]
        predictions = self.squad.get_answers(examples, features, results, **self.answers)
        answers = [predictions.answers.get(e.qas_id, "") for e in examples]
        nbest = [json.dumps(predictions.nbest.get(e.qas_id, [])) for e in examples]
        return answers, nbest

    # ---------------------------------------------------------------- Triton entry point

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                examples = self._examples(request)
                answers, nbest = self._predict(examples)
            except BadRequest as exc:
                responses.append(pb_utils.InferenceResponse(error=bad_request_error(str(exc))))
                continue
            except Exception as exc:  # noqa: BLE001 - report to the client and keep serving
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"answering failed: {exc}")))
                continue
            shape = (len(answers), 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("answer",
                                np.array([a.encode("utf-8") for a in answers], dtype=np.object_).reshape(shape)),
                pb_utils.Tensor("nbest", np.array([n.encode("utf-8") for n in nbest], dtype=np.object_).reshape(shape)),
            ]))
        return responses
