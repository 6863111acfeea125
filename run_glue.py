"""Fine-tune and evaluate BERT on a GLUE task (the original's flags).

    python run_glue.py --task_name mrpc --data_dir glue/MRPC --init_checkpoint ckpt.pt \
        --config_file bert_config.json --vocab_file vocab.txt --do_lower_case \
        --do_train --do_eval --output_dir results/MRPC

Tasks: cola, sst-2, mrpc, sts-b (regression), qqp, mnli (evaluated on matched and mismatched dev),
qnli, rte, wnli. --do_eval writes results.txt (JSON) with the task's metrics; --do_predict writes
the GLUE submission file(s) (MRPC.tsv, MNLI-m.tsv + MNLI-mm.tsv, ...) and predictions.json for test.tsv.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

import finetuning as ft
from atomic_io import atomic_write_json
from checkpoint_io import resolve_vocab_file
from input_checks import InputError, run_main
from modeling import BertForSequenceClassification
from processors import glue
from training import feature_cache_dir, main_process_first

FEATURE_COLUMNS = ("input_ids", "input_mask", "segment_ids", "label_ids")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    compat = ft.add_common_arguments(parser, max_seq_length=128, seed=1)
    g = parser.add_argument_group("GLUE")
    g.add_argument("--data_dir", required=True, help="the task's folder: train.tsv, dev.tsv (MNLI: dev_matched.tsv "
                                                     "and dev_mismatched.tsv), test.tsv")
    g.add_argument("--task_name", required=True, help=f"one of {', '.join(t for t in glue.TASKS if t != 'mnli-mm')}")
    g.add_argument("--do_eval", action="store_true", help="score the dev set")
    g.add_argument("--do_predict", action="store_true", help="predict the test set and write submission files")
    g.add_argument("--eval_batch_size", type=int, default=8, help="batch size for evaluation and prediction")
    g.add_argument("--skip_malformed_rows", action="store_true",
                   help="warn about and skip rows with a wrong column count instead of stopping")
    ft.add_cache_arguments(parser, "--data_dir")
    compat.add_argument("--server_ip", default="", help="not used (remote debugging is not supported)")
    compat.add_argument("--server_port", default="", help="not used (remote debugging is not supported)")
    args = parser.parse_args(argv)
    if not (args.do_train or args.do_eval or args.do_predict):
        raise InputError("at least one of --do_train, --do_eval or --do_predict is required")
    task = glue.get_task(args.task_name)  # an unknown task is a one-line error before any work
    glue.check_max_seq_length(args.max_seq_length, pairs=task.train.text_b is not None)
    return args


def eval_tasks(task_name: str) -> list[str]:
    """MNLI is scored on both its matched and its mismatched dev/test sets."""
    return ["mnli", "mnli-mm"] if task_name == "mnli" else [task_name]


def feature_dataset(ctx: ft.RunContext, task_name: str, examples: list[glue.InputExample], input_file: Path,
                    tokenizer: Any, vocab_file: Path) -> torch.utils.data.TensorDataset:
    args = ctx.args
    arrays, _ = glue.load_features(task_name, examples, tokenizer, input_file=input_file, vocab_file=vocab_file,
                                   do_lower_case=args.do_lower_case, max_seq_length=args.max_seq_length,
                                   cache_dir=feature_cache_dir(args.cache_dir, args.data_dir, args.skip_cache),
                                   write_cache=not args.skip_cache)
    return ft.arrays_to_dataset(arrays, FEATURE_COLUMNS)


def predictions_from_logits(task_name: str, logits: np.ndarray) -> np.ndarray:
    if glue.get_task(task_name).is_regression:
        return logits.reshape(-1)
    return logits.argmax(axis=-1)


def run_training(ctx: ft.RunContext, model: torch.nn.Module, tokenizer: Any, vocab_file: Path) -> dict[str, Any]:
    args = ctx.args
    with main_process_first(ctx.is_main):  # rank 0 builds (and caches) the features first
        examples = glue.get_train_examples(args.task_name, args.data_dir, args.skip_malformed_rows)
        dataset = feature_dataset(ctx, args.task_name, examples, Path(args.data_dir) / "train.tsv", tokenizer,
                                  vocab_file)
    ctx.logger.log("PARAMETER", {"training_samples": len(examples)})
    ft.show_features(ctx, dataset, FEATURE_COLUMNS, tokenizer)
    result = ft.train(ctx, model, dataset, ft.batch_classification_loss, trim=not args.keep_padding)
    ft.log_train_summary(ctx, result)
    return {"global_step": result.global_step, "train:loss": result.final_loss, "train:latency": result.train_time,
            "train:num_samples_per_gpu": len(dataset) // ctx.env.world_size,
            "train:num_steps": result.global_step, "train:throughput": result.sequences_per_second}


def run_evaluation(ctx: ft.RunContext, model: torch.nn.Module, tokenizer: Any, vocab_file: Path) -> dict[str, Any]:
    """Metrics of every dev set of the task; the first set's keys are plain, others are prefixed `<task>:`."""
    args = ctx.args
    results: dict[str, Any] = {}
    for index, task_name in enumerate(eval_tasks(args.task_name)):
        task = glue.get_task(task_name)
        examples = glue.get_dev_examples(task_name, args.data_dir, args.skip_malformed_rows)
        dataset = feature_dataset(ctx, task_name, examples, Path(args.data_dir) / task.dev_file, tokenizer, vocab_file)
        inference = ft.predict(ctx, model, dataset, ft.batch_scores, args.eval_batch_size,
                               desc=f"Evaluating {task_name}",
                               trim=not args.keep_padding)
        logits = inference.outputs[0]
        labels = dataset.tensors[3].numpy()
        metrics = glue.compute_metrics(task_name, predictions_from_logits(task_name, logits), labels)
        metrics["eval:loss"] = float(ft.classification_loss(torch.from_numpy(logits), torch.from_numpy(labels)))
        metrics["eval:num_samples_per_gpu"] = len(dataset)
        metrics.update(latency_metrics(inference, args.eval_batch_size))
        prefix = "" if index == 0 else f"{task_name}:"
        results.update({prefix + key: value for key, value in metrics.items()})
    return results


