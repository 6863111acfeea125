"""Export a fine-tuned BERT checkpoint to TorchScript (`model.pt`) and ONNX (`model.onnx`), checked.

    python triton/export.py --checkpoint results/squad --output_dir results/export \\
        --vocab_file data/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt \\
        --predict_file data/download/squad/v1.1/dev-v1.1.json

The exported graphs take int64 `input_ids`, `token_type_ids`, `attention_mask` of shape
[batch, sequence] (both axes dynamic) and return float32 `start_logits`, `end_logits` [batch, sequence]
(QA) or `logits` [batch, labels] (classification). Every export is run on sample batches (real
SQuAD windows when --predict_file is given, random tokens otherwise) and on a second, smaller
shape, and compared with the PyTorch model; the script fails when the largest difference exceeds
--atol. `export_info.json` beside the files records names, shapes and the model's limits for
triton/model_repository.py.

The original's deployer flags `--ts-script`, `--ts-trace` and `--onnx` select formats as before.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import bert_io
import numpy as np
import torch
from torchscript_twin import scriptable

from atomic_io import atomic_path, atomic_write_json
from input_checks import InputError, run_main

FORMATS = ("onnx", "ts-trace", "ts-script")
DEFAULT_OPSET = 17  # the legacy exporter's newest; current ONNX Runtime runs it with all BERT fusions
FP32_ATOL = 1e-4
FP16_ATOL = 5e-2


class ExportWrapper(torch.nn.Module):
    """Fixes the call order and returns float32 tensors whatever the compute precision."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor):
        outputs = self.model(input_ids, token_type_ids, attention_mask)
        if isinstance(outputs, torch.Tensor):  # classification: logits
            return outputs.float()
        start_logits, end_logits = outputs  # question answering; a fixed pair, which TorchScript can type
        return start_logits.float(), end_logits.float()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="fine-tuned checkpoint file or output folder")
    parser.add_argument("--config_file", default=None, help="bert_config.json (default: the one beside the checkpoint)")
    parser.add_argument("--task", choices=bert_io.TASKS, default="qa")
    parser.add_argument("--num_labels", type=int, default=None, help="classification labels (default: from checkpoint)")
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=None,
                        help="what to write (default: onnx and ts-trace)")
    for name in FORMATS:
        parser.add_argument(f"--{name}", dest="legacy_formats", action="append_const", const=name,
                            help=f"same as --format {name} (the original deployer's flag)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--fp16", action="store_true", help="export half-precision weights (for GPU serving)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for --fp16 when available)")
    parser.add_argument("--triton-no-cuda", action="store_true", help="the original deployer's flag: --device cpu")
    parser.add_argument("--atol", type=float, default=None,
                        help=f"largest allowed difference to PyTorch (default {FP32_ATOL:g}; "
                             f"{FP16_ATOL:g} with --fp16)")
    parser.add_argument("--predict_file", default=None, help="SQuAD json to take sample windows from")
    bert_io.add_squad_feature_args(parser)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--nbatches", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.formats = list(dict.fromkeys((args.format or []) + (args.legacy_formats or []))) or ["onnx", "ts-trace"]
    if args.predict_file and not args.vocab_file:
        parser.error("--predict_file needs --vocab_file")
    if args.triton_no_cuda:
        if args.device not in (None, "cpu"):
            parser.error(f"--triton-no-cuda contradicts --device {args.device}")
        args.device = "cpu"
    if {"ts-trace", "ts-script"} <= set(args.formats):
        parser.error("ts-trace and ts-script both write model.pt: choose one")
    return args


# --------------------------------------------------------------------------------------------
# Sample inputs
# --------------------------------------------------------------------------------------------


def squad_sample_batches(args: argparse.Namespace, count: int) -> dict[str, np.ndarray]:
    """The first `count` windows of the SQuAD file, as the model's int64 inputs."""
    from processors import squad
    from tokenization import FullTokenizer

    tokenizer = FullTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
    examples = squad.read_squad_examples(args.predict_file, is_training=False)[:count]
    features = squad.convert_examples_to_features(examples, tokenizer, **bert_io.feature_settings(args))[:count]
    return bert_io.feature_arrays(features)


