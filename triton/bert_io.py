"""What the serving scripts share: tensor names, loading a fine-tuned model, SQuAD features as arrays.

Imported by the scripts in this folder (export.py, client.py, run_squad_client.py, perf.py) and by the
python-backend model files; it needs numpy, and torch only for `load_finetuned_model`.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The exported graphs, the model configs and the clients all use these names (inference.py's ONNX
# backend relies on them too). The PyTorch (libtorch) backend wants `<name>__<index>` instead;
# `logical_name` maps those back.
INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
QA_OUTPUT_NAMES = ("start_logits", "end_logits")
CLASSIFICATION_OUTPUT_NAMES = ("logits",)
TASKS = ("qa", "classification")

_INDEX_SUFFIX = re.compile(r"__\d+$")


def output_names(task: str) -> tuple[str, ...]:
    return QA_OUTPUT_NAMES if task == "qa" else CLASSIFICATION_OUTPUT_NAMES


def logical_name(name: str) -> str:
    """`input_ids__0` → `input_ids`; plain names are returned as they are."""
    return _INDEX_SUFFIX.sub("", name)


def indexed_names(names: Sequence[str]) -> list[str]:
    """The libtorch backend's naming convention: position in the forward call as a suffix."""
    return [f"{name}__{index}" for index, name in enumerate(names)]


def add_squad_feature_args(parser: argparse.ArgumentParser, *, vocab_required: bool = False) -> None:
    """The original's flags for turning SQuAD text into windows (run_squad.py and the clients)."""
    parser.add_argument("--vocab_file", required=vocab_required, help="WordPiece vocab the model was trained with")
    parser.add_argument("--do_lower_case", action="store_true",
                        help="lower-case and strip accents (uncased models; off by default, as in run_squad.py)")
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--max_query_length", type=int, default=64)


def add_squad_answer_args(parser: argparse.ArgumentParser, *, n_best_default: int = 20) -> None:
    """The original's post-processing flags (logits → answer text)."""
    parser.add_argument("--n_best_size", type=int, default=n_best_default)
    parser.add_argument("--max_answer_length", type=int, default=30)
    parser.add_argument("--version_2_with_negative", action="store_true")
    parser.add_argument("--null_score_diff_threshold", type=float, default=0.0)


def answer_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of processors.squad.get_answers taken from the parsed flags."""
    return dict(
        n_best_size=args.n_best_size,
        max_answer_length=args.max_answer_length,
        do_lower_case=args.do_lower_case,
        version_2_with_negative=args.version_2_with_negative,
        null_score_diff_threshold=args.null_score_diff_threshold,
    )


def check_feature_args(args: argparse.Namespace) -> None:
    """InputError for windowing flags that cannot work (a stride below 1 would never finish a context)."""
    from processors.squad import check_window_settings

    check_window_settings(args.max_seq_length, args.doc_stride, args.max_query_length)


def feature_settings(args: argparse.Namespace) -> dict[str, int]:
    check_feature_args(args)
    return dict(max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length)


def feature_arrays(features: Sequence[Any]) -> dict[str, np.ndarray]:
    """int64 [n, seq] model inputs of SQuAD features, keyed by INPUT_NAMES."""
    return {
        "input_ids": np.asarray([f.input_ids for f in features], dtype=np.int64),
        "token_type_ids": np.asarray([f.segment_ids for f in features], dtype=np.int64),
        "attention_mask": np.asarray([f.input_mask for f in features], dtype=np.int64),
    }


def random_token_batch(rng: np.random.Generator, count: int, seq_length: int,
                       vocab_size: int = 30522) -> dict[str, np.ndarray]:
    """Model inputs of random real-looking rows: ids over the vocabulary, two segments, some padding."""
    input_ids = rng.integers(1000, vocab_size, size=(count, seq_length), dtype=np.int64)
    lengths = rng.integers(seq_length // 2, seq_length + 1, size=count)
    positions = np.arange(seq_length)[None, :]
    attention_mask = (positions < lengths[:, None]).astype(np.int64)
    token_type_ids = ((positions >= lengths[:, None] // 3) & (attention_mask == 1)).astype(np.int64)
    return {"input_ids": input_ids * attention_mask, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def first_questions(dataset: list[dict], limit: int | None) -> list[dict]:
    """A copy of a SQuAD `data` list cut after its first `limit` questions (None: all of them)."""
    if limit is None:
        return dataset
    kept: list[dict] = []
    remaining = limit
    for article in dataset:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            if remaining <= 0:
                break
            qas = paragraph["qas"][:remaining]
            remaining -= len(qas)
            paragraphs.append({**paragraph, "qas": qas})
        if paragraphs:
            kept.append({**article, "paragraphs": paragraphs})
        if remaining <= 0:
            break
    return kept


def load_finetuned_model(checkpoint: str | Path, config_file: str | Path | None, task: str,
                         num_labels: int | None = None) -> Any:
    """A fine-tuned QA or classification model in eval mode, loaded strictly (no layer left random)."""
    import checkpoint_io
    import modeling

    config = checkpoint_io.load_config_for_checkpoint(checkpoint, config_file)
    if task == "qa":
        model = modeling.BertForQuestionAnswering(config)
    else:
        labels = num_labels or checkpoint_io.num_classifier_labels(checkpoint)
        model = modeling.BertForSequenceClassification(config, labels)
    checkpoint_io.load_checkpoint(model, checkpoint, strict=True)
    return model.eval()
