"""SQuAD reading, windowed features, the feature cache and logits → answers post-processing.

The round trip puts fake logits on the gold start/end of a real feature and checks the real
post-processing gives back the gold answer text, for every answerable question of the shared
dev and train slices (and the v2.0 null answer for unanswerable ones).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from input_checks import InputError
from processors import squad
from processors.squad_metrics import normalize_answer

V1_DEV = ("squad", "v1.1", "dev-v1.1.first4articles.json")
V1_TRAIN = ("squad", "v1.1", "train-v1.1.first11articles.json")
V2_DEV = ("squad", "v2.0", "dev-v2.0.first5articles.json")
MAX_SEQ, STRIDE, MAX_QUERY, MAX_ANSWER = 384, 128, 64, 30
HIGH, LOW = 5.0, -5.0


@pytest.fixture(scope="module")
def tokenizer():
    from tokenization import FullTokenizer

    return FullTokenizer(str(shared_path("vocab", "bert-base-uncased-vocab.txt")), do_lower_case=True)


# --------------------------------------------------------------------------------------------
# Round trip on the real slices
# --------------------------------------------------------------------------------------------


def _gold_feature(example_features: list[squad.SquadFeature]) -> squad.SquadFeature | None:
    """The window the reference post-processing can answer from: gold inside, start at max context."""
    for feature in example_features:
        if feature.start_position and feature.token_is_max_context.get(feature.start_position, False):
            return feature
    return None


def _round_trip(path: Path, tokenizer, version_2: bool, null_score_diff_threshold: float = 0.0):
    examples = squad.read_squad_examples(path, is_training=True, version_2_with_negative=version_2,
                                         first_answer_only=True)
    features = squad.convert_examples_to_features(examples, tokenizer, MAX_SEQ, STRIDE, MAX_QUERY, is_training=True)
    by_example: dict[int, list[squad.SquadFeature]] = {}
    for feature in features:
        by_example.setdefault(feature.example_index, []).append(feature)

    results, gold_features = [], {}
    for index, example in enumerate(examples):
        gold = None if example.is_impossible else _gold_feature(by_example[index])
        if gold is not None and gold.end_position - gold.start_position + 1 <= MAX_ANSWER:
            gold_features[example.qas_id] = gold
        for feature in by_example[index]:
            start, end = np.full(MAX_SEQ, LOW), np.full(MAX_SEQ, LOW)
            # Null logits grow with the window index: the example's null score is its first window's.
            start[0] = (HIGH if example.is_impossible else LOW) + 0.5 * feature.doc_span_index
            end[0] = (HIGH if example.is_impossible else LOW) - 0.25 * feature.doc_span_index
            if not example.is_impossible and gold_features.get(example.qas_id) is feature:
                start[feature.start_position] = end[feature.end_position] = HIGH
            results.append(squad.RawResult(feature.unique_id, start, end))
    predictions = squad.get_answers(
        examples, features, results, n_best_size=20, max_answer_length=MAX_ANSWER, do_lower_case=True,
        version_2_with_negative=version_2, null_score_diff_threshold=null_score_diff_threshold,
    )
    return examples, predictions, gold_features


def _check_round_trip(path: Path, tokenizer, version_2: bool = False) -> dict[str, int]:
    examples, predictions, gold_features = _round_trip(path, tokenizer, version_2)
    counts = dict(answerable=0, checked=0, exact=0, normalized=0, unaligned=0, impossible=0)
    for example in examples:
        predicted = predictions.answers[example.qas_id]
        if example.is_impossible:
            counts["impossible"] += 1
            assert predicted == "", example.qas_id
            continue
        counts["answerable"] += 1
        feature = gold_features.get(example.qas_id)
        if feature is None:
            continue
        counts["checked"] += 1
        gold = example.orig_answer_text
        span_pieces = feature.tokens[feature.start_position:feature.end_position + 1]
        if span_pieces != tokenizer.tokenize(gold):
            # The annotated answer is part of a WordPiece ("gold" in "golden"): the best any
            # span prediction can do is the enclosing pieces, which must contain the answer.
            counts["unaligned"] += 1
            assert " ".join(gold.split()).lower() in predicted.lower(), (example.qas_id, gold, predicted)
            continue
        if predicted == gold:
            counts["exact"] += 1
        else:
            assert normalize_answer(predicted) == normalize_answer(gold), (example.qas_id, gold, predicted)
            counts["normalized"] += 1
    print(f"{path.name}: {counts}")
    return counts


def test_round_trip_v11_dev(tokenizer):
    counts = _check_round_trip(shared_path(*V1_DEV), tokenizer)
    assert counts["answerable"] == 1680
    assert counts["checked"] == 1680
    assert counts["exact"] + counts["normalized"] >= 1650  # at most a few unaligned annotations


def test_round_trip_v11_train(tokenizer):
    counts = _check_round_trip(shared_path(*V1_TRAIN), tokenizer)
    assert counts["answerable"] == 3807
    assert counts["checked"] >= 3800  # answers longer than max_answer_length WordPieces are left out
    assert counts["exact"] + counts["normalized"] >= 3750


def test_round_trip_v20_dev_with_null_answers(tokenizer):
    examples, predictions, _ = _round_trip(shared_path(*V2_DEV), tokenizer, version_2=True)
    counts = _check_round_trip(shared_path(*V2_DEV), tokenizer, version_2=True)
    assert counts["impossible"] == 702 and counts["answerable"] == 705
    assert counts["exact"] + counts["normalized"] >= 700
    for example in examples:
        odds = predictions.null_odds[example.qas_id]
        assert (odds > 0) if example.is_impossible else (odds < 0), example.qas_id
        # The "" entry carries this question's own null logits (the original used the last question's).
        nbest = predictions.nbest[example.qas_id]
        assert len(nbest) <= 21  # n_best, plus "" when the null answer ranked below them
        # Sorted, apart from the reference's "empty" placeholder put first when only "" survived.
        scores = [e["start_logit"] + e["end_logit"] for e in nbest if e["text"] != "empty"]
        assert scores == sorted(scores, reverse=True), example.qas_id
        null_entry = next(e for e in nbest if e["text"] == "")
        expected = HIGH if example.is_impossible else LOW
        assert (null_entry["start_logit"], null_entry["end_logit"]) == (expected, expected)


def test_null_threshold_turns_answers_into_no_answer(tokenizer):
    # Answerable: null score 2*LOW = -10, best span 2*HIGH = 10, diff -20; unanswerable: diff +20.
    examples, predictions, _ = _round_trip(shared_path(*V2_DEV), tokenizer, version_2=True,
                                           null_score_diff_threshold=-25.0)
    assert set(predictions.answers.values()) == {""}
    _, predictions, _ = _round_trip(shared_path(*V2_DEV), tokenizer, version_2=True, null_score_diff_threshold=-15.0)
    answered = sum(1 for e in examples if predictions.answers[e.qas_id])
    assert answered == sum(1 for e in examples if not e.is_impossible)


def _one_hot(position: int) -> np.ndarray:
    logits = np.full(MAX_SEQ, LOW)
    logits[position] = HIGH
    return logits


# --------------------------------------------------------------------------------------------
# Post-processing details
# --------------------------------------------------------------------------------------------


def test_nbest_is_sorted_unique_and_probabilities_sum_to_one(tokenizer, tmp_path):
    examples = squad.read_squad_examples(shared_path(*V1_DEV), is_training=False)[:30]
    features = squad.convert_examples_to_features(examples, tokenizer, MAX_SEQ, STRIDE, MAX_QUERY)
    rng = np.random.default_rng(0)
    results = [squad.RawResult(f.unique_id, _random_logits(rng, f), _random_logits(rng, f)) for f in features]
    predictions = squad.get_answers(examples, features, results, n_best_size=10)
    for example in examples:
        nbest = predictions.nbest[example.qas_id]
        assert 1 <= len(nbest) <= 10
        scores = [e["start_logit"] + e["end_logit"] for e in nbest]
        assert scores == sorted(scores, reverse=True)
        assert len({e["text"] for e in nbest}) == len(nbest)
        assert sum(e["probability"] for e in nbest) == pytest.approx(1.0)
        assert predictions.answers[example.qas_id] == nbest[0]["text"]
        assert nbest[0]["text"] in " ".join(example.doc_tokens)

    assert sum(len(predictions.nbest[e.qas_id]) == 10 for e in examples) >= 25

    squad.write_predictions(predictions, tmp_path / "predictions.json", tmp_path / "nbest_predictions.json")
    assert json.loads((tmp_path / "predictions.json").read_text()) == predictions.answers
    assert json.loads((tmp_path / "nbest_predictions.json").read_text()) == predictions.nbest
    assert not list(tmp_path.glob(".tmp-*"))


def _random_logits(rng: np.random.Generator, feature: squad.SquadFeature) -> np.ndarray:
    """Noise over the real tokens, far below it on padding (as a trained model behaves)."""
    logits = np.full(MAX_SEQ, -30.0)
    logits[:len(feature.tokens)] = rng.normal(size=len(feature.tokens))
    return logits


def test_no_valid_span_gives_the_empty_placeholder(tokenizer):
    examples = [squad.example_from_text("Who?", "Nobody knows.")]
    features = squad.convert_examples_to_features(examples, tokenizer, 32, 16, 8)
    # Best logits on [CLS] and on the question only: no candidate lies in the document.
    results = [squad.RawResult(features[0].unique_id, _one_hot(0)[:32], _one_hot(1)[:32])]
    predictions = squad.get_answers(examples, features, results, n_best_size=1)
    assert predictions.answers["0"] == "empty"
    assert predictions.nbest["0"] == [{"text": "empty", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]


@pytest.mark.parametrize(
    ("pred", "orig", "lower", "expected"),
    [
        ("steve smith", "Steve Smith's", True, "Steve Smith"),
        ("Steve Smith", "Steve Smith's", False, "Steve Smith"),
        ("1895", "(1895-1943).", True, "1895"),
        ("denver broncos", "Denver Broncos,", True, "Denver Broncos"),
        ("not there", "Denver Broncos", True, "Denver Broncos"),  # alignment fails: whole span
    ],
)
def test_get_final_text(pred, orig, lower, expected):
    assert squad.get_final_text(pred, orig, do_lower_case=lower) == expected


# --------------------------------------------------------------------------------------------
# Windows, max context and training labels
# --------------------------------------------------------------------------------------------


def test_doc_spans_follow_the_stride_rule():
    spans = [(s.start, s.length) for s in squad.make_doc_spans(10, 4, 2)]
    assert spans == [(0, 4), (2, 4), (4, 4), (6, 4)]
    spans = [(s.start, s.length) for s in squad.make_doc_spans(10, 4, 8)]
    assert spans == [(0, 4), (4, 4), (8, 2)]
    assert [(s.start, s.length) for s in squad.make_doc_spans(3, 4, 2)] == [(0, 3)]


@pytest.mark.parametrize("stride", [0, -1, -128])
def test_windowing_refuses_a_stride_that_never_advances(tokenizer, stride):
    """A stride below 1 kept the original's window loop from ever ending (memory grew without bound)."""
    with pytest.raises(InputError, match=f"doc_stride {stride}"):
        squad.make_doc_spans(10, 4, stride)
    example = squad.example_from_text("Who?", "a long context " * 50)
    with pytest.raises(InputError, match=f"doc_stride {stride}"):
        squad.convert_examples_to_features([example], tokenizer, max_seq_length=32, doc_stride=stride)


