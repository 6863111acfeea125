"""GLUE readers (real and exact-layout synthetic files), features, metrics and submission files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from input_checks import InputError
from processors import glue

BOM = "\ufeff"


@pytest.fixture(scope="module")
def tokenizer():
    from tokenization import FullTokenizer

    return FullTokenizer(str(shared_path("vocab", "bert-base-uncased-vocab.txt")), do_lower_case=True)


def glue_dir(name: str) -> Path:
    return shared_path("glue", name)


# --------------------------------------------------------------------------------------------
# Readers on the real files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "folder", "train", "dev", "test"),
    [("mrpc", "MRPC", 3668, 408, 1725), ("sst-2", "SST-2", 67349, 872, 1821),
     ("cola", "CoLA", 8551, None, 1063), ("sts-b", "STS-B", 5749, 1500, 1379)],
)
def test_real_glue_files_read_with_expected_counts(task, folder, train, dev, test):
    data_dir = glue_dir(folder)
    train_examples = glue.get_train_examples(task, data_dir)
    assert len(train_examples) == train
    if dev is not None:
        assert len(glue.get_dev_examples(task, data_dir)) == dev
    test_examples = glue.get_test_examples(task, data_dir)
    assert len(test_examples) == test
    assert [e.index for e in test_examples[:3]] == ["0", "1", "2"]
    assert all(e.label is None for e in test_examples)
    task_info = glue.get_task(task)
    for example in train_examples:
        assert example.label in task_info.labels or (task_info.is_regression and 0.0 <= float(example.label) <= 5.0)


def test_real_mrpc_first_rows_and_bom():
    examples = glue.get_train_examples("MRPC", glue_dir("MRPC"))
    first = examples[0]
    assert first.label == "1" and first.guid == "train-0"
    assert first.text_a.startswith("Amrozi accused his brother , whom he called \" the witness \"")
    assert first.text_b.startswith("Referring to him as only \" the witness \"")
    # The BOM is not part of the first header field, and the header is not an example.
    assert glue.read_tsv(glue_dir("MRPC") / "train.tsv", 5)[0][1][0] == "Quality"
    assert all(e.label in ("0", "1") for e in examples)


def test_real_cola_has_no_header_and_sst2_keeps_text():
    cola = glue.get_train_examples("cola", glue_dir("CoLA"))
    assert cola[0].text_a == "Our friends won't buy this analysis, let alone the next one we propose."
    assert cola[0].label == "1" and cola[0].text_b is None
    sst = glue.get_dev_examples("sst-2", glue_dir("SST-2"))
    assert sst[0].text_a == "it 's a charming and often affecting journey . " and sst[0].label == "1"


def test_real_stsb_scores_are_floats(tokenizer):
    dev = glue.get_dev_examples("sts-b", glue_dir("STS-B"))
    assert dev[0].text_a == "A man with a hard hat is dancing." and dev[0].label == "5.000"
    features = glue.convert_examples_to_features(dev[:5], "sts-b", 32, tokenizer)
    assert [f.label_id for f in features] == [float(e.label) for e in dev[:5]]
    arrays = glue.features_to_arrays(features, regression=True)
    assert arrays["label_ids"].dtype == np.float32


# --------------------------------------------------------------------------------------------
# Readers on exact-layout synthetic files (tasks without shared data)
# --------------------------------------------------------------------------------------------

MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
MNLI_ROWS = [
    ("0", "31193", "31193n", "government", "Conceptually cream skimming has two basic dimensions - product and "
     "geography.", "Product and geography are what make cream skimming work. ", "neutral"),
    ("1", "101457", "101457e", "telephone", "you know during the season and i guess at at your level uh you lose "
     "them to the next level", "You lose the things to the following level if the people recall.", "entailment"),
    ("2", "134793", "134793e", "fiction", "One of our number will carry out your instructions minutely.",
     "A member of my team will execute your orders with immense precision.", "entailment"),
    ("3", "37397", "37397e", "fiction", "How do you know? All this is their information again.",
     "This information belongs to them.", "contradiction"),
]


def _write(path: Path, rows: list[list[str]], bom: bool = False) -> Path:
    text = "\n".join("\t".join(row) for row in rows) + "\n"
    path.write_text((BOM if bom else "") + text, encoding="utf-8")
    return path


def _mnli_row(row, extra: list[str]) -> list[str]:
    index, prompt, pair, genre, s1, s2, _ = row
    return [index, prompt, pair, genre, f"( {s1} )", f"( {s2} )", f"(ROOT {s1})", f"(ROOT {s2})", s1, s2, *extra]


def make_mnli(folder: Path) -> Path:
    folder.mkdir()
    _write(folder / "train.tsv", [[*MNLI_HEAD, "label1", "gold_label"]]
           + [_mnli_row(r, [r[6], r[6]]) for r in MNLI_ROWS])
    dev_head = [*MNLI_HEAD, "label1", "label2", "label3", "label4", "label5", "gold_label"]
    for name in ("dev_matched.tsv", "dev_mismatched.tsv"):
        _write(folder / name, [dev_head] + [_mnli_row(r, [r[6]] * 6) for r in MNLI_ROWS[:3]])
    for name in ("test_matched.tsv", "test_mismatched.tsv"):
        _write(folder / name, [MNLI_HEAD] + [_mnli_row(r, []) for r in MNLI_ROWS[:2]])
    return folder


def test_mnli_matched_and_mismatched(tmp_path):
    folder = make_mnli(tmp_path / "MNLI")
    train = glue.get_train_examples("mnli", folder)
    assert [e.label for e in train] == ["neutral", "entailment", "entailment", "contradiction"]
    assert train[0].guid == "train-31193n"  # MNLI guids use the pair id
    assert train[0].text_a.startswith("Conceptually cream") and train[0].text_b.startswith("Product and geography")
    assert len(glue.get_dev_examples("mnli", folder)) == 3
    assert len(glue.get_dev_examples("mnli-mm", folder)) == 3
    test = glue.get_test_examples("mnli-mm", folder)
    assert [e.index for e in test] == ["0", "1"] and test[0].label is None


def test_qqp_layout(tmp_path):
    head = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    rows = [["133273", "213221", "213222", "How is the life of a math student? Could you describe your own "
             "experiences?", "Which level of prepration is enough for the exam jlpt5?", "0"],
            ["402555", "536040", "536041", "How do I control my horny emotions?", "How do you control your "
             "horniness?", "1"]]
    _write(tmp_path / "train.tsv", [head, *rows])
    _write(tmp_path / "dev.tsv", [head, *rows[:1]])
    _write(tmp_path / "test.tsv", [["id", "question1", "question2"], ["0", "Why am I mentally very lonely?",
                                    "Find the remainder when 23^24 is divided by 24,23?"]])
    train = glue.get_train_examples("qqp", tmp_path)
    assert [(e.guid, e.label) for e in train] == [("train-133273", "0"), ("train-402555", "1")]
    assert train[1].text_b == "How do you control your horniness?"
    assert glue.get_test_examples("qqp", tmp_path)[0].text_a == "Why am I mentally very lonely?"


@pytest.mark.parametrize(
    ("task", "rows", "labels"),
    [
        ("qnli", [["0", "What came into force after the new constitution was herald?", "As of that day, the new "
                   "constitution heralding the Second Republic came into force.", "entailment"],
                  ["1", "What is the first major city in the stream of the Rhine?", "The most important tributaries "
                   "in this area are the Ill below of Strasbourg.", "not_entailment"]],
         ["entailment", "not_entailment"]),
        ("rte", [["0", "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44.",
                  "Christopher Reeve had an accident.", "not_entailment"]], ["not_entailment"]),
        ("wnli", [["0", "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
                   "The carrot had a hole.", "1"]], ["1"]),
    ],
)
def test_pair_tasks_with_index_column(tmp_path, task, rows, labels):
    head = (["index", "question", "sentence", "label"] if task == "qnli"
            else ["index", "sentence1", "sentence2", "label"])
    _write(tmp_path / "train.tsv", [head, *rows], bom=True)
    _write(tmp_path / "dev.tsv", [head, *rows])
    _write(tmp_path / "test.tsv", [head[:3], *[r[:3] for r in rows]])
    train = glue.get_train_examples(task, tmp_path)
    assert [e.label for e in train] == labels
    assert (train[0].text_a, train[0].text_b) == (rows[0][1], rows[0][2])
    assert [e.index for e in glue.get_test_examples(task, tmp_path)] == [r[0] for r in rows]


def test_wrong_column_count_names_file_and_line(tmp_path):
    head = ["index", "sentence1", "sentence2", "label"]
    path = _write(tmp_path / "train.tsv", [head, ["0", "a", "b", "entailment"], ["1", "a\tstray", "b", "entailment"]])
    with pytest.raises(InputError, match=rf"{path}:3: expected 4 tab-separated columns, found 5"):
        glue.get_train_examples("rte", tmp_path)
    assert len(glue.get_train_examples("rte", tmp_path, skip_malformed=True)) == 1


def test_unknown_label_and_unknown_task(tmp_path):
    _write(tmp_path / "train.tsv", [["index", "sentence1", "sentence2", "label"], ["0", "a", "b", "maybe"]])
    with pytest.raises(InputError, match=r"train.tsv:2: label 'maybe'"):
        glue.get_train_examples("rte", tmp_path)
    with pytest.raises(InputError) as info:
        glue.get_task("sts")
    assert "'sts'" in str(info.value) and "sts-b" in str(info.value) and "mnli-mm" in str(info.value)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="dev_matched.tsv: file not found"):
        glue.get_dev_examples("mnli", tmp_path)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def test_pair_layout_matches_tokenizers_reference_without_truncation(tokenizer):
    from tokenizers import BertWordPieceTokenizer

    vocab = str(shared_path("vocab", "bert-base-uncased-vocab.txt"))
    reference = BertWordPieceTokenizer(vocab, lowercase=True)
    reference.enable_padding(length=128)
    for task, folder in (("mrpc", "MRPC"), ("sst-2", "SST-2")):
        examples = glue.get_dev_examples(task, glue_dir(folder))
        features = glue.convert_examples_to_features(examples, task, 128, tokenizer)
        for example, feature in zip(examples, features, strict=True):
            encoding = reference.encode(example.text_a, example.text_b) if example.text_b else \
                reference.encode(example.text_a)
            assert feature.input_ids == encoding.ids
            assert feature.segment_ids == encoding.type_ids
            assert feature.input_mask == encoding.attention_mask
            assert feature.label_id == int(example.label)


def test_pair_truncation_trims_the_longer_side_b_on_ties(tokenizer):
    """Real pairs cut to 32: lengths follow from the rule (longer side first, b on a tie)."""
    max_len = 32
    budget = max_len - 3
    for task, folder in (("mrpc", "MRPC"), ("sts-b", "STS-B")):
        examples = glue.get_dev_examples(task, glue_dir(folder))
        features = glue.convert_examples_to_features(examples, task, max_len, tokenizer)
        truncated = 0
        for example, feature in zip(examples, features, strict=True):
            full_a, full_b = tokenizer.tokenize(example.text_a), tokenizer.tokenize(example.text_b)
            if len(full_a) + len(full_b) <= budget:
                keep_a = len(full_a)
            else:
                truncated += 1
                keep_a = min(len(full_a), max(math.ceil(budget / 2), budget - len(full_b)))
            keep_b = min(len(full_b), budget - keep_a)
            tokens = ["[CLS]", *full_a[:keep_a], "[SEP]", *full_b[:keep_b], "[SEP]"]
            assert feature.input_ids == tokenizer.convert_tokens_to_ids(tokens) + [0] * (max_len - len(tokens))
            assert feature.segment_ids[:len(tokens)] == [0] * (keep_a + 2) + [1] * (keep_b + 1)
        assert truncated > 100


@pytest.mark.parametrize(
    ("len_a", "len_b", "max_length", "expected"),
    [(5, 3, 6, (3, 3)), (4, 4, 7, (4, 3)), (2, 9, 6, (2, 4)), (3, 3, 10, (3, 3)), (9, 2, 6, (4, 2))],
)
def test_truncate_seq_pair(len_a, len_b, max_length, expected):
    a, b = [f"a{i}" for i in range(len_a)], [f"b{i}" for i in range(len_b)]
    glue.truncate_seq_pair(a, b, max_length)
    assert (len(a), len(b)) == expected
    assert a == [f"a{i}" for i in range(expected[0])] and b == [f"b{i}" for i in range(expected[1])]


def test_single_sentence_truncation_keeps_cls_and_sep(tokenizer):
    example = glue.InputExample("x-0", " ".join(["word"] * 40), label="1")
    (feature,) = glue.convert_examples_to_features([example], "sst-2", 16, tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(feature.input_ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("word") == 14
    assert feature.input_mask == [1] * 16 and feature.segment_ids == [0] * 16


def test_feature_cache(tokenizer, tmp_path):
    data_dir = glue_dir("MRPC")
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    examples = glue.get_dev_examples("mrpc", data_dir)
    kwargs = dict(input_file=data_dir / "dev.tsv", vocab_file=vocab, do_lower_case=True, cache_dir=tmp_path)
    arrays, path = glue.load_features("mrpc", examples, tokenizer, max_seq_length=64, **kwargs)
    assert path.is_file() and arrays["input_ids"].shape == (408, 64)
    cached, same = glue.load_features("mrpc", [], None, max_seq_length=64, **kwargs)
    assert same == path
    for name, value in arrays.items():
        np.testing.assert_array_equal(cached[name], value)
    _, other = glue.load_features("mrpc", examples, tokenizer, max_seq_length=32, **kwargs)
    assert other != path


# --------------------------------------------------------------------------------------------
# Metrics against scikit-learn and scipy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=500)
    preds = np.where(rng.random(500) < 0.7, labels, 1 - labels)
    assert glue.matthews_corrcoef(preds, labels) == pytest.approx(matthews_corrcoef(labels, preds))
    assert glue.binary_f1(preds, labels) == pytest.approx(f1_score(labels, preds))
    assert glue.simple_accuracy(preds, labels) == pytest.approx(accuracy_score(labels, preds))
    three = rng.integers(0, 3, size=500)
    three_pred = np.where(rng.random(500) < 0.5, three, rng.integers(0, 3, size=500))
    assert glue.matthews_corrcoef(three_pred, three) == pytest.approx(matthews_corrcoef(three, three_pred))


def test_metric_edge_cases_match_sklearn():
    constant = [1, 1, 1, 1]
    mixed = [0, 1, 0, 1]
    assert glue.matthews_corrcoef(constant, mixed) == matthews_corrcoef(mixed, constant) == 0.0
    assert glue.binary_f1([0, 0, 0, 0], mixed) == f1_score(mixed, [0, 0, 0, 0], zero_division=0) == 0.0


def test_real_dev_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(42)
    mrpc = np.array([int(e.label) for e in glue.get_dev_examples("mrpc", glue_dir("MRPC"))])
    mrpc_pred = np.where(rng.random(len(mrpc)) < 0.85, mrpc, 1 - mrpc)
    got = glue.compute_metrics("mrpc", mrpc_pred, mrpc)
    assert got["acc"] == pytest.approx(accuracy_score(mrpc, mrpc_pred))
    assert got["f1"] == pytest.approx(f1_score(mrpc, mrpc_pred))
    assert got["acc_and_f1"] == pytest.approx((got["acc"] + got["f1"]) / 2)

    cola = np.array([int(e.label) for e in glue.get_train_examples("cola", glue_dir("CoLA"))])
    cola_pred = np.where(rng.random(len(cola)) < 0.8, cola, 1 - cola)
    assert glue.compute_metrics("cola", cola_pred, cola)["mcc"] == pytest.approx(matthews_corrcoef(cola, cola_pred))

    sst = np.array([int(e.label) for e in glue.get_dev_examples("sst-2", glue_dir("SST-2"))])
    sst_pred = np.where(rng.random(len(sst)) < 0.9, sst, 1 - sst)
    assert glue.compute_metrics("sst-2", sst_pred, sst) == {"acc": pytest.approx(accuracy_score(sst, sst_pred))}

    # STS-B gold scores have many ties (x.000, x.200 ...): Spearman must average tied ranks.
    stsb = np.array([float(e.label) for e in glue.get_dev_examples("sts-b", glue_dir("STS-B"))])
    stsb_pred = np.round(np.clip(stsb + rng.normal(0, 1.0, size=len(stsb)), 0, 5), 1)
    got = glue.compute_metrics("sts-b", stsb_pred, stsb)
    assert got["pearson"] == pytest.approx(pearsonr(stsb_pred, stsb)[0])
    assert got["spearmanr"] == pytest.approx(spearmanr(stsb_pred, stsb)[0])
    assert got["corr"] == pytest.approx((got["pearson"] + got["spearmanr"]) / 2)


def test_accuracy_tasks_report_acc():
    for task in ("mnli", "mnli-mm", "qnli", "rte", "wnli", "sst-2"):
        assert glue.compute_metrics(task, [0, 1, 2, 1], [0, 1, 1, 1]) == {"acc": 0.75}


# --------------------------------------------------------------------------------------------
# Submission files
# --------------------------------------------------------------------------------------------


def test_submission_files_use_leaderboard_names_and_labels(tmp_path):
    examples = [glue.InputExample(f"test-{i}", "x", index=str(i)) for i in range(3)]
    expected = {
        "mrpc": ("MRPC.tsv", [1, 0, 1], ["1", "0", "1"]),
        "mnli": ("MNLI-m.tsv", [0, 1, 2], ["contradiction", "entailment", "neutral"]),
        "mnli-mm": ("MNLI-mm.tsv", [2, 2, 0], ["neutral", "neutral", "contradiction"]),
        "qnli": ("QNLI.tsv", [1, 0, 0], ["not_entailment", "entailment", "entailment"]),
        "sts-b": ("STS-B.tsv", [4.25, 0.0, 3.14159], ["4.250", "0.000", "3.142"]),
        "cola": ("CoLA.tsv", [0, 1, 1], ["0", "1", "1"]),
    }
    for task, (name, preds, strings) in expected.items():
        path = glue.write_submission(task, examples, preds, tmp_path)
        assert path == tmp_path / name
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0] == "index\tprediction"
        assert lines[1:] == [f"{i}\t{s}" for i, s in enumerate(strings)]
    assert not list(tmp_path.glob(".tmp-*"))


def test_submission_index_comes_from_the_test_file(tmp_path):
    examples = glue.get_test_examples("mrpc", glue_dir("MRPC"))
    path = glue.write_submission("mrpc", examples, [1] * len(examples), tmp_path)
    rows = path.read_text().splitlines()
    assert len(rows) == 1726 and rows[1] == "0\t1" and rows[-1] == "1724\t1"
