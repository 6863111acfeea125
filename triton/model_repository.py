"""Build a Triton model repository from triton/export.py's output.

    python triton/model_repository.py --export-dir results/export --model-repository results/triton_models \\
        --backend python --vocab_file data/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt

Layout (what `tritonserver --model-repository` reads):

    <model-repository>/<model-name>/config.pbtxt          the tensor model ("bert" by default)
    <model-repository>/<model-name>/<version>/model.onnx  (onnxruntime)  | model.pt (pytorch)
                                                          | model.py + model.onnx or model.pt (python)
    <model-repository>/<text-model-name>/config.pbtxt     question/context text → answer ("bert_qa")
    <model-repository>/<text-model-name>/<version>/model.py, vocab.txt

Backends: `onnxruntime` and `pytorch` (TorchScript) run in the nvcr.io/nvidia/tritonserver
container; `python` runs the same exported files with ONNX Runtime or TorchScript inside the python
backend, which is what the tritonserver bundled with nvidia-pytriton provides (triton/server.py).
Every tensor model gets dynamic batching (unless --dyn-batching-delay < 0) and an instance group.
The optional text model (python backend) windows long contexts and post-processes answers on the
server, calling the tensor model for logits.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bert_io

from input_checks import InputError, read_json_file, run_main
from processors.squad import check_window_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON_MODELS = Path(__file__).resolve().parent / "python_models"
BACKENDS = ("onnxruntime", "pytorch", "python")
RUNTIMES = {"onnxruntime": "model.onnx", "torchscript": "model.pt"}
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
DEFAULT_MAX_CONTEXT_CHARS = 100_000


# --------------------------------------------------------------------------------------------
# protobuf text format
# --------------------------------------------------------------------------------------------


class Enum(str):
    """An enum value: written bare (TYPE_INT64), not quoted."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"cannot write {type(value).__name__} into a model config")


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """A dict as protobuf text: nested dicts are messages, lists are repeated fields."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{to_pbtxt(value, indent + 1)}{pad}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            items = [f"{pad}  {{\n{to_pbtxt(item, indent + 2)}{pad}  }}" for item in value]
            lines.append(f"{pad}{key} [\n" + ",\n".join(items) + f"\n{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def parameters(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The `parameters` map: every value as a string, as backends read them."""
    def text(value: Any) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    return [{"key": key, "value": {"string_value": text(value)}} for key, value in values.items()]


# --------------------------------------------------------------------------------------------
# Model configs
# --------------------------------------------------------------------------------------------


@dataclass
class TensorModelSpec:
    """The model that maps token tensors to logits (the original's only Triton model)."""

    backend: str = "onnxruntime"
    name: str = "bert"
    task: str = "qa"
    num_labels: int | None = None
    max_batch_size: int = 8
    dyn_batching_delay_ms: float = 1.0
    preferred_batch_sizes: list[int] | None = None
    engine_count: int = 1
    kind: str = "auto"
    gpus: list[int] = field(default_factory=list)
    capture_cuda_graph: bool = False
    runtime: str = "onnxruntime"  # python backend only: which exported file it runs
    max_sequence: int = 512
    vocab_size: int = 30528
    type_vocab_size: int = 2
    intra_op_threads: int = 0

    def io_names(self) -> tuple[list[str], list[str]]:
        inputs, outputs = list(bert_io.INPUT_NAMES), list(bert_io.output_names(self.task))
        if self.backend == "pytorch":
            return bert_io.indexed_names(inputs), bert_io.indexed_names(outputs)
        return inputs, outputs

    def model_file(self) -> str:
        if self.backend == "onnxruntime":
            return "model.onnx"
        if self.backend == "pytorch":
            return "model.pt"
        return RUNTIMES[self.runtime]


def check_spec(spec: TensorModelSpec) -> None:
    if spec.backend not in BACKENDS:
        raise InputError(f"backend {spec.backend!r}: choose from {', '.join(BACKENDS)}")
    if spec.task not in bert_io.TASKS:
        raise InputError(f"task {spec.task!r}: choose from {', '.join(bert_io.TASKS)}")
    if spec.task == "classification" and not spec.num_labels:
        raise InputError("a classification model needs num_labels")
    if spec.max_batch_size < 1:
        raise InputError(f"--max-batch-size must be at least 1, got {spec.max_batch_size}")
    if spec.engine_count < 1:
        raise InputError(f"--engine-count must be at least 1, got {spec.engine_count}")
    if spec.kind not in KINDS:
        raise InputError(f"--device {spec.kind!r}: choose from {', '.join(KINDS)}")
    if spec.runtime not in RUNTIMES:
        raise InputError(f"--runtime {spec.runtime!r}: choose from {', '.join(RUNTIMES)}")
    if spec.gpus and spec.kind != "gpu":
        raise InputError("--gpus needs --device gpu")


