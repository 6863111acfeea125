"""Fine-tune and evaluate BERT on SWAG multiple choice (the original's flags).

    python run_swag.py --data_dir swagaf/data --init_checkpoint ckpt.pt --config_file bert_config.json \
        --vocab_file vocab.txt --do_lower_case --do_train --do_eval --output_dir results/SWAG

Reads train.csv / val.csv; each example is a context and four endings, scored as four
`[CLS] context [SEP] ending [SEP]` sequences. --do_eval writes eval_results.txt (accuracy and loss).
Unlike the original's run_swag.py, the pooler is trained: the multiple-choice head reads it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

import finetuning as ft
from atomic_io import atomic_write_text
from checkpoint_io import resolve_vocab_file
from input_checks import InputError, run_main
from modeling import BertForMultipleChoice
from processors import swag

FEATURE_COLUMNS = ("input_ids", "input_mask", "segment_ids", "labels")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ft.add_common_arguments(parser, max_seq_length=128, seed=42)
    s = parser.add_argument_group("SWAG")
    s.add_argument("--data_dir", required=True, help="folder with train.csv and val.csv")
    s.add_argument("--do_eval", action="store_true", help="score val.csv")
    s.add_argument("--eval_batch_size", type=int, default=8, help="batch size for evaluation")
    args = parser.parse_args(argv)
    if not (args.do_train or args.do_eval):
        raise InputError("at least one of --do_train or --do_eval is required")
    swag.check_max_seq_length(args.max_seq_length, pairs=True)
    return args


def read_examples(path: Path, is_training: bool) -> list[swag.SwagExample]:
    examples = swag.read_swag_examples(path, is_training=is_training)
    if not examples:
        raise InputError(f"{path}: no examples")
    return examples


def swag_dataset(path: Path, tokenizer: Any, max_seq_length: int, is_training: bool) -> torch.utils.data.TensorDataset:
    examples = read_examples(path, is_training)
    arrays = swag.features_to_arrays(swag.convert_examples_to_features(examples, tokenizer, max_seq_length))
    return ft.arrays_to_dataset(arrays, FEATURE_COLUMNS)


def run_evaluation(ctx: ft.RunContext, model: torch.nn.Module, tokenizer: Any, global_step: int,
                   train_loss: float | None) -> dict[str, float]:
    args = ctx.args
    dataset = swag_dataset(Path(args.data_dir) / "val.csv", tokenizer, args.max_seq_length, is_training=True)
    inference = ft.predict(ctx, model, dataset, ft.batch_scores, args.eval_batch_size, trim=not args.keep_padding)
    scores = inference.outputs[0]
    labels = dataset.tensors[3].numpy()
    results = {
        "eval_loss": float(ft.classification_loss(torch.from_numpy(scores), torch.from_numpy(labels))),
        "eval_accuracy": float(np.mean(scores.argmax(axis=-1) == labels)),
        "global_step": global_step,
    }
    if train_loss is not None:
        results["loss"] = train_loss
    lines = [f"{key} = {value}" for key, value in sorted(results.items())]
    atomic_write_text(ctx.output_dir / "eval_results.txt", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    ctx.logger.log((), {**results, **ft.log_inference_summary(ctx, inference)})
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.do_eval:  # before any work: a bad val.csv must not end a finished training run
        read_examples(Path(args.data_dir) / "val.csv", is_training=True)
    ctx = ft.start_run(args)
    vocab_file = resolve_vocab_file(args.vocab_file, args.init_checkpoint)
    tokenizer = ft.load_tokenizer(vocab_file, args.do_lower_case)
    model, config = ft.load_model(ctx, lambda cfg: BertForMultipleChoice(cfg, swag.NUM_CHOICES), tokenizer=tokenizer)
    global_step, train_loss = 0, None
    if args.do_train:
        dataset = swag_dataset(Path(args.data_dir) / "train.csv", tokenizer, args.max_seq_length, is_training=True)
        ft.show_features(ctx, dataset, FEATURE_COLUMNS, tokenizer)
        result = ft.train(ctx, model, dataset, ft.batch_classification_loss, trim=not args.keep_padding)
        ft.log_train_summary(ctx, result)
        global_step, train_loss = result.global_step, result.final_loss
        ft.save_model(ctx, model, config, vocab_file)
    if args.do_eval and ctx.is_main:
        run_evaluation(ctx, model, tokenizer, global_step, train_loss)
    ft.finish(ctx)


if __name__ == "__main__":
    run_main(main)
