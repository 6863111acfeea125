"""Fine-tune BERT on SQuAD v1.1 / v2.0, predict answers and score them (the original's flags).

    python run_squad.py --init_checkpoint ckpt.pt --config_file bert_config.json --vocab_file vocab.txt \
        --do_lower_case --do_train --train_file train-v1.1.json \
        --do_predict --do_eval --predict_file dev-v1.1.json --output_dir results/SQuAD

Writes pytorch_model.bin + bert_config.json (training), predictions.json, nbest_predictions.json
and, with --version_2_with_negative, null_odds.json (prediction); --do_eval scores the predictions
with the built-in official metric and logs exact_match and F1.

Batches are cut to their longest sequence and the span softmax covers real tokens only (padding can
never be the answer); --keep_padding restores the original's fully padded batches and softmax.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import finetuning as ft
from checkpoint_io import resolve_vocab_file
from input_checks import InputError, run_main
from modeling import BertForQuestionAnswering
from processors import squad, squad_metrics
from training import feature_cache_dir, main_process_first


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ft.add_common_arguments(parser, max_seq_length=384, seed=42, json_summary="results/dllogger.json")
    s = parser.add_argument_group("SQuAD")
    s.add_argument("--train_file", help="SQuAD json for training")
    s.add_argument("--predict_file", help="SQuAD json to predict (and score with --do_eval)")
    s.add_argument("--doc_stride", type=int, default=128, help="tokens between the starts of context windows")
    s.add_argument("--max_query_length", type=int, default=64, help="questions are cut to this many WordPieces")
    s.add_argument("--do_predict", action="store_true", help="predict answers for --predict_file")
    s.add_argument("--do_eval", action="store_true", help="score the predictions (implies --do_predict)")
    s.add_argument("--predict_batch_size", type=int, default=8, help="batch size for prediction")
    s.add_argument("--n_best_size", type=int, default=20, help="n-best answers kept per question")
    s.add_argument("--max_answer_length", type=int, default=30, help="longest answer, in WordPieces")
    s.add_argument("--version_2_with_negative", action="store_true", help="SQuAD 2.0: questions may have no answer")
    s.add_argument("--null_score_diff_threshold", type=float, default=0.0,
                   help="v2: answer '' when null score - best span score exceeds this")
    s.add_argument("--eval_script", help="run this official evaluate script instead of the built-in metric")
    ft.add_cache_arguments(parser, "the folder of the data file")
    args = parser.parse_args(argv)
    args.do_predict = args.do_predict or args.do_eval
    if not (args.do_train or args.do_predict):
        raise InputError("at least one of --do_train, --do_predict or --do_eval is required")
    if args.do_train and not args.train_file:
        raise InputError("--do_train needs --train_file")
    if args.do_predict and not args.predict_file:
        raise InputError("--do_predict/--do_eval need --predict_file")
    squad.check_window_settings(args.max_seq_length, args.doc_stride, args.max_query_length)
    return args


def qa_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
            end_positions: torch.Tensor, input_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the start and end cross-entropy; positions outside the sequence are ignored (as the original).

    With `input_mask`, padding positions are left out of the softmax: they can never be answers, and
    the loss then no longer depends on how far a batch is padded.
    """
    ignored = start_logits.size(1)
    start_logits, end_logits = start_logits.float(), end_logits.float()
    if input_mask is not None:
        padding = input_mask == 0
        lowest = torch.finfo(torch.float32).min
        start_logits, end_logits = start_logits.masked_fill(padding, lowest), end_logits.masked_fill(padding, lowest)
    start = start_positions.clamp(0, ignored)
    end = end_positions.clamp(0, ignored)
    start_loss = F.cross_entropy(start_logits, start, ignore_index=ignored)
    end_loss = F.cross_entropy(end_logits, end, ignore_index=ignored)
    return (start_loss + end_loss) / 2