@pytest.mark.parametrize(
    ("max_seq_length", "doc_stride", "max_query_length", "message"),
    [
        (384, 0, 64, "--doc_stride must be a positive number of tokens, got 0"),
        (384, -3, 64, "--doc_stride must be a positive number of tokens, got -3"),
        (384, 128, 0, "--max_query_length must be a positive number of tokens, got 0"),
        (4, 128, 64, "--max_seq_length must be at least 5 ([CLS] question [SEP] context [SEP]), got 4"),
        (0, 128, 64, "--max_seq_length must be at least 5 ([CLS] question [SEP] context [SEP]), got 0"),
    ],
)
def test_window_settings_are_checked_before_any_work(max_seq_length, doc_stride, max_query_length, message):
    with pytest.raises(InputError) as info:
        squad.check_window_settings(max_seq_length, doc_stride, max_query_length)
    assert str(info.value) == message


def test_window_settings_accept_a_stride_longer_than_the_window(tokenizer):
    """As in the original, the next window then starts right after the current one: no token is skipped."""
    squad.check_window_settings(384, 10_000, 64)
    example = squad.example_from_text("Who?", " ".join(f"word{i}" for i in range(120)))
    features = squad.convert_examples_to_features([example], tokenizer, max_seq_length=48, doc_stride=10_000)
    covered = [position for f in features for position in sorted(f.token_to_orig_map.values())]
    doc = squad._tokenize_doc(example.doc_tokens, tokenizer)
    assert len(features) > 2
    assert covered == doc.tok_to_orig_index  # every piece exactly once, in order