def sample_inputs(args: argparse.Namespace, config: Any) -> dict[str, np.ndarray]:
    count = args.batch_size * args.nbatches
    if args.predict_file:
        return squad_sample_batches(args, count)
    return bert_io.random_token_batch(np.random.default_rng(args.seed), count, args.max_seq_length, config.vocab_size)


def check_shapes(samples: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """The sample batches plus one of another shape (1 row, the shortest sequence that holds it)."""
    total = len(samples["input_ids"])
    batches = [{k: v[i:i + batch_size] for k, v in samples.items()} for i in range(0, total, batch_size)]
    used = int(samples["attention_mask"][0].sum())
    short = max(used, 8)
    batches.append({k: v[:1, :short] for k, v in samples.items()})
    return batches


# --------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(batch[name]).to(device) for name in bert_io.INPUT_NAMES)


def as_numpy_outputs(outputs: Any) -> list[np.ndarray]:
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return [t.detach().float().cpu().numpy() for t in outputs]


def export_torchscript(wrapper: ExportWrapper, example: tuple[torch.Tensor, ...], path: Path, mode: str) -> None:
    with torch.no_grad():
        if mode == "ts-script":
            try:
                module = torch.jit.script(scriptable(wrapper))  # modeling.py's TorchScript twin
            except Exception as exc:  # noqa: BLE001 - scripting failures are many kinds of errors
                reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                raise InputError(f"torch.jit.script cannot compile this model ({reason}): "
                                 "use --format ts-trace, checked against PyTorch the same way") from None
        else:
            module = torch.jit.trace(wrapper, example, check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(module, str(tmp))


def _classic_attention_forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """BertSelfAttention as separate Q/K/V projections, explicit softmax and an additive mask.

    Same math as the fused-QKV + scaled_dot_product_attention forward; this is the graph shape ONNX
    Runtime's BERT optimizer recognises and fuses into one Attention operator.
    """
    b, s, h = x.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

    q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
    if mask is not None:
        scores = scores + (1.0 - mask.to(scores.dtype)) * -10000.0
    context = torch.matmul(scores.softmax(dim=-1), v)
    return context.transpose(1, 2).reshape(b, s, h)


def _unsqueezed_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if attention_mask is None else attention_mask[:, None, None, :]


@contextlib.contextmanager
def fusable_attention():
    """While exporting ONNX, write attention in the form ONNX Runtime's transformer optimizer fuses.

    The export check still compares against the unchanged PyTorch model, so equality is verified.
    """
    import modeling

    saved = (modeling.BertSelfAttention.forward, modeling.attention_layout)
    modeling.BertSelfAttention.forward = _classic_attention_forward
    modeling.attention_layout = _unsqueezed_mask
    try:
        yield
    finally:
        modeling.BertSelfAttention.forward, modeling.attention_layout = saved


def export_onnx(wrapper: ExportWrapper, example: tuple[torch.Tensor, ...], path: Path, task: str, opset: int) -> None:
    import onnx

    outputs = bert_io.output_names(task)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in (*bert_io.INPUT_NAMES, *outputs)}
    if task == "classification":
        dynamic_axes["logits"] = {0: "batch"}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings(), fusable_attention():
        warnings.simplefilter("ignore", DeprecationWarning)
        # dynamo=False: the TorchScript-based exporter needs no onnxscript and handles these models fully.
        torch.onnx.export(wrapper, example, str(tmp), input_names=list(bert_io.INPUT_NAMES),
                          output_names=list(outputs), dynamic_axes=dynamic_axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
        onnx.checker.check_model(str(tmp))


def onnx_runner(path: Path, device: torch.device):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), providers=providers)
    return lambda batch: session.run(None, {name: batch[name] for name in bert_io.INPUT_NAMES})


