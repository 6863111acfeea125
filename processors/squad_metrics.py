"""The official SQuAD v1.1 and v2.0 evaluation, as a library and as a command.

    python -m processors.squad_metrics dev-v1.1.json predictions.json
    python -m processors.squad_metrics dev-v2.0.json predictions.json --version 2.0 [--na-prob-file null_odds.json]

v1.1 prints `{"exact_match": …, "f1": …}`; v2.0 prints the official keys (`exact`, `f1`, `total`,
`HasAns_*`, `NoAns_*`, and `best_*` thresholds with a na-prob file). Scores match the official
scripts; a question with no prediction scores 0 (v1.1 behaviour, applied to v2.0 too, where the
official script would stop with a KeyError).
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import string
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from atomic_io import atomic_write_json
from input_checks import InputError, read_json_file, run_main

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, ground_truth: str) -> float:
    """v1.1 token F1 (an empty side scores 0)."""
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def compute_f1_v2(gold: str, prediction: str) -> float:
    """v2.0 token F1: when either side is empty, 1 if both are, else 0."""
    gold_tokens = normalize_answer(gold).split() if gold else []
    pred_tokens = normalize_answer(prediction).split() if prediction else []
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    return _token_f1(pred_tokens, gold_tokens)


def _best_over(metric: Callable[[str, str], float], prediction: str, ground_truths: Iterable[str]) -> float:
    return max(metric(prediction, truth) for truth in ground_truths)


def iter_questions(dataset: list[dict]) -> Iterable[dict]:
    for article in dataset:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def evaluate_v1(dataset: list[dict], predictions: Mapping[str, str]) -> dict[str, float]:
    """Official v1.1: mean over all questions of the best EM / F1 against any gold answer, in %."""
    exact = f1 = 0.0
    total = 0
    for qa in iter_questions(dataset):
        total += 1
        if qa["id"] not in predictions:
            print(f"Unanswered question {qa['id']} will receive score 0.", file=sys.stderr)
            continue
        truths = [answer["text"] for answer in qa["answers"]]
        prediction = predictions[qa["id"]]
        exact += _best_over(exact_match_score, prediction, truths)
        f1 += _best_over(f1_score, prediction, truths)
    total = max(total, 1)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def _raw_scores_v2(
    dataset: list[dict], predictions: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float], dict[str, bool]]:
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    for qa in iter_questions(dataset):
        qid = qa["id"]
        has_answer[qid] = bool(qa["answers"])
        golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
        if qid not in predictions:
            print(f"Missing prediction for {qid}", file=sys.stderr)
            exact[qid] = f1[qid] = 0.0
            continue
        prediction = predictions[qid]
        exact[qid] = max(float(normalize_answer(g) == normalize_answer(prediction)) for g in golds)
        f1[qid] = max(compute_f1_v2(g, prediction) for g in golds)
    return exact, f1, has_answer


def _apply_no_answer_threshold(
    scores: dict[str, float], na_probs: Mapping[str, float], has_answer: dict[str, bool], threshold: float
) -> dict[str, float]:
    """Questions whose no-answer probability exceeds the threshold count as answered with ""."""
    return {
        qid: float(not has_answer[qid]) if na_probs.get(qid, 0.0) > threshold else score
        for qid, score in scores.items()
    }


def _mean_scores(exact: dict[str, float], f1: dict[str, float], qids: list[str]) -> dict[str, Any]:
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / total,
        "f1": 100.0 * sum(f1[q] for q in qids) / total,
        "total": total,
    }


def _best_threshold(
    predictions: Mapping[str, str], scores: dict[str, float], na_probs: Mapping[str, float],
    has_answer: dict[str, bool],
) -> tuple[float, float]:
    """Sweep the no-answer threshold over the sorted na-probs; best score (%) and its threshold."""
    current = best = float(sum(1 for v in has_answer.values() if not v))
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions.get(qid):
            current -= 1
        if current > best:
            best = current
            best_thresh = na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def evaluate_v2(
    dataset: list[dict], predictions: Mapping[str, str], na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, Any]:
    """Official v2.0 scores; with `na_probs`, also the best thresholds for EM and F1."""
    exact_raw, f1_raw, has_answer = _raw_scores_v2(dataset, predictions)
    probs = na_probs if na_probs is not None else {k: 0.0 for k in predictions}
    exact = _apply_no_answer_threshold(exact_raw, probs, has_answer, na_prob_thresh)
    f1 = _apply_no_answer_threshold(f1_raw, probs, has_answer, na_prob_thresh)
    out = _mean_scores(exact, f1, list(exact)) if exact else {"exact": 0.0, "f1": 0.0, "total": 0}
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, has in has_answer.items() if has is wanted]
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _mean_scores(exact, f1, qids).items()})
    if na_probs is not None and exact:
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(predictions, exact_raw, na_probs, has_answer)
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(predictions, f1_raw, na_probs, has_answer)
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _load_json(path: str, what: str) -> Any:
    return read_json_file(path, f"{what} file")


def _check_dataset(path: str, data: Any) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise InputError(f"{path}: not a SQuAD dataset (no 'data' list at the top level)")
    for a_idx, article in enumerate(data["data"]):
        if "paragraphs" not in article:
            raise InputError(f"{path}: data[{a_idx}] has no 'paragraphs' key")
        for p_idx, paragraph in enumerate(article["paragraphs"]):
            if "qas" not in paragraph:
                raise InputError(f"{path}: data[{a_idx}].paragraphs[{p_idx}] has no 'qas' key")
            for qa in paragraph["qas"]:
                missing = [k for k in ("id", "answers") if k not in qa]
                if missing:
                    raise InputError(f"{path}: question {qa.get('id', '?')} has no {missing[0]!r} key")
    return data["data"]


def _check_mapping(path: str, data: Any, what: str, value_type: type | tuple[type, ...]) -> dict:
    if not isinstance(data, dict) or not all(isinstance(v, value_type) for v in data.values()):
        raise InputError(f"{path}: {what} must be a JSON object of question id → {what} value")
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Official SQuAD v1.1 / v2.0 evaluation.")
    parser.add_argument("data_file", help="SQuAD dataset json")
    parser.add_argument("pred_file", help="predictions json: {question id: answer text}")
    parser.add_argument("--version", choices=("1.1", "2.0"), default="1.1")
    parser.add_argument("--out-file", "-o", help="also write the scores (json) here")
    parser.add_argument("--na-prob-file", "-n", help="v2.0: {question id: no-answer probability or score}")
    parser.add_argument("--na-prob-thresh", "-t", type=float, default=1.0,
                        help="v2.0: predict no-answer when the na-prob is above this (default 1.0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    raw_dataset = _load_json(args.data_file, "dataset")
    dataset = _check_dataset(args.data_file, raw_dataset)
    if args.version == "1.1" and str(raw_dataset.get("version")) != "1.1":
        print(f"Evaluation expects v-1.1, but got dataset with v-{raw_dataset.get('version')}", file=sys.stderr)
    predictions = _check_mapping(args.pred_file, _load_json(args.pred_file, "prediction"), "prediction", str)
    if args.version == "1.1":
        result: dict[str, Any] = evaluate_v1(dataset, predictions)
        print(json.dumps(result))
    else:
        na_probs = None
        if args.na_prob_file:
            raw = _load_json(args.na_prob_file, "na-prob")
            na_probs = _check_mapping(args.na_prob_file, raw, "na-prob", (int, float))
        result = evaluate_v2(dataset, predictions, na_probs, args.na_prob_thresh)
        print(json.dumps(result, indent=2))
    if args.out_file:
        atomic_write_json(Path(args.out_file), result, indent=2)
    return result


if __name__ == "__main__":
    run_main(main)