def test_max_context_prefers_the_window_with_more_context_on_both_sides():
    # "the man went to the store and bought a gallon of milk": windows A [0,5), B [3,8), C [6,11).
    spans = [squad.DocSpan(0, 5), squad.DocSpan(3, 5), squad.DocSpan(6, 5)]
    bought = 7  # B: 4 left / 0 right; C: 1 left / 3 right → C
    assert [squad._check_is_max_context(spans, i, bought) for i in range(3)] == [False, False, True]
    to = 3  # A: 3 left / 1 right → 1.05; B: 0 left → 0.05
    assert [squad._check_is_max_context(spans, i, to) for i in range(3)] == [True, False, False]
    # Equal scores: the first window wins; equal context: the longer window wins.
    tied = [squad.DocSpan(0, 5), squad.DocSpan(2, 5)]
    assert [squad._check_is_max_context(tied, i, 3) for i in range(2)] == [True, False]
    by_length = [squad.DocSpan(1, 4), squad.DocSpan(2, 5)]
    assert [squad._check_is_max_context(by_length, i, 3) for i in range(2)] == [False, True]


def test_candidates_obey_max_context_order_and_length(tokenizer):
    words = ["river", "stone", "house", "green", "music", "table", "light", "water", "paper", "glass"] * 15
    example = squad.example_from_text("Which word?", " ".join(words))
    features = squad.convert_examples_to_features([example], tokenizer, 64, 16, 8)
    assert len(features) > 3
    feature = features[1]
    doc_positions = sorted(feature.token_to_orig_map)
    not_max = next(p for p in doc_positions if not feature.token_is_max_context[p])
    best = next(p for p in doc_positions if feature.token_is_max_context[p] and p + 14 < len(feature.tokens))
    start, end = np.full(64, LOW), np.full(64, LOW)
    start[best], end[best + 2] = HIGH, HIGH  # the answer: three WordPieces
    start[not_max] = end[not_max] = HIGH + 3  # start without max context here
    end[best - 1] = HIGH + 2  # end before start
    start[best + 3], end[best + 3 + 10] = HIGH + 1, HIGH + 1  # 11 pieces > max_answer_length
    results = [squad.RawResult(f.unique_id, start if f is feature else np.full(64, LOW),
                               end if f is feature else np.full(64, LOW)) for f in features]
    answer = squad.get_answers([example], features, results, max_answer_length=10).answers["0"]
    assert answer == " ".join(feature.tokens[best:best + 3])