def latency_metrics(inference: ft.InferenceResult, batch_size: int) -> dict[str, float]:
    """The original's per-batch latency percentiles (ms) and throughput."""
    ms = np.asarray(inference.batch_latencies) * 1000.0
    out = {f"infer:latency(ms):{q}%": float(np.percentile(ms, q)) for q in (50, 90, 95, 99, 100)}
    out.update({"infer:latency(ms):avg": float(ms.mean()), "infer:latency(ms):std": float(ms.std()),
                "infer:latency(ms):sum": float(ms.sum()),
                "infer:throughput(samples/s):avg": inference.sequences_per_second,
                "eval:num_steps": len(ms)})
    return out


def run_prediction(ctx: ft.RunContext, model: torch.nn.Module, tokenizer: Any, vocab_file: Path) -> None:
    """Test-set predictions: the GLUE submission file(s) and predictions.json ({guid: label})."""
    args = ctx.args
    by_guid: dict[str, Any] = {}
    for task_name in eval_tasks(args.task_name):
        task = glue.get_task(task_name)
        examples = glue.get_test_examples(task_name, args.data_dir, args.skip_malformed_rows)
        dataset = feature_dataset(ctx, task_name, examples, Path(args.data_dir) / task.test_file, tokenizer, vocab_file)
        inference = ft.predict(ctx, model, dataset, ft.batch_scores, args.eval_batch_size,
                               desc=f"Predicting {task_name}",
                               trim=not args.keep_padding)
        predictions = predictions_from_logits(task_name, inference.outputs[0])
        path = glue.write_submission(task_name, examples, predictions, ctx.output_dir)
        print(f"wrote {path}", flush=True)
        labels = glue.prediction_strings(task_name, predictions)
        prefix = "" if task_name == args.task_name else f"{task_name}:"
        by_guid.update({prefix + e.guid: label for e, label in zip(examples, labels, strict=True)})
    atomic_write_json(ctx.output_dir / "predictions.json", by_guid)


def dllogger_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Results under their own names plus the original's dllogger keys (it logged accuracy as exact_match)."""
    summary = dict(results)
    if "acc" in results:
        summary["exact_match"] = results["acc"]
    if "f1" in results:
        summary["F1"] = results["f1"]
    if "infer:latency(ms):sum" in results:
        summary["e2e_inference_time"] = results["infer:latency(ms):sum"] / 1000.0
        summary["inference_sequences_per_second"] = results["infer:throughput(samples/s):avg"]
    return summary


def check_data_files(args: argparse.Namespace) -> None:
    """Read the dev and test files before any work: a bad one must not end a finished training run."""
    for wanted, read in ((args.do_eval, glue.get_dev_examples), (args.do_predict, glue.get_test_examples)):
        for task_name in eval_tasks(args.task_name) if wanted else ():
            read(task_name, args.data_dir, args.skip_malformed_rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_data_files(args)
    ctx = ft.start_run(args)
    vocab_file = resolve_vocab_file(args.vocab_file, args.init_checkpoint)
    tokenizer = ft.load_tokenizer(vocab_file, args.do_lower_case)
    task = glue.get_task(args.task_name)
    model, config = ft.load_model(ctx, lambda cfg: BertForSequenceClassification(cfg, task.num_labels),
                                  tokenizer=tokenizer)
    results: dict[str, Any] = {}
    if args.do_train:
        results.update(run_training(ctx, model, tokenizer, vocab_file))
        ft.save_model(ctx, model, config, vocab_file)
    if ctx.is_main and args.do_eval:
        results.update(run_evaluation(ctx, model, tokenizer, vocab_file))
    if ctx.is_main and args.do_predict:
        run_prediction(ctx, model, tokenizer, vocab_file)
    if ctx.is_main and results:
        atomic_write_json(ctx.output_dir / "results.txt", results)
        ctx.logger.log((), dllogger_summary(results))
    ft.finish(ctx)


if __name__ == "__main__":
    run_main(main)
