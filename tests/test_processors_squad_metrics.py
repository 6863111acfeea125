"""The official SQuAD metrics on real leaderboard predictions, run as the command users run."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from conftest import ROOT, script_env, shared_path

from processors import squad_metrics
from processors.squad_metrics import compute_f1_v2, evaluate_v2, f1_score, normalize_answer

V1_DEV = ("squad", "v1.1", "dev-v1.1.first4articles.json")
V1_PRED = ("squad", "v1.1", "predictions.bert-large-ensemble.squad-explorer.first4articles.json")
V2_DEV = ("squad", "v2.0", "dev-v2.0.first5articles.json")
V2_PRED = ("squad", "v2.0", "predictions.bert-large-single.squad-explorer.first5articles.json")


def run_metrics(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "processors.squad_metrics", *map(str, args)],
        cwd=ROOT, env=script_env(), capture_output=True, text=True, timeout=120,
    )


def test_v11_command_matches_leaderboard_scores():
    proc = run_metrics(shared_path(*V1_DEV), shared_path(*V1_PRED))
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)
    assert set(scores) == {"exact_match", "f1"}
    assert round(scores["exact_match"], 3) == 87.500
    assert round(scores["f1"], 3) == 92.209


def test_v20_command_matches_leaderboard_scores(tmp_path):
    out_file = tmp_path / "eval.json"
    proc = run_metrics(shared_path(*V2_DEV), shared_path(*V2_PRED), "--version", "2.0", "--out-file", out_file)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)
    assert json.loads(out_file.read_text()) == scores
    assert list(scores) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total",
                            "NoAns_exact", "NoAns_f1", "NoAns_total"]
    rounded = {k: round(v, 3) for k, v in scores.items()}
    assert rounded["exact"] == 75.551 and rounded["f1"] == 78.833
    assert rounded["HasAns_exact"] == 70.355 and rounded["HasAns_f1"] == 76.904
    assert rounded["NoAns_exact"] == 80.769 and rounded["NoAns_f1"] == 80.769
    assert (scores["total"], scores["HasAns_total"], scores["NoAns_total"]) == (1407, 705, 702)


def _brute_force_best(dataset, preds, raw, na_probs, has_answer):
    """Best total over every real threshold t: answer when na_prob <= t, else predict no-answer."""
    best, best_t = sum(1.0 for q in has_answer if not has_answer[q]), 0.0
    for t in sorted(na_probs.values()):
        total = sum(raw[q] if na_probs[q] <= t else float(not has_answer[q]) for q in has_answer)
        if total > best:
            best, best_t = total, t
    return 100.0 * best / len(has_answer), best_t


def test_v20_best_thresholds_match_an_exhaustive_sweep(tmp_path):
    dataset = json.loads(shared_path(*V2_DEV).read_text())["data"]
    preds = json.loads(shared_path(*V2_PRED).read_text())
    rng = random.Random(7)
    # No-answer scores that mostly agree with the predictions, with noise; distinct values (no ties).
    na_probs = {q: (0.7 if text == "" else 0.3) + rng.uniform(-0.5, 0.5) for q, text in preds.items()}
    na_file = tmp_path / "null_odds.json"
    na_file.write_text(json.dumps(na_probs))
    proc = run_metrics(shared_path(*V2_DEV), shared_path(*V2_PRED), "--version", "2.0", "--na-prob-file", na_file)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(proc.stdout)

    exact_raw, f1_raw, has_answer = squad_metrics._raw_scores_v2(dataset, preds)
    best_exact, exact_t = _brute_force_best(dataset, preds, exact_raw, na_probs, has_answer)
    best_f1, f1_t = _brute_force_best(dataset, preds, f1_raw, na_probs, has_answer)
    assert scores["best_exact"] == pytest.approx(best_exact) and scores["best_exact_thresh"] == pytest.approx(exact_t)
    assert scores["best_f1"] == pytest.approx(best_f1) and scores["best_f1_thresh"] == pytest.approx(f1_t)
    assert scores["best_exact"] >= round(75.55, 2)
    # With the threshold at 0.5 the questions scored above it count as answered "".
    thresholded = evaluate_v2(dataset, preds, na_probs, na_prob_thresh=0.5)
    expected = sum(float(not has_answer[q]) if na_probs[q] > 0.5 else exact_raw[q] for q in has_answer)
    assert thresholded["exact"] == pytest.approx(100.0 * expected / len(has_answer))


@pytest.mark.parametrize(
    ("text", "normalized"),
    [("The Denver Broncos!", "denver broncos"), ("  an  apple,\tA pear ", "apple pear"), ("theory", "theory")],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_f1_versions_differ_only_on_empty_answers():
    assert f1_score("Denver Broncos", "the Denver Broncos team") == pytest.approx(2 * 1.0 * (2 / 3) / (1 + 2 / 3))
    assert f1_score("", "") == 0.0
    assert compute_f1_v2("", "") == 1.0
    assert compute_f1_v2("", "Denver") == 0.0


def test_missing_prediction_scores_zero(tmp_path):
    preds = json.loads(shared_path(*V1_PRED).read_text())
    dropped = sorted(preds)[:10]
    for qid in dropped:
        del preds[qid]
    pred_file = tmp_path / "partial.json"
    pred_file.write_text(json.dumps(preds))
    proc = run_metrics(shared_path(*V1_DEV), pred_file)
    assert proc.returncode == 0
    assert proc.stderr.count("will receive score 0") == 10
    assert json.loads(proc.stdout)["exact_match"] < 87.5


def test_bad_prediction_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "predictions.json"
    bad.write_text('{"56be4db0acb8001400a502ec": "Denver",')
    proc = run_metrics(shared_path(*V1_DEV), bad)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "not valid JSON" in lines[0]


def test_dataset_without_qas_is_a_one_line_error(tmp_path):
    broken = tmp_path / "dev.json"
    broken.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "c"}]}]}))
    proc = run_metrics(broken, shared_path(*V1_PRED))
    assert proc.returncode == 2
    assert "paragraphs[0]" in proc.stderr and "'qas'" in proc.stderr and str(broken) in proc.stderr