def test_windowed_training_labels_point_at_the_answer_or_cls(tokenizer, tmp_path):
    context = " ".join(f"word{i}" if i != 57 else "the answer is Zanzibar-born Freddie." for i in range(120))
    start_char = context.index("Freddie")
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "Who?", "answers": [{"text": "Freddie", "answer_start": start_char}]}]}]}]}
    examples = _examples_from_json(tmp_path, data, is_training=True)
    features = squad.convert_examples_to_features(examples, tokenizer, max_seq_length=64, doc_stride=16,
                                                  max_query_length=8, is_training=True)
    assert len(features) > 5
    inside = [f for f in features if f.start_position]
    assert inside, "no window holds the answer"
    for feature in features:
        assert len(feature.input_ids) == len(feature.input_mask) == len(feature.segment_ids) == 64
        assert feature.tokens[0] == "[CLS]" and feature.tokens[-1] == "[SEP]"
        assert sum(feature.input_mask) == len(feature.tokens)
        assert feature.input_ids[:len(feature.tokens)] == tokenizer.convert_tokens_to_ids(feature.tokens)
        query_end = feature.tokens.index("[SEP]")
        assert feature.segment_ids[:query_end + 1] == [0] * (query_end + 1)
        assert feature.segment_ids[query_end + 1:len(feature.tokens)] == [1] * (len(feature.tokens) - query_end - 1)
        if feature.start_position:
            answer = feature.tokens[feature.start_position:feature.end_position + 1]
            assert answer == tokenizer.tokenize("Freddie")
        else:
            assert (feature.start_position, feature.end_position) == (0, 0)
    # Each document token has exactly one max-context window.
    owners: dict[int, int] = {}
    for feature in features:
        for pos, is_max in feature.token_is_max_context.items():
            if is_max:
                orig = feature.token_to_orig_map[pos]
                owners[orig] = owners.get(orig, 0) + 1
    assert set(owners) == set(range(len(examples[0].doc_tokens)))


