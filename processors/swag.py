"""SWAG multiple choice: the csv reader and four-choice BERT features.

Columns are found by their header names (`fold-ind`, `sent1`, `sent2`, `ending0`..`ending3`,
`label`), so the released files, whose first column is an unnamed row index, and files without
that column both read. Context = `sent1`; each choice = `sent2` followed by one ending.
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from input_checks import InputError, allow_csv_fields_of, read_text_file
from processors.glue import check_max_seq_length, truncate_seq_pair

NUM_CHOICES = 4
_ENDINGS = tuple(f"ending{i}" for i in range(NUM_CHOICES))
_REQUIRED = ("fold-ind", "sent1", "sent2", *_ENDINGS)


@dataclass
class SwagExample:
    swag_id: str
    context_sentence: str
    start_ending: str
    endings: list[str]
    label: int | None = None


@dataclass
class SwagFeature:
    example_id: str
    input_ids: list[list[int]]
    input_mask: list[list[int]]
    segment_ids: list[list[int]]
    label: int | None


def _column_indices(path: Path, header: list[str], is_training: bool) -> dict[str, int]:
    wanted = (*_REQUIRED, "label") if is_training else _REQUIRED
    missing = [name for name in wanted if name not in header]
    if missing:
        hint = " (training needs a label column)" if missing == ["label"] else ""
        raise InputError(f"{path}:1: header lacks column(s) {', '.join(missing)}{hint}")
    names = (*_REQUIRED, "label") if "label" in header else _REQUIRED
    return {name: header.index(name) for name in names}


def _parse_label(path: Path, line_number: int, value: str) -> int:
    if value not in {str(i) for i in range(NUM_CHOICES)}:
        raise InputError(f"{path}:{line_number}: label {value!r} is not one of 0..{NUM_CHOICES - 1}")
    return int(value)


def read_swag_examples(input_file: str | os.PathLike, is_training: bool = True) -> list[SwagExample]:
    """Examples of a SWAG csv (`train.csv`, `val.csv`, or `test.csv` without labels)."""
    path = Path(input_file)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    examples = []
    with io.StringIO(allow_csv_fields_of(read_text_file(path)), newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file")
        columns = _column_indices(path, header, is_training)
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise InputError(
                    f"{path}:{reader.line_num}: expected {len(header)} comma-separated columns, found {len(fields)}"
                )
            label = _parse_label(path, reader.line_num, fields[columns["label"]]) if "label" in columns else None
            examples.append(SwagExample(
                swag_id=fields[columns["fold-ind"]],
                context_sentence=fields[columns["sent1"]],
                start_ending=fields[columns["sent2"]],
                endings=[fields[columns[name]] for name in _ENDINGS],
                label=label,
            ))
    return examples


def convert_examples_to_features(
    examples: Sequence[SwagExample], tokenizer: Any, max_seq_length: int
) -> list[SwagFeature]:
    """Per choice `[CLS] context [SEP] start-of-ending + ending [SEP]`, pair-truncated, zero-padded."""
    check_max_seq_length(max_seq_length, pairs=True)
    features = []
    for example in examples:
        context_tokens = tokenizer.tokenize(example.context_sentence)
        start_tokens = tokenizer.tokenize(example.start_ending)
        ids, masks, segments = [], [], []
        for ending in example.endings:
            context_choice = list(context_tokens)
            ending_tokens = start_tokens + tokenizer.tokenize(ending)
            truncate_seq_pair(context_choice, ending_tokens, max_seq_length - 3)
            tokens = ["[CLS]", *context_choice, "[SEP]", *ending_tokens, "[SEP]"]
            segment_ids = [0] * (len(context_choice) + 2) + [1] * (len(ending_tokens) + 1)
            input_ids = list(tokenizer.convert_tokens_to_ids(tokens))
            padding = [0] * (max_seq_length - len(input_ids))
            ids.append(input_ids + padding)
            masks.append([1] * len(input_ids) + padding)
            segments.append(segment_ids + padding)
        features.append(SwagFeature(example.swag_id, ids, masks, segments, example.label))
    return features


def features_to_arrays(features: Sequence[SwagFeature]) -> dict[str, np.ndarray]:
    """[N, 4, S] id/mask/segment arrays and [N] labels (-1 where unlabelled)."""
    n = len(features)
    seq = len(features[0].input_ids[0]) if features else 0
    shape = (n, NUM_CHOICES, seq)
    return {
        "input_ids": np.array([f.input_ids for f in features], dtype=np.int64).reshape(shape),
        "input_mask": np.array([f.input_mask for f in features], dtype=np.int64).reshape(shape),
        "segment_ids": np.array([f.segment_ids for f in features], dtype=np.int64).reshape(shape),
        "labels": np.array([-1 if f.label is None else f.label for f in features], dtype=np.int64),
    }
