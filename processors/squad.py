"""SQuAD v1.1 / v2.0 for BERT: json → examples → sliding-window features → logits → answers.

Behaviour follows the reference `run_squad.py`: whitespace words with a character→word
map, WordPiece sub-tokens with index maps both ways, `_improve_answer_span`, doc-stride windows,
the max-context rule, [CLS] as the no-answer position, and n-best post-processing with
`get_final_text` character alignment. One fix: the v2 null prediction uses the logits
of its own question, not of the last question seen.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from atomic_io import atomic_write_json
from input_checks import InputError, read_json_file
from processors import cache, tokenize_texts

logger = logging.getLogger(__name__)

FIRST_UNIQUE_ID = 1_000_000_000
CLS, SEP = "[CLS]", "[SEP]"


class WordPieceTokenizer(Protocol):
    def tokenize(self, text: str) -> list[str]: ...

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]: ...


# --------------------------------------------------------------------------------------------
# Data structures
# --------------------------------------------------------------------------------------------


@dataclass
class SquadExample:
    """One question over one context. Positions are whitespace-word indices (training only)."""

    qas_id: str
    question_text: str
    doc_tokens: list[str]
    orig_answer_text: str | None = None
    start_position: int | None = None
    end_position: int | None = None
    is_impossible: bool = False
    answers: list[str] = field(default_factory=list)


@dataclass
class SquadFeature:
    """One window of one example. Positions index into `tokens` (0 = [CLS] = no answer)."""

    unique_id: int
    example_index: int
    doc_span_index: int
    tokens: list[str]
    token_to_orig_map: dict[int, int]
    token_is_max_context: dict[int, bool]
    input_ids: list[int]
    input_mask: list[int]
    segment_ids: list[int]
    start_position: int | None = None
    end_position: int | None = None
    is_impossible: bool = False


@dataclass
class RawResult:
    unique_id: int
    start_logits: Sequence[float]
    end_logits: Sequence[float]


@dataclass
class DocSpan:
    start: int
    length: int


@dataclass
class SquadPredictions:
    answers: dict[str, str]
    nbest: dict[str, list[dict[str, Any]]]
    null_odds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Reading the json
# --------------------------------------------------------------------------------------------


def is_whitespace(char: str) -> bool:
    return char in " \t\r\n" or ord(char) == 0x202F


def split_doc_tokens(context: str) -> tuple[list[str], list[int]]:
    """Whitespace words of `context` and, for every character, the index of its word."""
    doc_tokens: list[str] = []
    char_to_word_offset: list[int] = []
    after_space = True
    for char in context:
        if is_whitespace(char):
            after_space = True
        else:
            if after_space:
                doc_tokens.append(char)
            else:
                doc_tokens[-1] += char
            after_space = False
        char_to_word_offset.append(len(doc_tokens) - 1)
    return doc_tokens, char_to_word_offset


def _require(mapping: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise InputError(f"{path}: {where} has no {key!r} key")
    return mapping[key]


def load_squad_json(path: str | os.PathLike) -> list[dict]:
    """The `data` list of a SQuAD file; InputError for unreadable or non-SQuAD json."""
    path = Path(path)
    dataset = read_json_file(path)
    data = _require(dataset, "data", path, "the top level")
    if not isinstance(data, list):
        raise InputError(f"{path}: 'data' must be a list of articles")
    return data


def _answer_word_span(
    path: Path, qas_id: str, context: str, char_to_word_offset: list[int], answer: Any
) -> tuple[str, int, int]:
    text = _require(answer, "text", path, f"an answer of question {qas_id}")
    start = _require(answer, "answer_start", path, f"an answer of question {qas_id}")
    if not isinstance(start, int) or start < 0 or start + max(len(text), 1) > len(context):
        raise InputError(
            f"{path}: question {qas_id}: answer_start {start!r} with answer length {len(text)} "
            f"is outside its context ({len(context)} characters)"
        )
    end_char = start + max(len(text), 1) - 1
    return text, char_to_word_offset[start], char_to_word_offset[end_char]


def read_squad_examples(
    input_file: str | os.PathLike,
    is_training: bool,
    version_2_with_negative: bool = False,
    first_answer_only: bool = False,
) -> list[SquadExample]:
    """Examples of a SQuAD json file.

    Training needs exactly one answer per answerable question, as the reference does; with
    `first_answer_only` the first of several answers is used (dev files list several).
    Training examples whose located span does not contain the answer text are dropped with a warning.
    """
    path = Path(input_file)
    examples: list[SquadExample] = []
    seen_ids: set[str] = set()
    dropped = 0
    for a_idx, article in enumerate(load_squad_json(path)):
        paragraphs = _require(article, "paragraphs", path, f"data[{a_idx}]")
        for p_idx, paragraph in enumerate(paragraphs):
            where = f"data[{a_idx}].paragraphs[{p_idx}]"
            context = _require(paragraph, "context", path, where)
            doc_tokens, char_to_word_offset = split_doc_tokens(context)
            for q_idx, qa in enumerate(_require(paragraph, "qas", path, where)):
                example = _read_question(
                    path, f"{where}.qas[{q_idx}]", qa, context, doc_tokens, char_to_word_offset,
                    is_training, version_2_with_negative, first_answer_only,
                )
                if example is None:
                    dropped += 1
                    continue
                if example.qas_id in seen_ids:
                    # Predictions are keyed by id: a second question with the same id would overwrite the first.
                    raise InputError(f"{path}: {where}.qas[{q_idx}]: question id {example.qas_id!r} appears twice")
                seen_ids.add(example.qas_id)
                examples.append(example)
    if dropped:
        logger.warning("%s: dropped %d training questions whose answer text is not in the located span", path, dropped)
    return examples


def _read_question(
    path: Path, where: str, qa: Any, context: str, doc_tokens: list[str], char_to_word_offset: list[int],
    is_training: bool, version_2_with_negative: bool, first_answer_only: bool,
) -> SquadExample | None:
    qas_id = str(_require(qa, "id", path, where))
    question = _require(qa, "question", path, f"question {qas_id}")
    answers = qa.get("answers", [])
    if not isinstance(answers, list):
        raise InputError(f"{path}: question {qas_id}: 'answers' must be a list")
    spans = [_answer_word_span(path, qas_id, context, char_to_word_offset, ans) for ans in answers]
    example = SquadExample(qas_id=qas_id, question_text=question, doc_tokens=doc_tokens,
                           answers=[text for text, _, _ in spans])
    impossible = _is_impossible(path, qas_id, qa, version_2_with_negative)
    if not is_training:
        return example
    example.is_impossible = impossible
    if example.is_impossible:
        example.orig_answer_text, example.start_position, example.end_position = "", -1, -1
        return example
    if len(spans) != 1 and not (first_answer_only and spans):
        raise InputError(f"{path}: question {qas_id}: training needs exactly one answer, found {len(spans)}")
    text, start_word, end_word = spans[0]
    located = " ".join(doc_tokens[start_word:end_word + 1])
    if located.find(" ".join(text.split())) == -1:
        logger.warning("Could not find answer %r in %r (question %s)", text, located, qas_id)
        return None
    example.orig_answer_text, example.start_position, example.end_position = text, start_word, end_word
    return example


def _is_impossible(path: Path, qas_id: str, qa: dict, version_2_with_negative: bool) -> bool:
    """The question's `is_impossible`, a JSON boolean ("false", a string, used to make every question
    unanswerable); a SQuAD 2.0 file, which has unanswerable questions, is refused in v1.1 mode, where the
    scores would fail (or be wrong) only after the predictions were written."""
    value = qa.get("is_impossible", False)
    if not isinstance(value, bool):
        raise InputError(f"{path}: question {qas_id}: 'is_impossible' must be true or false, got {value!r}")
    if value and not version_2_with_negative:
        raise InputError(f"{path}: question {qas_id} has is_impossible true, a SQuAD 2.0 file; "
                         "pass --version_2_with_negative")
    return value


def example_from_text(question: str, context: str, qas_id: str = "0") -> SquadExample:
    """A prediction example from raw strings (interactive inference)."""
    doc_tokens, _ = split_doc_tokens(context)
    return SquadExample(qas_id=qas_id, question_text=question, doc_tokens=doc_tokens)


# --------------------------------------------------------------------------------------------
# Examples → features
# --------------------------------------------------------------------------------------------


@dataclass
class _TokenizedDoc:
    all_doc_tokens: list[str]
    tok_to_orig_index: list[int]
    orig_to_tok_index: list[int]


def _tokenize_doc(doc_tokens: list[str], tokenizer: WordPieceTokenizer) -> _TokenizedDoc:
    all_doc_tokens: list[str] = []
    tok_to_orig_index: list[int] = []
    orig_to_tok_index: list[int] = []
    for word_index, pieces in enumerate(tokenize_texts(tokenizer, doc_tokens)):
        orig_to_tok_index.append(len(all_doc_tokens))
        for sub_token in pieces:
            tok_to_orig_index.append(word_index)
            all_doc_tokens.append(sub_token)
    return _TokenizedDoc(all_doc_tokens, tok_to_orig_index, orig_to_tok_index)


def _improve_answer_span(
    doc_tokens: list[str], input_start: int, input_end: int, tokenizer: WordPieceTokenizer, orig_answer_text: str
) -> tuple[int, int]:
    """The tightest sub-span whose WordPieces spell the tokenized answer.

    Word-level spans over-cover answers such as "1895" inside "(1895-1943)."; searching inside
    the span for the answer's own WordPieces finds the exact pieces.
    """
    answer_pieces = " ".join(tokenizer.tokenize(orig_answer_text))
    for new_start in range(input_start, input_end + 1):
        for new_end in range(input_end, new_start - 1, -1):
            if " ".join(doc_tokens[new_start:new_end + 1]) == answer_pieces:
                return new_start, new_end
    return input_start, input_end


def _check_is_max_context(doc_spans: list[DocSpan], cur_span_index: int, position: int) -> bool:
    """True when window `cur_span_index` gives token `position` the most context on both sides.

    Score = min(left, right) context + 0.01 × window length, the first best window wins ties.
    """
    best_score = None
    best_span_index = None
    for span_index, span in enumerate(doc_spans):
        end = span.start + span.length - 1
        if position < span.start or position > end:
            continue
        score = min(position - span.start, end - position) + 0.01 * span.length
        if best_score is None or score > best_score:
            best_score = score
            best_span_index = span_index
    return cur_span_index == best_span_index


# The shortest sequence that holds [CLS], a one-piece question, [SEP], one document piece and [SEP].
MIN_SEQ_LENGTH = 5


def check_window_settings(max_seq_length: int, doc_stride: int, max_query_length: int) -> None:
    """InputError unless the windowing flags can work; every entry point calls this before reading data.

    A stride below 1 would never move the window (the original loops forever, growing memory).
    A stride longer than the window is allowed and behaves as in the original: the next window
    starts right after the current one, so no token is skipped.
    """
    if isinstance(doc_stride, bool) or not isinstance(doc_stride, int) or doc_stride < 1:
        raise InputError(f"--doc_stride must be a positive number of tokens, got {doc_stride!r}")
    if isinstance(max_query_length, bool) or not isinstance(max_query_length, int) or max_query_length < 1:
        raise InputError(f"--max_query_length must be a positive number of tokens, got {max_query_length!r}")
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < MIN_SEQ_LENGTH:
        raise InputError(f"--max_seq_length must be at least {MIN_SEQ_LENGTH} ([CLS] question [SEP] context [SEP]), "
                         f"got {max_seq_length!r}")


def make_doc_spans(num_tokens: int, max_tokens_for_doc: int, doc_stride: int) -> list[DocSpan]:
    """Windows of at most `max_tokens_for_doc` pieces whose starts are `doc_stride` apart (the original's rule)."""
    if doc_stride < 1 or max_tokens_for_doc < 1:
        # Either would keep `start` from advancing: refuse here too, so no caller can loop forever.
        raise InputError(f"windows need doc_stride >= 1 and room for the document, got doc_stride {doc_stride} "
                         f"and {max_tokens_for_doc} document tokens per window")
    spans: list[DocSpan] = []
    start = 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens_for_doc)
        spans.append(DocSpan(start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return spans


def iter_features(
    examples: Iterable[SquadExample],
    tokenizer: WordPieceTokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    is_training: bool = False,
    first_window_only: bool = False,
) -> Iterator[SquadFeature]:
    """Windowed features `[CLS] query [SEP] window [SEP]`, zero-padded to `max_seq_length`, one at a time.

    `first_window_only` keeps just the first window (interactive inference: the document is
    truncated, so every kept token has its maximum context there).
    """
    unique_id = FIRST_UNIQUE_ID
    doc_cache: tuple[list[str], _TokenizedDoc] | None = None
    for example_index, example in enumerate(examples):
        query_tokens = tokenizer.tokenize(example.question_text)[:max_query_length]
        # Questions over one paragraph share its word list; tokenize it once.
        if doc_cache is None or doc_cache[0] is not example.doc_tokens:
            doc_cache = (example.doc_tokens, _tokenize_doc(example.doc_tokens, tokenizer))
        doc = doc_cache[1]
        tok_start, tok_end = _answer_token_span(example, doc, tokenizer) if is_training else (-1, -1)
        max_tokens_for_doc = max_seq_length - len(query_tokens) - 3
        if max_tokens_for_doc < 1:
            raise InputError(
                f"max_seq_length {max_seq_length} leaves no room for the document after the "
                f"{len(query_tokens)}-token question {example.qas_id} (lower --max_query_length)"
            )
        doc_spans = make_doc_spans(len(doc.all_doc_tokens), max_tokens_for_doc, doc_stride)
        if first_window_only:
            doc_spans = doc_spans[:1]
        for span_index, span in enumerate(doc_spans):
            feature = _build_feature(
                unique_id, example_index, span_index, doc_spans, query_tokens, doc, tokenizer, max_seq_length
            )
            if is_training:
                feature.is_impossible = example.is_impossible
                feature.start_position, feature.end_position = _window_labels(
                    example.is_impossible, tok_start, tok_end, span, len(query_tokens)
                )
            yield feature
            unique_id += 1


def convert_examples_to_features(
    examples: Sequence[SquadExample],
    tokenizer: WordPieceTokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    is_training: bool = False,
    first_window_only: bool = False,
) -> list[SquadFeature]:
    """All features of `examples` as a list (see `iter_features`)."""
    return list(iter_features(
        examples, tokenizer, max_seq_length, doc_stride, max_query_length, is_training, first_window_only
    ))


def _answer_token_span(example: SquadExample, doc: _TokenizedDoc, tokenizer: WordPieceTokenizer) -> tuple[int, int]:
    if example.is_impossible or example.start_position is None or example.end_position is None:
        return -1, -1
    tok_start = doc.orig_to_tok_index[example.start_position]
    if example.end_position < len(example.doc_tokens) - 1:
        tok_end = doc.orig_to_tok_index[example.end_position + 1] - 1
    else:
        tok_end = len(doc.all_doc_tokens) - 1
    return _improve_answer_span(doc.all_doc_tokens, tok_start, tok_end, tokenizer, example.orig_answer_text or "")


def _window_labels(is_impossible: bool, tok_start: int, tok_end: int, span: DocSpan, query_len: int) -> tuple[int, int]:
    """Answer positions inside this window's sequence, or (0, 0) = [CLS] when it is not fully inside."""
    if is_impossible or tok_start < span.start or tok_end > span.start + span.length - 1:
        return 0, 0
    offset = query_len + 2 - span.start
    return tok_start + offset, tok_end + offset


def _build_feature(
    unique_id: int, example_index: int, span_index: int, doc_spans: list[DocSpan], query_tokens: list[str],
    doc: _TokenizedDoc, tokenizer: WordPieceTokenizer, max_seq_length: int,
) -> SquadFeature:
    span = doc_spans[span_index]
    tokens = [CLS, *query_tokens, SEP]
    segment_ids = [0] * len(tokens)
    token_to_orig_map: dict[int, int] = {}
    token_is_max_context: dict[int, bool] = {}
    for split_index in range(span.start, span.start + span.length):
        token_to_orig_map[len(tokens)] = doc.tok_to_orig_index[split_index]
        token_is_max_context[len(tokens)] = _check_is_max_context(doc_spans, span_index, split_index)
        tokens.append(doc.all_doc_tokens[split_index])
    tokens.append(SEP)
    segment_ids += [1] * (len(tokens) - len(segment_ids))
    input_ids = list(tokenizer.convert_tokens_to_ids(tokens))
    input_mask = [1] * len(input_ids)
    padding = [0] * (max_seq_length - len(input_ids))
    return SquadFeature(
        unique_id=unique_id,
        example_index=example_index,
        doc_span_index=span_index,
        tokens=tokens,
        token_to_orig_map=token_to_orig_map,
        token_is_max_context=token_is_max_context,
        input_ids=input_ids + padding,
        input_mask=input_mask + padding,
        segment_ids=segment_ids + padding,
    )


# --------------------------------------------------------------------------------------------
# Feature arrays and the cache
# --------------------------------------------------------------------------------------------


def features_to_arrays(features: Iterable[SquadFeature], max_seq_length: int | None = None) -> dict[str, np.ndarray]:
    """Plain arrays for a TensorDataset or the cache; -1 marks "no label" / "not a document token".

    Consumes `features` one at a time, so a generator (`iter_features`) never holds every
    feature object in memory at once (full SQuAD train has ~88k of them).
    """
    rows: dict[str, list] = {name: [] for name in _ROW_FIELDS}
    token_rows: list[list[str]] = []
    for feature in features:
        _append_feature_row(rows, feature)
        token_rows.append(feature.tokens)
    seq = len(rows["input_ids"][0]) if rows["input_ids"] else int(max_seq_length or 0)
    arrays = {}
    for name, dtype in _ROW_FIELDS.items():
        values = rows[name]
        if name in _MATRIX_FIELDS:
            arrays[name] = np.stack(values).astype(dtype, copy=False) if values else np.zeros((0, seq), dtype=dtype)
        else:
            arrays[name] = np.array(values, dtype=dtype)
    arrays["tokens_blob"], arrays["tokens_offsets"] = cache.pack_strings(token_rows)
    return arrays


_ROW_FIELDS: dict[str, Any] = {
    "unique_ids": np.int64, "example_index": np.int64, "doc_span_index": np.int32,
    "input_ids": np.int32, "input_mask": np.int8, "segment_ids": np.int8,
    "start_positions": np.int32, "end_positions": np.int32, "is_impossible": bool,
    "token_to_orig": np.int32, "token_is_max_context": bool,
}
_MATRIX_FIELDS = ("input_ids", "input_mask", "segment_ids", "token_to_orig", "token_is_max_context")


def _append_feature_row(rows: dict[str, list], feature: SquadFeature) -> None:
    seq = len(feature.input_ids)
    token_to_orig = np.full(seq, -1, dtype=np.int32)
    max_context = np.zeros(seq, dtype=bool)
    for pos, orig in feature.token_to_orig_map.items():
        token_to_orig[pos] = orig
        max_context[pos] = feature.token_is_max_context[pos]
    rows["unique_ids"].append(feature.unique_id)
    rows["example_index"].append(feature.example_index)
    rows["doc_span_index"].append(feature.doc_span_index)
    rows["input_ids"].append(np.asarray(feature.input_ids, dtype=np.int32))
    rows["input_mask"].append(np.asarray(feature.input_mask, dtype=np.int8))
    rows["segment_ids"].append(np.asarray(feature.segment_ids, dtype=np.int8))
    rows["start_positions"].append(_or_minus_one(feature.start_position))
    rows["end_positions"].append(_or_minus_one(feature.end_position))
    rows["is_impossible"].append(feature.is_impossible)
    rows["token_to_orig"].append(token_to_orig)
    rows["token_is_max_context"].append(max_context)


def _or_minus_one(value: int | None) -> int:
    return -1 if value is None else value


def features_from_arrays(arrays: dict[str, np.ndarray]) -> list[SquadFeature]:
    tokens = cache.unpack_strings(arrays["tokens_blob"], arrays["tokens_offsets"])
    features = []
    for row in range(len(arrays["unique_ids"])):
        doc_positions = np.nonzero(arrays["token_to_orig"][row] >= 0)[0].tolist()
        start, end = int(arrays["start_positions"][row]), int(arrays["end_positions"][row])
        features.append(SquadFeature(
            unique_id=int(arrays["unique_ids"][row]),
            example_index=int(arrays["example_index"][row]),
            doc_span_index=int(arrays["doc_span_index"][row]),
            tokens=tokens[row],
            token_to_orig_map={p: int(arrays["token_to_orig"][row, p]) for p in doc_positions},
            token_is_max_context={p: bool(arrays["token_is_max_context"][row, p]) for p in doc_positions},
            input_ids=arrays["input_ids"][row].tolist(),
            input_mask=arrays["input_mask"][row].tolist(),
            segment_ids=arrays["segment_ids"][row].tolist(),
            start_position=None if start < 0 else start,
            end_position=None if end < 0 else end,
            is_impossible=bool(arrays["is_impossible"][row]),
        ))
    return features


def feature_cache_settings(
    input_file: str | os.PathLike, vocab_file: str | os.PathLike, do_lower_case: bool, *, is_training: bool,
    version_2_with_negative: bool, max_seq_length: int, doc_stride: int, max_query_length: int,
    first_answer_only: bool = False,
) -> dict[str, Any]:
    """Everything that changes the features, content hashes included (a renamed file still matches)."""
    return {
        "kind": "squad-features-v1",
        "input_sha256": cache.file_sha256(input_file),
        "vocab_sha256": cache.file_sha256(vocab_file),
        "do_lower_case": bool(do_lower_case),
        "is_training": bool(is_training),
        "version_2_with_negative": bool(version_2_with_negative),
        "first_answer_only": bool(first_answer_only),
        "max_seq_length": int(max_seq_length),
        "doc_stride": int(doc_stride),
        "max_query_length": int(max_query_length),
    }


def load_examples_and_features(
    input_file: str | os.PathLike,
    tokenizer: Any,
    vocab_file: str | os.PathLike,
    do_lower_case: bool,
    *,
    is_training: bool,
    version_2_with_negative: bool = False,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    first_answer_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    write_cache: bool = True,
) -> tuple[list[SquadExample], list[SquadFeature], Path | None]:
    """Examples and feature objects (what prediction needs), built or loaded from the cache.

    With `cache_dir` None nothing is cached; `write_cache=False` reads an existing cache but
    writes none (the original's `--skip_cache`). Returns the cache path when one is used.
    """
    examples = read_squad_examples(input_file, is_training, version_2_with_negative, first_answer_only)
    windows = dict(max_seq_length=max_seq_length, doc_stride=doc_stride, max_query_length=max_query_length)
    if cache_dir is None:
        return examples, convert_examples_to_features(examples, tokenizer, is_training=is_training, **windows), None
    key = feature_cache_settings(
        input_file, vocab_file, do_lower_case, is_training=is_training,
        version_2_with_negative=version_2_with_negative, first_answer_only=first_answer_only, **windows,
    )
    path = cache.cache_path(cache_dir, Path(input_file).name, key)
    arrays = cache.load_arrays(path, key)
    if arrays is not None:
        return examples, features_from_arrays(arrays), path
    features = convert_examples_to_features(examples, tokenizer, is_training=is_training, **windows)
    if write_cache:
        cache.save_arrays(path, _with_example_count(features_to_arrays(features, max_seq_length), len(examples)), key)
    return examples, features, path if write_cache else None


def load_training_arrays(
    input_file: str | os.PathLike,
    tokenizer: Any,
    vocab_file: str | os.PathLike,
    do_lower_case: bool,
    *,
    version_2_with_negative: bool = False,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    first_answer_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    write_cache: bool = True,
) -> tuple[dict[str, np.ndarray], int, Path | None]:
    """Training arrays (`input_ids`, `input_mask`, `segment_ids`, `start_positions`, `end_positions`, ...),
    the number of training examples, and the cache path when one is used.

    Streams features into arrays, so memory stays at the size of the arrays; the cache is the
    same file `load_examples_and_features(..., is_training=True)` uses.
    """
    windows = dict(max_seq_length=max_seq_length, doc_stride=doc_stride, max_query_length=max_query_length)
    path = key = None
    if cache_dir is not None:
        key = feature_cache_settings(
            input_file, vocab_file, do_lower_case, is_training=True,
            version_2_with_negative=version_2_with_negative, first_answer_only=first_answer_only, **windows,
        )
        path = cache.cache_path(cache_dir, Path(input_file).name, key)
        arrays = cache.load_arrays(path, key)
        if arrays is not None and "num_examples" in arrays:
            return arrays, int(arrays["num_examples"]), path
    examples = read_squad_examples(input_file, True, version_2_with_negative, first_answer_only)
    stream = iter_features(examples, tokenizer, is_training=True, **windows)
    arrays = _with_example_count(features_to_arrays(stream, max_seq_length), len(examples))
    if path is not None and key is not None and write_cache:
        cache.save_arrays(path, arrays, key)
        return arrays, len(examples), path
    return arrays, len(examples), None


def _with_example_count(arrays: dict[str, np.ndarray], num_examples: int) -> dict[str, np.ndarray]:
    arrays["num_examples"] = np.array(num_examples, dtype=np.int64)
    return arrays


# --------------------------------------------------------------------------------------------
# Logits → answers
# --------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    feature_index: int
    start_index: int
    end_index: int
    start_logit: float
    end_logit: float


@dataclass
class _NbestEntry:
    text: str
    start_logit: float
    end_logit: float


def _best_indexes(logits: Sequence[float], n_best_size: int) -> list[int]:
    """Indices of the n largest logits, largest first; ties keep the lower index first."""
    values = np.asarray(logits, dtype=np.float64)
    return np.argsort(-values, kind="stable")[:n_best_size].tolist()


def _compute_softmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def _strip_spaces(text: str) -> tuple[str, dict[int, int]]:
    """Text without spaces and, for each kept character, its index in `text`."""
    kept: list[str] = []
    to_spaced: dict[int, int] = {}
    for index, char in enumerate(text):
        if char == " ":
            continue
        to_spaced[len(kept)] = index
        kept.append(char)
    return "".join(kept), to_spaced


def get_final_text(pred_text: str, orig_text: str, do_lower_case: bool, verbose_logging: bool = False) -> str:
    """Project the de-tokenized prediction back onto the original words, character by character.

    The prediction is normalised text ("steve smith" for "Steve Smith's"); find it in the basic
    tokenization of the original span and map its ends back through the space-free strings,
    which have equal lengths when the tokenizer only lower-cased and split. Falls back to the
    whole original span whenever that heuristic fails.
    """
    from tokenization import BasicTokenizer  # local import: tokenization is only needed here

    tok_text = " ".join(BasicTokenizer(do_lower_case=do_lower_case).tokenize(orig_text))
    start_position = tok_text.find(pred_text)
    if start_position == -1:
        if verbose_logging:
            logger.info("Unable to find text: %r in %r", pred_text, orig_text)
        return orig_text
    end_position = start_position + len(pred_text) - 1

    orig_ns_text, orig_ns_to_s_map = _strip_spaces(orig_text)
    tok_ns_text, tok_ns_to_s_map = _strip_spaces(tok_text)
    if len(orig_ns_text) != len(tok_ns_text):
        if verbose_logging:
            logger.info("Length not equal after stripping spaces: %r vs %r", orig_ns_text, tok_ns_text)
        return orig_text
    tok_s_to_ns_map = {spaced: ns for ns, spaced in tok_ns_to_s_map.items()}

    orig_start = _map_to_original(start_position, tok_s_to_ns_map, orig_ns_to_s_map)
    if orig_start is None:
        if verbose_logging:
            logger.info("Couldn't map start position")
        return orig_text
    orig_end = _map_to_original(end_position, tok_s_to_ns_map, orig_ns_to_s_map)
    if orig_end is None:
        if verbose_logging:
            logger.info("Couldn't map end position")
        return orig_text
    return orig_text[orig_start:orig_end + 1]


def _map_to_original(position: int, tok_s_to_ns: dict[int, int], orig_ns_to_s: dict[int, int]) -> int | None:
    ns_position = tok_s_to_ns.get(position)
    return None if ns_position is None else orig_ns_to_s.get(ns_position)


def _valid_candidates(feature_index: int, feature: SquadFeature, result: RawResult, n_best_size: int,
                      max_answer_length: int) -> list[_Candidate]:
    candidates = []
    num_tokens = len(feature.tokens)
    for start in _best_indexes(result.start_logits, n_best_size):
        for end in _best_indexes(result.end_logits, n_best_size):
            if start >= num_tokens or end >= num_tokens:
                continue
            if start not in feature.token_to_orig_map or end not in feature.token_to_orig_map:
                continue
            if not feature.token_is_max_context.get(start, False):
                continue
            if end < start or end - start + 1 > max_answer_length:
                continue
            candidates.append(_Candidate(feature_index, start, end,
                                         float(result.start_logits[start]), float(result.end_logits[end])))
    return candidates


def _candidate_text(example: SquadExample, feature: SquadFeature, cand: _Candidate, do_lower_case: bool,
                    verbose_logging: bool) -> str:
    pieces = feature.tokens[cand.start_index:cand.end_index + 1]
    orig_start = feature.token_to_orig_map[cand.start_index]
    orig_end = feature.token_to_orig_map[cand.end_index]
    orig_text = " ".join(example.doc_tokens[orig_start:orig_end + 1])
    tok_text = " ".join(pieces).replace(" ##", "").replace("##", "")
    tok_text = " ".join(tok_text.strip().split())
    return get_final_text(tok_text, orig_text, do_lower_case, verbose_logging)


def _predict_example(
    example: SquadExample, features: list[SquadFeature], results: dict[int, RawResult], *, n_best_size: int,
    max_answer_length: int, do_lower_case: bool, version_2_with_negative: bool, verbose_logging: bool,
) -> tuple[list[_NbestEntry], float]:
    """The example's n-best list (sorted, unique texts) and its null score (+inf in v1.1)."""
    candidates: list[_Candidate] = []
    null_score, null_start, null_end = math.inf, 0.0, 0.0
    for feature_index, feature in enumerate(features):
        result = results[feature.unique_id]
        candidates += _valid_candidates(feature_index, feature, result, n_best_size, max_answer_length)
        feature_null = float(result.start_logits[0]) + float(result.end_logits[0])
        if feature_null < null_score:
            null_score, null_start, null_end = feature_null, float(result.start_logits[0]), float(result.end_logits[0])
    if version_2_with_negative:
        candidates.append(_Candidate(-1, 0, 0, null_start, null_end))
    candidates.sort(key=lambda c: c.start_logit + c.end_logit, reverse=True)

    nbest: list[_NbestEntry] = []
    seen: set[str] = set()
    for cand in candidates:
        if len(nbest) >= n_best_size:
            break
        text = ""
        if cand.start_index > 0:
            text = _candidate_text(example, features[cand.feature_index], cand, do_lower_case, verbose_logging)
        if text in seen:
            continue
        seen.add(text)
        nbest.append(_NbestEntry(text, cand.start_logit, cand.end_logit))

    if version_2_with_negative:
        if "" not in seen:
            nbest.append(_NbestEntry("", null_start, null_end))
        # Only the null answer survived: add a placeholder so a non-null best entry exists.
        if len(nbest) == 1:
            nbest.insert(0, _NbestEntry("empty", 0.0, 0.0))
    if not nbest:
        nbest.append(_NbestEntry("empty", 0.0, 0.0))
    return nbest, null_score


def get_answers(
    examples: Sequence[SquadExample],
    features: Sequence[SquadFeature],
    results: Iterable[RawResult],
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    do_lower_case: bool = True,
    version_2_with_negative: bool = False,
    null_score_diff_threshold: float = 0.0,
    verbose_logging: bool = False,
) -> SquadPredictions:
    """Answers, n-best lists and (v2) null odds for every example that has features with results."""
    by_unique_id = {r.unique_id: r for r in results}
    features_by_example: dict[int, list[SquadFeature]] = {}
    for feature in features:
        features_by_example.setdefault(feature.example_index, []).append(feature)

    out = SquadPredictions(answers={}, nbest={})
    for example_index, example in enumerate(examples):
        if example_index not in features_by_example:  # a context without a word piece (whitespace only) has
            _add_empty_answer(out, example.qas_id, version_2_with_negative)  # no window: its answer is empty
            continue
        example_features = [f for f in features_by_example.get(example_index, []) if f.unique_id in by_unique_id]
        if not example_features:
            continue
        nbest, null_score = _predict_example(
            example, example_features, by_unique_id, n_best_size=n_best_size, max_answer_length=max_answer_length,
            do_lower_case=do_lower_case, version_2_with_negative=version_2_with_negative,
            verbose_logging=verbose_logging,
        )
        probabilities = _compute_softmax([e.start_logit + e.end_logit for e in nbest])
        out.nbest[example.qas_id] = [
            {"text": e.text, "probability": p, "start_logit": e.start_logit, "end_logit": e.end_logit}
            for e, p in zip(nbest, probabilities, strict=True)
        ]
        best_non_null = next((e for e in nbest if e.text), nbest[0])
        if not version_2_with_negative:
            out.answers[example.qas_id] = nbest[0].text
            continue
        score_diff = null_score - best_non_null.start_logit - best_non_null.end_logit
        out.null_odds[example.qas_id] = score_diff
        out.answers[example.qas_id] = "" if score_diff > null_score_diff_threshold else best_non_null.text
    return out


def _add_empty_answer(out: SquadPredictions, qas_id: str, version_2_with_negative: bool) -> None:
    out.answers[qas_id] = ""
    out.nbest[qas_id] = [{"text": "", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]
    if version_2_with_negative:
        out.null_odds[qas_id] = EMPTY_CONTEXT_NULL_ODDS


# The null odds of a question over an empty context: it has no answer whatever the threshold (a finite number
# keeps null_odds.json plain JSON).
EMPTY_CONTEXT_NULL_ODDS = 1e9


def write_predictions(
    predictions: SquadPredictions,
    output_prediction_file: str | os.PathLike,
    output_nbest_file: str | os.PathLike | None = None,
    output_null_log_odds_file: str | os.PathLike | None = None,
) -> None:
    """predictions.json, nbest_predictions.json and (v2) null_odds.json, each written atomically."""
    atomic_write_json(output_prediction_file, predictions.answers)
    if output_nbest_file is not None:
        atomic_write_json(output_nbest_file, predictions.nbest)
    if output_null_log_odds_file is not None:
        atomic_write_json(output_null_log_odds_file, predictions.null_odds)
