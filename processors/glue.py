"""GLUE: readers for the nine tasks' tsv files, BERT features, metrics and the submission writer.

Files are read as `download_glue_data.py` lays them out: tab-separated, no quoting, a UTF-8 BOM
on some headers, CoLA's train/dev without a header. Every row must have the column count of its
file; a wrong count is an InputError naming the file and line.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atomic_io import atomic_path
from input_checks import InputError, allow_csv_fields_of, read_text_file
from processors import cache, tokenize_texts

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Examples and tasks
# --------------------------------------------------------------------------------------------


@dataclass
class InputExample:
    """One sentence or sentence pair. `index` is the row id a GLUE submission file refers to."""

    guid: str
    text_a: str
    text_b: str | None = None
    label: str | None = None
    index: str | None = None


@dataclass(frozen=True)
class FileLayout:
    """Where the fields live in one kind of tsv file (column indices; -1 = last column)."""

    columns: int
    text_a: int
    text_b: int | None = None
    label: int | None = None
    header: bool = True
    guid: int | None = None


@dataclass(frozen=True)
class GlueTask:
    name: str
    labels: tuple[str, ...]
    train: FileLayout
    dev: FileLayout
    test: FileLayout
    dev_file: str = "dev.tsv"
    test_file: str = "test.tsv"
    submission_name: str = ""

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI_LABELS = ("contradiction", "entailment", "neutral")
_PAIR4 = FileLayout(columns=4, text_a=1, text_b=2, label=3, guid=0)
_PAIR_TEST3 = FileLayout(columns=3, text_a=1, text_b=2, guid=0)
_MNLI_TRAIN = FileLayout(columns=12, text_a=8, text_b=9, label=-1, guid=2)
_MNLI_DEV = FileLayout(columns=16, text_a=8, text_b=9, label=-1, guid=2)
_MNLI_TEST = FileLayout(columns=10, text_a=8, text_b=9, guid=0)
_STSB = FileLayout(columns=10, text_a=7, text_b=8, label=-1, guid=0)

TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "cola", _BINARY,
        train=FileLayout(columns=4, text_a=3, label=1, header=False),
        dev=FileLayout(columns=4, text_a=3, label=1, header=False),
        test=FileLayout(columns=2, text_a=1, guid=0),
        submission_name="CoLA.tsv",
    ),
    "sst-2": GlueTask(
        "sst-2", _BINARY,
        train=FileLayout(columns=2, text_a=0, label=1),
        dev=FileLayout(columns=2, text_a=0, label=1),
        test=FileLayout(columns=2, text_a=1, guid=0),
        submission_name="SST-2.tsv",
    ),
    "mrpc": GlueTask(
        "mrpc", _BINARY,
        train=FileLayout(columns=5, text_a=3, text_b=4, label=0),
        dev=FileLayout(columns=5, text_a=3, text_b=4, label=0),
        test=FileLayout(columns=5, text_a=3, text_b=4, guid=0),
        submission_name="MRPC.tsv",
    ),
    "sts-b": GlueTask(
        "sts-b", (),
        train=_STSB, dev=_STSB, test=FileLayout(columns=9, text_a=7, text_b=8, guid=0),
        submission_name="STS-B.tsv",
    ),
    "qqp": GlueTask(
        "qqp", _BINARY,
        train=FileLayout(columns=6, text_a=3, text_b=4, label=5, guid=0),
        dev=FileLayout(columns=6, text_a=3, text_b=4, label=5, guid=0),
        test=_PAIR_TEST3,
        submission_name="QQP.tsv",
    ),
    "mnli": GlueTask(
        "mnli", _MNLI_LABELS, train=_MNLI_TRAIN, dev=_MNLI_DEV, test=_MNLI_TEST,
        dev_file="dev_matched.tsv", test_file="test_matched.tsv", submission_name="MNLI-m.tsv",
    ),
    "mnli-mm": GlueTask(
        "mnli-mm", _MNLI_LABELS, train=_MNLI_TRAIN, dev=_MNLI_DEV, test=_MNLI_TEST,
        dev_file="dev_mismatched.tsv", test_file="test_mismatched.tsv", submission_name="MNLI-mm.tsv",
    ),
    "qnli": GlueTask("qnli", _NLI2, train=_PAIR4, dev=_PAIR4, test=_PAIR_TEST3, submission_name="QNLI.tsv"),
    "rte": GlueTask("rte", _NLI2, train=_PAIR4, dev=_PAIR4, test=_PAIR_TEST3, submission_name="RTE.tsv"),
    "wnli": GlueTask("wnli", _BINARY, train=_PAIR4, dev=_PAIR4, test=_PAIR_TEST3, submission_name="WNLI.tsv"),
}


def get_task(task_name: str) -> GlueTask:
    task = TASKS.get(task_name.lower())
    if task is None:
        raise InputError(f"unknown GLUE task {task_name!r}; known tasks: {', '.join(TASKS)}")
    return task


# --------------------------------------------------------------------------------------------
# Reading tsv files
# --------------------------------------------------------------------------------------------


def read_tsv(path: str | os.PathLike, columns: int, skip_malformed: bool = False) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty line; tabs only, quotes are text, BOM dropped.

    A row with another column count is an InputError, or with `skip_malformed` a warning and
    skipped (early QQP downloads carry a few such rows).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    rows = []
    # Read whole (a bad byte is then one line naming the file and line, not a traceback mid-parse).
    with io.StringIO(allow_csv_fields_of(read_text_file(path, encoding="utf-8-sig")), newline="") as fh:
        for line_number, fields in enumerate(csv.reader(fh, delimiter="\t", quotechar=None), start=1):
            if not fields:
                continue
            if len(fields) != columns:
                message = f"{path}:{line_number}: expected {columns} tab-separated columns, found {len(fields)}"
                if not skip_malformed:
                    raise InputError(message)
                logger.warning("skipping malformed row: %s", message)
                continue
            rows.append((line_number, fields))
    return rows


def read_examples(
    path: str | os.PathLike, layout: FileLayout, set_type: str, task: GlueTask, skip_malformed: bool = False
) -> list[InputExample]:
    rows = read_tsv(path, layout.columns, skip_malformed)
    if layout.header:
        rows = rows[1:]
    examples = []
    for row_index, (line_number, fields) in enumerate(rows):
        label = fields[layout.label] if layout.label is not None else None
        if label is not None and task.labels and label not in task.labels:
            raise InputError(f"{path}:{line_number}: label {label!r} is not one of {', '.join(task.labels)}")
        if label is not None and task.is_regression:
            _check_float(path, line_number, label)
        index = fields[layout.guid] if layout.guid is not None else str(row_index)
        examples.append(InputExample(
            guid=f"{set_type}-{index}",
            text_a=fields[layout.text_a],
            text_b=fields[layout.text_b] if layout.text_b is not None else None,
            label=label,
            index=index,
        ))
    if not examples:
        # Scoring or predicting nothing would end in a traceback (or a metric of no rows).
        raise InputError(f"{path}: no examples (the file is empty{' or has only its header' if layout.header else ''})")
    return examples


def _check_float(path: str | os.PathLike, line_number: int, value: str) -> None:
    try:
        score = float(value)
    except ValueError as exc:
        raise InputError(f"{path}:{line_number}: score {value!r} is not a number") from exc
    if not math.isfinite(score):  # 'nan', 'inf', '1e999': one such score makes every loss NaN
        raise InputError(f"{path}:{line_number}: score {value!r} is not a finite number")


def get_train_examples(task_name: str, data_dir: str | os.PathLike, skip_malformed: bool = False) -> list[InputExample]:
    task = get_task(task_name)
    return read_examples(Path(data_dir) / "train.tsv", task.train, "train", task, skip_malformed)


def get_dev_examples(task_name: str, data_dir: str | os.PathLike, skip_malformed: bool = False) -> list[InputExample]:
    task = get_task(task_name)
    return read_examples(Path(data_dir) / task.dev_file, task.dev, "dev", task, skip_malformed)


def get_test_examples(task_name: str, data_dir: str | os.PathLike, skip_malformed: bool = False) -> list[InputExample]:
    task = get_task(task_name)
    return read_examples(Path(data_dir) / task.test_file, task.test, "test", task, skip_malformed)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


@dataclass
class InputFeatures:
    input_ids: list[int]
    input_mask: list[int]
    segment_ids: list[int]
    label_id: int | float | None


def check_max_seq_length(max_seq_length: int, pairs: bool) -> None:
    """InputError when not even one token of each text fits between the special tokens."""
    layout, need = ("[CLS] a [SEP] b [SEP]", 5) if pairs else ("[CLS] text [SEP]", 3)
    if max_seq_length < need:
        raise InputError(f"--max_seq_length {max_seq_length} is too short: {layout} needs at least {need}")


def truncate_seq_pair(tokens_a: list[str], tokens_b: list[str], max_length: int) -> None:
    """Drop tokens from the end of the longer list (of b on a tie) until both fit, in place."""
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def encode_pair(
    tokens_a: list[str], tokens_b: list[str] | None, max_seq_length: int, tokenizer: Any
) -> tuple[list[int], list[int], list[int]]:
    """`[CLS] a [SEP] (b [SEP])` ids, mask and segments, zero-padded; truncates like the original."""
    check_max_seq_length(max_seq_length, pairs=tokens_b is not None)
    if tokens_b:
        truncate_seq_pair(tokens_a, tokens_b, max_seq_length - 3)
    else:
        tokens_a = tokens_a[: max_seq_length - 2]
    tokens = ["[CLS]", *tokens_a, "[SEP]"]
    segment_ids = [0] * len(tokens)
    if tokens_b:
        tokens += [*tokens_b, "[SEP]"]
        segment_ids += [1] * (len(tokens_b) + 1)
    input_ids = list(tokenizer.convert_tokens_to_ids(tokens))
    padding = [0] * (max_seq_length - len(input_ids))
    return input_ids + padding, [1] * len(input_ids) + padding, segment_ids + padding


def label_to_id(task: GlueTask, label: str | None) -> int | float | None:
    if label is None:
        return None
    if task.is_regression:
        return float(label)
    return task.labels.index(label)


def convert_examples_to_features(
    examples: Sequence[InputExample], task_name: str, max_seq_length: int, tokenizer: Any
) -> list[InputFeatures]:
    task = get_task(task_name)
    all_a = tokenize_texts(tokenizer, [e.text_a for e in examples])
    all_b = tokenize_texts(tokenizer, [e.text_b or "" for e in examples])
    features = []
    for example, tokens_a, tokens_b in zip(examples, all_a, all_b, strict=True):
        tokens_b = tokens_b if example.text_b else None
        input_ids, input_mask, segment_ids = encode_pair(tokens_a, tokens_b, max_seq_length, tokenizer)
        features.append(InputFeatures(input_ids, input_mask, segment_ids, label_to_id(task, example.label)))
    return features


def features_to_arrays(features: Sequence[InputFeatures], regression: bool = False) -> dict[str, np.ndarray]:
    """Arrays for a TensorDataset or the cache; a missing label (test set) is -1 / NaN."""
    missing = math.nan if regression else -1
    labels = [missing if f.label_id is None else f.label_id for f in features]
    n = len(features)
    seq = len(features[0].input_ids) if features else 0
    return {
        "input_ids": np.array([f.input_ids for f in features], dtype=np.int32).reshape(n, seq),
        "input_mask": np.array([f.input_mask for f in features], dtype=np.int8).reshape(n, seq),
        "segment_ids": np.array([f.segment_ids for f in features], dtype=np.int8).reshape(n, seq),
        "label_ids": np.array(labels, dtype=np.float32 if regression else np.int64),
    }


def load_features(
    task_name: str,
    examples: Sequence[InputExample],
    tokenizer: Any,
    *,
    input_file: str | os.PathLike,
    vocab_file: str | os.PathLike,
    do_lower_case: bool,
    max_seq_length: int,
    cache_dir: str | os.PathLike | None = None,
    write_cache: bool = True,
) -> tuple[dict[str, np.ndarray], Path | None]:
    """Feature arrays for `examples` (read from `input_file`), cached by every setting that changes them."""
    task = get_task(task_name)
    if cache_dir is None:
        features = convert_examples_to_features(examples, task_name, max_seq_length, tokenizer)
        return features_to_arrays(features, task.is_regression), None
    key = {
        "kind": "glue-features-v1",
        "task": task.name,
        "input_sha256": cache.file_sha256(input_file),
        "vocab_sha256": cache.file_sha256(vocab_file),
        "do_lower_case": bool(do_lower_case),
        "max_seq_length": int(max_seq_length),
    }
    path = cache.cache_path(cache_dir, f"{task.name}-{Path(input_file).stem}", key)
    arrays = cache.load_arrays(path, key)
    if arrays is None:
        features = convert_examples_to_features(examples, task_name, max_seq_length, tokenizer)
        arrays = features_to_arrays(features, task.is_regression)
        if write_cache:
            cache.save_arrays(path, arrays, key)
    return arrays, path if write_cache else None


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def simple_accuracy(preds: Sequence[Any], labels: Sequence[Any]) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def binary_f1(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class; 0 when there are no true positives (sklearn's zero_division=0)."""
    p = np.asarray(preds) == positive
    t = np.asarray(labels) == positive
    true_pos = int(np.sum(p & t))
    if true_pos == 0:
        return 0.0
    return 2.0 * true_pos / (int(p.sum()) + int(t.sum()))


