"""Predict a SQuAD file through a BERT tensor model on a Triton server, then score it.

    python triton/run_squad_client.py -u localhost:8000 -i http --model_name bert \\
        --vocab_file data/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt \\
        --do_lower_case --predict_file dev-v1.1.json --output_dir results/triton

Windows, post-processing and the metric are the project's own (processors.squad,
processors.squad_metrics), with run_squad.py's defaults, so the same checkpoint gives the same
predictions.json here as with `run_squad.py --do_predict`. Writes predictions.json,
nbest_predictions.json (and null_odds.json for v2) into --output_dir and prints the scores as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import bert_io
import client_lib

from atomic_io import atomic_write_json
from input_checks import InputError, check_at_least_one, check_output_dir, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    client_lib.add_connection_args(parser, model_default="bert")
    parser.add_argument("--predict_file", required=True, help="SQuAD json to answer")
    parser.add_argument("--output_dir", required=True, type=Path)
    parser.add_argument("--batch_size", type=int, default=8, help="windows per request")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    parser.add_argument("--synchronous", action="store_true", help="one request at a time (--concurrency 1)")
    parser.add_argument("--max_questions", type=int, default=None,
                        help="answer (and score) only the first N questions of the file")
    parser.add_argument("--skip_eval", action="store_true", help="write predictions without scoring them")
    bert_io.add_squad_feature_args(parser, vocab_required=True)
    bert_io.add_squad_answer_args(parser)
    args = parser.parse_args(argv)
    if args.synchronous:
        args.concurrency = 1
    if args.max_questions is not None and args.max_questions < 1:
        parser.error("--max_questions must be at least 1")
    bert_io.check_feature_args(args)
    check_at_least_one(args.batch_size, "--batch_size")
    check_output_dir(args.output_dir)
    return args


def score(args: argparse.Namespace, answers: dict[str, str]) -> dict[str, Any]:
    from processors import squad, squad_metrics

    dataset = bert_io.first_questions(squad.load_squad_json(args.predict_file), args.max_questions)
    if args.version_2_with_negative:
        return squad_metrics.evaluate_v2(dataset, answers)
    return squad_metrics.evaluate_v1(dataset, answers)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from processors import squad
    from tokenization import FullTokenizer

    args = parse_args(argv)
    model = client_lib.open_model(args)
    if model.takes_text:
        raise InputError(f"model {model.name!r} takes text; name the tensor model (e.g. --model_name bert)")
    tokenizer = FullTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
    examples = squad.read_squad_examples(args.predict_file, is_training=False,
                                         version_2_with_negative=args.version_2_with_negative)
    examples = examples[:args.max_questions]
    features = squad.convert_examples_to_features(examples, tokenizer, **bert_io.feature_settings(args))

    start = time.perf_counter()
    results = client_lib.feature_logits(model, features, args.batch_size, args.concurrency)
    seconds = time.perf_counter() - start
    predictions = squad.get_answers(examples, features, results, **bert_io.answer_settings(args))

    out = args.output_dir
    squad.write_predictions(predictions, out / "predictions.json", out / "nbest_predictions.json",
                            out / "null_odds.json" if args.version_2_with_negative else None)
    summary: dict[str, Any] = {
        "questions": len(examples), "features": len(features), "e2e_inference_time": seconds,
        "inference_sequences_per_second": len(features) / seconds if seconds else 0.0,
    }
    if not args.skip_eval:
        summary.update(score(args, predictions.answers))
    atomic_write_json(out / "results.json", summary)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    run_main(main)