def test_impossible_v2_training_questions_label_cls(tokenizer, tmp_path):
    data = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where is Rome?", "answers": [], "is_impossible": True}]}]}]}
    examples = _examples_from_json(tmp_path, data, is_training=True, version_2=True)
    assert examples[0].is_impossible and examples[0].start_position == -1
    (feature,) = squad.convert_examples_to_features(examples, tokenizer, 32, 16, 8, is_training=True)
    assert (feature.start_position, feature.end_position, feature.is_impossible) == (0, 0, True)


def test_first_window_only_keeps_every_token_max_context(tokenizer):
    example = squad.example_from_text("What?", " ".join(["token"] * 200))
    (feature,) = squad.convert_examples_to_features([example], tokenizer, 64, 16, 8, first_window_only=True)
    assert all(feature.token_is_max_context.values())
    assert len(feature.tokens) == 64


def _examples_from_json(tmp_path: Path, data: dict, is_training: bool, version_2: bool = False):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    return squad.read_squad_examples(path, is_training, version_2)


# --------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------


def test_feature_cache_round_trips_and_keys_on_settings(tokenizer, tmp_path):
    dev = shared_path(*V1_DEV)
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    common = dict(is_training=False, max_seq_length=128, doc_stride=64, max_query_length=32, cache_dir=tmp_path)
    examples, built, path = squad.load_examples_and_features(dev, tokenizer, vocab, True, **common)
    assert path is not None and path.is_file() and path.suffix == ".npz"
    np.load(path, allow_pickle=False).close()  # plain arrays only

    # A second run must come from the cache: make conversion impossible to be sure.
    class NoTokenizer:
        def tokenize(self, text):
            raise AssertionError("features were rebuilt instead of loaded")

    _, cached, same_path = squad.load_examples_and_features(dev, NoTokenizer(), vocab, True, **common)
    assert same_path == path
    assert cached == built

    other = dict(common, doc_stride=32)
    _, rebuilt, other_path = squad.load_examples_and_features(dev, tokenizer, vocab, True, **other)
    assert other_path != path and len(rebuilt) > len(built)
    # A cache file renamed onto another setting's name is not trusted.
    other_path.write_bytes(path.read_bytes())
    _, again, _ = squad.load_examples_and_features(dev, tokenizer, vocab, True, **other)
    assert again == rebuilt
    assert not list(tmp_path.glob(".tmp-*"))