def matthews_corrcoef(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Multi-class Matthews correlation from the confusion matrix; 0 when it is undefined."""
    classes, encoded = np.unique(np.concatenate([np.asarray(labels), np.asarray(preds)]), return_inverse=True)
    n = len(labels)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (encoded[:n], encoded[n:]), 1.0)
    true_counts = confusion.sum(axis=1)
    pred_counts = confusion.sum(axis=0)
    correct = np.trace(confusion)
    samples = confusion.sum()
    cov_pred_true = correct * samples - pred_counts @ true_counts
    cov_pred = samples**2 - pred_counts @ pred_counts
    cov_true = samples**2 - true_counts @ true_counts
    if cov_pred == 0 or cov_true == 0:
        return 0.0
    return float(cov_pred_true / math.sqrt(cov_pred * cov_true))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    a = np.asarray(x, dtype=np.float64) - np.mean(x)
    b = np.asarray(y, dtype=np.float64) - np.mean(y)
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b / denominator) if denominator else math.nan


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their positions."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    group_starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group_id = np.cumsum(group_starts) - 1
    first = np.flatnonzero(group_starts)
    last = np.append(first[1:], len(values)) - 1
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = (first[group_id] + last[group_id]) / 2.0 + 1.0
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def compute_metrics(task_name: str, preds: Sequence[Any], labels: Sequence[Any]) -> dict[str, float]:
    """The task's GLUE metrics (keys as in the original: mcc, acc, f1, acc_and_f1, pearson, spearmanr, corr)."""
    task = get_task(task_name)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if task.name == "cola":
        return {"mcc": matthews_corrcoef(preds, labels)}
    if task.name in ("mrpc", "qqp"):
        acc, f1 = simple_accuracy(preds, labels), binary_f1(preds, labels)
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    if task.name == "sts-b":
        p, s = pearson(preds, labels), spearman(preds, labels)
        return {"pearson": p, "spearmanr": s, "corr": (p + s) / 2}
    return {"acc": simple_accuracy(preds, labels)}


# --------------------------------------------------------------------------------------------
# Submission files
# --------------------------------------------------------------------------------------------


def prediction_strings(task_name: str, predictions: Sequence[Any]) -> list[str]:
    """Label strings for class ids, or scores with 3 decimals for STS-B (regression)."""
    task = get_task(task_name)
    if task.is_regression:
        return [f"{float(p):.3f}" for p in predictions]
    return [task.labels[int(p)] for p in predictions]


def write_submission(
    task_name: str, examples: Sequence[InputExample], predictions: Sequence[Any], output_dir: str | os.PathLike
) -> Path:
    """`index<TAB>prediction` rows in the file the GLUE leaderboard expects (MRPC.tsv, MNLI-m.tsv, ...)."""
    task = get_task(task_name)
    if len(examples) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    path = Path(output_dir) / task.submission_name
    lines = ["index\tprediction"]
    for example, text in zip(examples, prediction_strings(task_name, predictions), strict=True):
        lines.append(f"{example.index}\t{text}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