def torchscript_runner(path: Path, device: torch.device):
    module = torch.jit.load(str(path), map_location=device)

    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return as_numpy_outputs(module(*to_torch(batch, device)))

    return run


def largest_difference(runner, reference, batches: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    """Largest |exported − PyTorch| over all outputs and batches, and the exported model's run time."""
    worst, seconds = 0.0, 0.0
    for batch in batches:
        start = time.perf_counter()
        got = runner(batch)
        seconds += time.perf_counter() - start
        for mine, ref in zip(got, reference(batch), strict=True):
            if mine.shape != ref.shape:
                raise RuntimeError(f"output shape {mine.shape} differs from PyTorch's {ref.shape}")
            worst = max(worst, nan_aware_max_difference(mine, ref))
    return worst, seconds


def nan_aware_max_difference(mine: np.ndarray, ref: np.ndarray) -> float:
    """max |mine − ref|, infinite where either side is not finite: NaN outputs never pass as equal
    (`max(0.0, nan)` is 0.0 in Python, and NaN − NaN is NaN, so a plain max let them through)."""
    if mine.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):  # inf − inf: NaN, reported as infinite below
        difference = np.abs(mine.astype(np.float64) - ref.astype(np.float64))
    return float(difference.max()) if np.isfinite(difference).all() else math.inf


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def pick_device(args: argparse.Namespace) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if args.fp16 and torch.cuda.is_available() else "cpu")


def export_info(args: argparse.Namespace, config: Any, model: torch.nn.Module, files: dict[str, str]) -> dict:
    outputs = bert_io.output_names(args.task)
    classes = getattr(model, "num_labels", None)
    return {
        "task": args.task,
        "files": files,
        "inputs": {name: {"dtype": "int64", "shape": ["batch", "sequence"]} for name in bert_io.INPUT_NAMES},
        "outputs": {name: {"dtype": "float32",
                           "shape": ["batch", classes if args.task == "classification" else "sequence"]}
                    for name in outputs},
        "precision": "fp16" if args.fp16 else "fp32",
        "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.padded_vocab_size,
        "type_vocab_size": config.type_vocab_size,
        "max_seq_length": args.max_seq_length,
        "opset": args.opset,
        "checkpoint": str(args.checkpoint),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args)
    model = bert_io.load_finetuned_model(args.checkpoint, args.config_file, args.task, args.num_labels)
    if args.fp16:
        model = model.half()
    model = model.to(device)
    wrapper = ExportWrapper(model).eval()
    atol = args.atol if args.atol is not None else (FP16_ATOL if args.fp16 else FP32_ATOL)

    samples = sample_inputs(args, model.config)
    batches = check_shapes(samples, args.batch_size)
    example = to_torch(batches[0], device)

    def reference(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return as_numpy_outputs(wrapper(*to_torch(batch, device)))

    args.output_dir.mkdir(parents=True, exist_ok=True)
    files, errors = {}, {}
    for fmt in args.formats:
        if fmt == "onnx":
            path = args.output_dir / "model.onnx"
            export_onnx(wrapper, example, path, args.task, args.opset)
            runner = onnx_runner(path, device)
        else:
            path = args.output_dir / "model.pt"
            export_torchscript(wrapper, example, path, fmt)
            runner = torchscript_runner(path, device)
        error, seconds = largest_difference(runner, reference, batches)
        files[fmt] = path.name
        errors[fmt] = error
        print(f"{fmt}: {path}  max |diff| vs PyTorch = {error:.3e} over {len(batches)} batches "
              f"({seconds:.2f} s)", flush=True)
        if not error <= atol:
            raise SystemExit(f"error: {fmt} export differs from PyTorch by {error:.3e} > --atol {atol:g}")
    atomic_write_json(args.output_dir / "export_info.json", export_info(args, model.config, model, files))
    print(json.dumps({"max_abs_diff": errors}), flush=True)
    return errors


if __name__ == "__main__":
    run_main(main)