def test_training_arrays_stream_and_share_the_cache(tokenizer, tmp_path):
    data = shared_path(*V2_DEV)
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    windows = dict(version_2_with_negative=True, max_seq_length=128, doc_stride=64, max_query_length=32,
                   first_answer_only=True)
    arrays, num_examples, path = squad.load_training_arrays(data, tokenizer, vocab, True, cache_dir=tmp_path, **windows)
    examples, features, same_path = squad.load_examples_and_features(
        data, tokenizer, vocab, True, is_training=True, cache_dir=tmp_path, **windows)
    assert same_path == path and num_examples == len(examples) == 1407
    assert len(arrays["input_ids"]) == len(features) > num_examples
    reference = squad.features_to_arrays(
        squad.convert_examples_to_features(examples, tokenizer, 128, 64, 32, is_training=True))
    for name, value in reference.items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)
    impossible = arrays["is_impossible"]
    assert impossible.sum() > 0 and (arrays["start_positions"][impossible] == 0).all()
    again, count, _ = squad.load_training_arrays(data, None, vocab, True, cache_dir=tmp_path, **windows)
    assert count == 1407 and (again["input_ids"] == arrays["input_ids"]).all()


def test_training_features_survive_the_cache(tokenizer, tmp_path):
    examples = squad.read_squad_examples(shared_path(*V2_DEV), True, True, first_answer_only=True)[:40]
    features = squad.convert_examples_to_features(examples, tokenizer, 128, 64, 32, is_training=True)
    arrays = squad.features_to_arrays(features)
    assert arrays["input_ids"].shape == (len(features), 128)
    assert squad.features_from_arrays(arrays) == features


# --------------------------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------------------------

GOOD_QA = {"id": "q7", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 0}]}


def test_duplicate_question_ids_are_an_error_naming_the_id(tmp_path):
    """Predictions are keyed by id: the second question would silently overwrite the first one's answer."""
    path = tmp_path / "dup.json"
    second = dict(GOOD_QA, question="Which city?")
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Paris.", "qas": [GOOD_QA, second]}]}]}))
    for is_training in (True, False):
        with pytest.raises(InputError) as info:
            squad.read_squad_examples(path, is_training=is_training)
        assert str(info.value) == f"{path}: data[0].paragraphs[0].qas[1]: question id 'q7' appears twice"


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ('{"data": [', ["not valid JSON"]),
        (json.dumps({"version": "1.1"}), ["'data'"]),
        (json.dumps({"data": [{"title": "t"}]}), ["data[0]", "'paragraphs'"]),
        (json.dumps({"data": [{"paragraphs": [{"context": "Paris."}]}]}), ["data[0].paragraphs[0]", "'qas'"]),
        (json.dumps({"data": [{"paragraphs": [{"qas": [GOOD_QA]}]}]}), ["data[0].paragraphs[0]", "'context'"]),
        (json.dumps({"data": [{"paragraphs": [{"context": "Paris.", "qas": [
            {"id": "q7", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 40}]}]}]}]}),
         ["question q7", "answer_start 40", "outside"]),
        (json.dumps({"data": [{"paragraphs": [{"context": "Paris.", "qas": [
            {"id": "q7", "question": "Where?", "answers": [{"answer_start": 0}]}]}]}]}),
         ["question q7", "'text'"]),
        (json.dumps({"data": [{"paragraphs": [{"context": "Paris.", "qas": [
            {"id": "q7", "question": "Where?", "answers": [GOOD_QA["answers"][0]] * 2}]}]}]}),
         ["question q7", "exactly one answer"]),
    ],
)
def test_malformed_squad_json_names_file_and_problem(tmp_path, content, needles):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        squad.read_squad_examples(path, is_training=True)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for needle in needles:
        assert needle in message