def squad_train_loss(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """The span loss over real tokens (the default; batches may be cut to their longest sequence)."""
    input_ids, input_mask, segment_ids, start_positions, end_positions = batch
    start_logits, end_logits = model(input_ids, segment_ids, input_mask)
    return qa_loss(start_logits, end_logits, start_positions, end_positions, input_mask)


def padded_squad_train_loss(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """The original's span loss: the softmax covers every position up to --max_seq_length (--keep_padding)."""
    input_ids, input_mask, segment_ids, start_positions, end_positions = batch
    start_logits, end_logits = model(input_ids, segment_ids, input_mask)
    return qa_loss(start_logits, end_logits, start_positions, end_positions)


def squad_forward(model: torch.nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids, input_mask, segment_ids = batch
    return model(input_ids, segment_ids, input_mask)


def load_features(ctx: ft.RunContext, tokenizer: Any, vocab_file: Path, data_file: str, is_training: bool
                  ) -> tuple[list[squad.SquadExample], list[squad.SquadFeature]]:
    args = ctx.args
    # Training runs on every rank: rank 0 builds (and caches) the features first. Prediction is rank 0's alone.
    with main_process_first(ctx.is_main, enabled=is_training):
        examples, features, cache_file = squad.load_examples_and_features(
            data_file, tokenizer, vocab_file, args.do_lower_case, is_training=is_training,
            version_2_with_negative=args.version_2_with_negative, max_seq_length=args.max_seq_length,
            doc_stride=args.doc_stride, max_query_length=args.max_query_length,
            cache_dir=feature_cache_dir(args.cache_dir, Path(data_file).parent, args.skip_cache),
            write_cache=not args.skip_cache,
        )
    kind = "train" if is_training else "eval"
    ctx.logger.log("PARAMETER", {f"{kind}_samples": len(examples), f"{kind}_features": len(features),
                                 f"Cached_{kind}_features_file": str(cache_file) if cache_file else ""})
    return examples, features


def run_training(ctx: ft.RunContext, model: torch.nn.Module, tokenizer: Any, vocab_file: Path) -> None:
    _, features = load_features(ctx, tokenizer, vocab_file, ctx.args.train_file, is_training=True)
    arrays = squad.features_to_arrays(features)
    columns = ("input_ids", "input_mask", "segment_ids", "start_positions", "end_positions")
    dataset = ft.arrays_to_dataset(arrays, columns)
    ft.show_features(ctx, dataset, columns, tokenizer)
    loss_fn = padded_squad_train_loss if ctx.args.keep_padding else squad_train_loss
    result = ft.train(ctx, model, dataset, loss_fn, skip_pooler=True, clip_grad_norm=1.0,
                      trim=not ctx.args.keep_padding)
    ft.log_train_summary(ctx, result)


def run_prediction(ctx: ft.RunContext, model: torch.nn.Module, tokenizer: Any, vocab_file: Path) -> dict[str, Any]:
    args = ctx.args
    examples, features = load_features(ctx, tokenizer, vocab_file, args.predict_file, is_training=False)
    dataset = ft.arrays_to_dataset(squad.features_to_arrays(features), ("input_ids", "input_mask", "segment_ids"))
    ctx.logger.log("PARAMETER", {"infer_start": True, "predict_batch_size": args.predict_batch_size})
    inference = ft.predict(ctx, model, dataset, squad_forward, args.predict_batch_size, trim=not args.keep_padding,
                           per_position=True)
    start_logits, end_logits = inference.outputs
    results = [squad.RawResult(f.unique_id, start_logits[i].tolist(), end_logits[i].tolist())
               for i, f in enumerate(features)]
    predictions = squad.get_answers(
        examples, features, results, n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
        do_lower_case=args.do_lower_case, version_2_with_negative=args.version_2_with_negative,
        null_score_diff_threshold=args.null_score_diff_threshold, verbose_logging=args.verbose_logging,
    )
    out = ctx.output_dir
    squad.write_predictions(predictions, out / "predictions.json", out / "nbest_predictions.json",
                            out / "null_odds.json" if args.version_2_with_negative else None)
    summary: dict[str, Any] = ft.log_inference_summary(ctx, inference)
    if args.do_eval:
        scores = evaluate(args, predictions)
        print(json.dumps(scores), flush=True)
        ctx.logger.log((), scores)
        summary.update(scores)
    return summary


def evaluate(args: argparse.Namespace, predictions: squad.SquadPredictions) -> dict[str, float]:
    """exact_match and F1 (v2: HasAns/NoAns and the best null threshold too) of the written predictions."""
    if args.eval_script:
        return run_eval_script(args.eval_script, args.predict_file, Path(args.output_dir) / "predictions.json")
    dataset = squad.load_squad_json(args.predict_file)
    if not args.version_2_with_negative:
        v1 = squad_metrics.evaluate_v1(dataset, predictions.answers)
        return {"exact_match": v1["exact_match"], "F1": v1["f1"]}
    v2 = squad_metrics.evaluate_v2(dataset, predictions.answers)
    scores = {"exact_match": v2["exact"], "F1": v2["f1"]}
    scores.update({k: v for k, v in v2.items() if k.startswith(("HasAns_", "NoAns_")) and k.endswith(("exact", "f1"))})
    tuned = squad_metrics.evaluate_v2(dataset, predictions.answers, na_probs=predictions.null_odds)
    scores.update({k: tuned[k] for k in ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh") if k in tuned})
    return scores


def run_eval_script(script: str, data_file: str, predictions_file: Path) -> dict[str, float]:
    """The original's path: an official evaluate script printing `{"exact_match": .., "f1": ..}`."""
    if not Path(script).is_file():
        raise InputError(f"--eval_script not found: {script}")
    done = subprocess.run([sys.executable, script, data_file, str(predictions_file)], capture_output=True,
                          text=True, check=False)
    lines = done.stdout.strip().splitlines()
    try:
        scores = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise InputError(f"{script}: printed no JSON scores (exit {done.returncode}): {done.stderr.strip()[-200:]}"
                         ) from None
    return {"exact_match": scores.get("exact_match", scores.get("exact")), "F1": scores.get("f1")}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.do_train and args.do_predict:  # a bad predict file must not end a finished training run
        squad.read_squad_examples(args.predict_file, is_training=False,
                                  version_2_with_negative=args.version_2_with_negative)
    ctx = ft.start_run(args)
    vocab_file = resolve_vocab_file(args.vocab_file, args.init_checkpoint)
    tokenizer = ft.load_tokenizer(vocab_file, args.do_lower_case)
    model, config = ft.load_model(ctx, BertForQuestionAnswering, tokenizer=tokenizer)
    if args.do_train:
        run_training(ctx, model, tokenizer, vocab_file)
        ft.save_model(ctx, model, config, vocab_file)
    if args.do_predict and ctx.is_main:
        run_prediction(ctx, model, tokenizer, vocab_file)
    ft.finish(ctx)


if __name__ == "__main__":
    run_main(main)