def dynamic_batching(max_batch_size: int, delay_ms: float, preferred: list[int] | None) -> dict[str, Any] | None:
    """Dynamic batching block, or None for static batching (delay < 0, as the original's ≤ 0 switch)."""
    if delay_ms < 0:
        return None
    sizes = preferred or sorted({max(1, max_batch_size // 2), max_batch_size})
    return {"preferred_batch_size": sizes, "max_queue_delay_microseconds": int(round(delay_ms * 1000))}


def instance_group(spec: TensorModelSpec) -> list[dict[str, Any]]:
    group: dict[str, Any] = {"count": spec.engine_count, "kind": Enum(KINDS[spec.kind])}
    if spec.gpus:
        group["gpus"] = list(spec.gpus)
    return [group]


def tensor_model_config(spec: TensorModelSpec) -> str:
    """config.pbtxt of the tensor model for the chosen backend."""
    check_spec(spec)
    input_names, output_names = spec.io_names()
    output_dims = [spec.num_labels] if spec.task == "classification" else [-1]
    config: dict[str, Any] = {"name": spec.name}
    if spec.backend == "onnxruntime":
        config["platform"] = "onnxruntime_onnx"
    elif spec.backend == "pytorch":
        config["platform"] = "pytorch_libtorch"
    else:
        config["backend"] = "python"
    config["max_batch_size"] = spec.max_batch_size
    config["input"] = [{"name": n, "data_type": Enum("TYPE_INT64"), "dims": [-1]} for n in input_names]
    config["output"] = [{"name": n, "data_type": Enum("TYPE_FP32"), "dims": output_dims} for n in output_names]
    batching = dynamic_batching(spec.max_batch_size, spec.dyn_batching_delay_ms, spec.preferred_batch_sizes)
    if batching:
        config["dynamic_batching"] = batching
    config["instance_group"] = instance_group(spec)
    if spec.capture_cuda_graph and spec.backend == "onnxruntime":
        config["optimization"] = {"cuda": {"graphs": True}}
    if spec.backend == "python":
        config["parameters"] = parameters({
            "runtime": spec.runtime, "model_file": spec.model_file(), "max_sequence": spec.max_sequence,
            "vocab_size": spec.vocab_size, "type_vocab_size": spec.type_vocab_size,
            "intra_op_threads": spec.intra_op_threads,
        })
    elif spec.backend == "onnxruntime" and spec.intra_op_threads:
        config["parameters"] = parameters({"intra_op_thread_count": spec.intra_op_threads})
    return to_pbtxt(config)


@dataclass
class TextModelSpec:
    """The question/context → answer model (python backend), with run_squad.py's settings."""

    tensor: TensorModelSpec
    name: str = "bert_qa"
    vocab_file: str = "vocab.txt"
    do_lower_case: bool = True
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    n_best_size: int = 20
    max_answer_length: int = 30
    version_2_with_negative: bool = False
    null_score_diff_threshold: float = 0.0
    max_context_chars: int = DEFAULT_MAX_CONTEXT_CHARS
    max_batch_size: int = 8
    engine_count: int = 1
    code_root: str = str(REPO_ROOT)


def text_model_config(spec: TextModelSpec) -> str:
    if spec.tensor.task != "qa":
        raise InputError("the text model answers questions: it needs a QA tensor model (--task qa)")
    if spec.max_seq_length > spec.tensor.max_sequence:
        raise InputError(f"--max_seq_length {spec.max_seq_length} exceeds the model's {spec.tensor.max_sequence} "
                         "positions")
    check_window_settings(spec.max_seq_length, spec.doc_stride, spec.max_query_length)
    input_names, output_names = spec.tensor.io_names()
    config: dict[str, Any] = {
        "name": spec.name,
        "backend": "python",
        "max_batch_size": spec.max_batch_size,
        "input": [{"name": n, "data_type": Enum("TYPE_STRING"), "dims": [1]} for n in ("question", "context")],
        "output": [{"name": n, "data_type": Enum("TYPE_STRING"), "dims": [1]} for n in ("answer", "nbest")],
        "instance_group": [{"count": spec.engine_count, "kind": Enum("KIND_CPU")}],
        "parameters": parameters({
            "tensor_model": spec.tensor.name,
            "tensor_inputs": ",".join(input_names),
            "tensor_outputs": ",".join(output_names),
            "tensor_max_batch_size": spec.tensor.max_batch_size,
            "vocab_file": spec.vocab_file,
            "do_lower_case": spec.do_lower_case,
            "max_seq_length": spec.max_seq_length,
            "doc_stride": spec.doc_stride,
            "max_query_length": spec.max_query_length,
            "n_best_size": spec.n_best_size,
            "max_answer_length": spec.max_answer_length,
            "version_2_with_negative": spec.version_2_with_negative,
            "null_score_diff_threshold": spec.null_score_diff_threshold,
            "max_context_chars": spec.max_context_chars,
            "code_root": spec.code_root,
        }),
    }
    return to_pbtxt(config)


# --------------------------------------------------------------------------------------------
# Writing the repository
# --------------------------------------------------------------------------------------------


def write_model(repository: Path, name: str, version: int, config: str, files: dict[str, Path],
                overwrite: bool) -> Path:
    """<repository>/<name>/ with config.pbtxt and <version>/<files>, put in place by one rename."""
    final = repository / name
    if final.exists() and not overwrite:
        raise InputError(f"{final} already exists (pass --overwrite to replace it)")
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}.", dir=repository))
    try:
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        version_dir = staging / str(version)
        version_dir.mkdir()
        for target, source in files.items():
            shutil.copyfile(source, version_dir / target)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def read_export_info(export_dir: Path) -> dict[str, Any]:
    path = export_dir / "export_info.json"
    if not path.is_file():
        raise InputError(f"{path} not found: run triton/export.py --output_dir {export_dir} first")
    return read_json_file(path)


def tensor_model_files(spec: TensorModelSpec, export_dir: Path) -> dict[str, Path]:
    exported = export_dir / spec.model_file()
    if not exported.is_file():
        fmt = "onnx" if exported.suffix == ".onnx" else "ts-trace"
        raise InputError(f"{exported} not found: export it with triton/export.py --format {fmt}")
    files = {exported.name: exported}
    if spec.backend == "python":
        files["model.py"] = PYTHON_MODELS / "bert_tensor_model.py"
    return files


def build_repository(repository: Path, export_dir: Path, spec: TensorModelSpec, text: TextModelSpec | None,
                     vocab_file: Path | None, version: int = 1, overwrite: bool = False) -> list[Path]:
    """Write the tensor model (and the text model) into `repository`; returns the model folders."""
    written = [write_model(repository, spec.name, version, tensor_model_config(spec),
                           tensor_model_files(spec, export_dir), overwrite)]
    if text is not None:
        if vocab_file is None or not vocab_file.is_file():
            raise InputError(f"--vocab_file {vocab_file}: not found (the text model tokenises with it)")
        files = {"model.py": PYTHON_MODELS / "bert_text_model.py", text.vocab_file: vocab_file}
        written.append(write_model(repository, text.name, version, text_model_config(text), files, overwrite))
    return written


def add_deployer_aliases(parser: argparse.ArgumentParser) -> None:
    """The original deployer.py's Triton flags, with its meanings (they configure the repository)."""
    legacy = parser.add_argument_group("the original deployer's flags")
    legacy.add_argument("--triton-dyn-batching-delay", dest="legacy_dyn_delay", type=float, default=None,
                        help="as the original: delay in ms, <= 0 turns dynamic batching off (its default 0); "
                             "overrides --dyn-batching-delay")
    legacy.add_argument("--triton-no-cuda", action="store_true",
                        help="CPU instances (same as --device cpu)")
    legacy.add_argument("--triton-server-url", default=None,
                        help="accepted and unused, as in the original: the repository is written to disk, "
                             "the server reads it at start")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export-dir", required=True, type=Path, help="triton/export.py --output_dir")
    parser.add_argument("--model-repository", "--save-dir", dest="model_repository",
                        default=Path("results/triton_models"), type=Path)
    parser.add_argument("--backend", choices=BACKENDS, default="python",
                        help="python runs here (nvidia-pytriton); onnxruntime/pytorch need the Triton container")
    parser.add_argument("--runtime", choices=list(RUNTIMES), default=None,
                        help="python backend: run model.onnx (onnxruntime) or model.pt (torchscript); "
                             "default: whichever was exported, ONNX first")
    parser.add_argument("--model-name", "--triton-model-name", dest="model_name", default="bert")
    parser.add_argument("--model-version", "--triton-model-version", dest="model_version", type=int, default=1)
    parser.add_argument("--max-batch-size", "--triton-max-batch-size", dest="max_batch_size", type=int, default=8)
    parser.add_argument("--dyn-batching-delay", type=float, default=1.0,
                        help="dynamic batching queue delay in ms (default 1; < 0 = static batching)")
    parser.add_argument("--preferred-batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--engine-count", "--triton-engine-count", dest="engine_count", type=int, default=1,
                        help="model instances (instance_group count)")
    parser.add_argument("--device", choices=list(KINDS), default="auto", help="instance kind (default auto)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[])
    parser.add_argument("--capture-cuda-graph", type=int, nargs="?", const=1, default=0, choices=(0, 1),
                        help="onnxruntime backend on GPU: CUDA graphs (bare flag or the original's 0/1); "
                             "written to config.pbtxt, has no effect on CPU instances")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads per instance (0 = runtime default)")
    parser.add_argument("--text-model-name", default="bert_qa")
    parser.add_argument("--no-text-model", action="store_true", help="only the tensor model")
    parser.add_argument("--max-context-chars", type=int, default=DEFAULT_MAX_CONTEXT_CHARS)
    parser.add_argument("--code-root", default=str(REPO_ROOT),
                        help="where the text model imports this project from (in a container: the mount point)")
    parser.add_argument("--overwrite", action="store_true")
    add_deployer_aliases(parser)
    bert_io.add_squad_feature_args(parser)
    bert_io.add_squad_answer_args(parser)
    args = parser.parse_args(argv)
    if args.legacy_dyn_delay is not None:
        args.dyn_batching_delay = args.legacy_dyn_delay if args.legacy_dyn_delay > 0 else -1.0
    if args.triton_no_cuda:
        if args.device == "gpu" or args.gpus:
            parser.error("--triton-no-cuda contradicts --device gpu / --gpus")
        args.device = "cpu"
    bert_io.check_feature_args(args)
    return args


def spec_from_args(args: argparse.Namespace, info: dict[str, Any]) -> TensorModelSpec:
    runtime = args.runtime or ("onnxruntime" if "onnx" in info.get("files", {}) else "torchscript")
    outputs = info.get("outputs", {})
    labels = outputs.get("logits", {}).get("shape", [None, None])[1] if info.get("task") == "classification" else None
    return TensorModelSpec(
        backend=args.backend, name=args.model_name, task=info.get("task", "qa"), num_labels=labels,
        max_batch_size=args.max_batch_size, dyn_batching_delay_ms=args.dyn_batching_delay,
        preferred_batch_sizes=args.preferred_batch_sizes, engine_count=args.engine_count, kind=args.device,
        gpus=args.gpus, capture_cuda_graph=bool(args.capture_cuda_graph), runtime=runtime,
        max_sequence=int(info["max_position_embeddings"]), vocab_size=int(info["vocab_size"]),
        type_vocab_size=int(info["type_vocab_size"]), intra_op_threads=args.threads,
    )


def main(argv: list[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    info = read_export_info(args.export_dir)
    spec = spec_from_args(args, info)
    text = None
    if not args.no_text_model and spec.task == "qa":
        if not args.vocab_file:
            raise InputError("--vocab_file is needed for the text model (or pass --no-text-model)")
        text = TextModelSpec(
            tensor=spec, name=args.text_model_name, do_lower_case=args.do_lower_case,
            max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length,
            n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
            version_2_with_negative=args.version_2_with_negative,
            null_score_diff_threshold=args.null_score_diff_threshold, max_context_chars=args.max_context_chars,
            code_root=args.code_root,
        )
    written = build_repository(args.model_repository, args.export_dir, spec, text,
                               Path(args.vocab_file) if args.vocab_file else None, args.model_version, args.overwrite)
    for folder in written:
        print(f"wrote {folder}/config.pbtxt")
    return written


if __name__ == "__main__":
    run_main(main)
