"""Reliability round 2, items 8-15 of issue 22, for the scripts other than pretraining: non-finite weights
refused by every downstream entry point, SQuAD files read as written, leftovers and surprises.

Each table row runs a script's `main` in this process through `input_checks.run_main`, as its `__main__` does
(tests/test_bad_inputs.py explains why): one `error:` line naming the file, key or flag, exit 2, nothing
written. The pretraining cases are in tests/test_pretraining_guards.py. docs/reliability.md lists them.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_inputs import (  # noqa: F401 (work is a fixture)
    SWAG_HEADER,
    SWAG_ROW,
    assert_one_line_error,
    entry_point,
    files_under,
    glue_argv,
    glue_folder,
    work,
    write,
)
from triton_helpers import load_triton_module, make_checkpoint

from checkpoint_io import load_checkpoint
from input_checks import run_main

NAN_KEY = "bert.encoder.layer.0.attention.self.query.weight"


def with_nan_weight(source: Path, target: Path, key: str = NAN_KEY, value: float = float("nan")) -> Path:
    """A copy of checkpoint `source` ({'model': sd}) with one value of tensor `key` set to `value`."""
    state = torch.load(source, weights_only=True)["model"]
    state[key].view(-1)[3] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, target)
    for beside in ("bert_config.json", "vocab.txt"):
        if (source.parent / beside).is_file():
            shutil.copyfile(source.parent / beside, target.parent / beside)
    return target


# --------------------------------------------------------------------------------------------
# 10. Non-finite weights are refused at load, by every downstream entry point
# --------------------------------------------------------------------------------------------


def non_finite_cases(w: Path, t: Path) -> list[tuple[str, list, Path]]:
    nan_ckpt = with_nan_weight(w / "ckpt.pt", t / "nan" / "ckpt.pt")
    inf_ckpt = with_nan_weight(w / "ckpt.pt", t / "inf" / "ckpt.pt", value=float("inf"))
    qa = make_checkpoint(t / "qa_source")
    nan_qa = with_nan_weight(qa / "pytorch_model.bin", t / "nan_qa" / "pytorch_model.bin")
    out = t / "out"
    return [
        ("triton/export", ["--checkpoint", nan_qa.parent, "--output_dir", out, "--format", "ts-trace"], nan_qa.parent),
        ("run_squad", ["--init_checkpoint", nan_ckpt, "--vocab_file", w / "vocab.txt", "--output_dir", out,
                       "--do_predict", "--predict_file", w / "dev.json"], nan_ckpt),
        ("extract_features", ["--init_checkpoint", nan_ckpt, "--vocab_file", w / "vocab.txt", "--input_file",
                              w / "vocab.txt", "--output_file", out / "f.jsonl", "--layers", "-1"], nan_ckpt),
        ("convert_checkpoint", ["--to_hf", nan_ckpt, out / "hf", "--vocab_file", w / "vocab.txt"], nan_ckpt),
        ("convert_checkpoint", ["--to_hf", inf_ckpt, out / "hf", "--vocab_file", w / "vocab.txt"], inf_ckpt),
        ("inference", ["--init_checkpoint", nan_qa.parent, "--vocab_file", w / "vocab.txt", "--question", "Who?",
                       "--context", "Someone."], nan_qa.parent),
    ]


NON_FINITE_IDS = ["export", "squad-predict", "extract-features", "convert-to-hf", "convert-to-hf-inf", "inference"]


@pytest.mark.parametrize("index", range(len(NON_FINITE_IDS)), ids=NON_FINITE_IDS)
def test_non_finite_weights_are_refused_at_load_naming_the_tensor(tmp_path, capsys, work, index):  # noqa: F811
    cases = non_finite_cases(work, tmp_path)
    assert len(cases) == len(NON_FINITE_IDS)
    name, argv, source = cases[index]
    assert_one_line_error(capsys, name, argv, f"{source}: tensor {NAN_KEY} holds NaN or infinite values")
    assert not [p for p in files_under(tmp_path / "out") if p.name != "dllogger.json"]


def test_export_parity_check_counts_nan_as_a_difference():
    """NaN − NaN is NaN and max(0.0, nan) is 0.0: the old check reported a NaN export as identical."""
    export = load_triton_module("export")
    finite = np.array([[1.0, 2.0]], dtype=np.float32)
    assert export.nan_aware_max_difference(finite, finite + 0.5) == pytest.approx(0.5)
    for broken in (np.array([[np.nan, 2.0]], dtype=np.float32), np.array([[1.0, np.inf]], dtype=np.float32)):
        assert export.nan_aware_max_difference(broken, finite) == float("inf")
        assert export.nan_aware_max_difference(finite, broken) == float("inf")
        assert export.nan_aware_max_difference(broken, broken.copy()) == float("inf")


# --------------------------------------------------------------------------------------------
# 12. SQuAD questions are neither dropped nor mislabelled
# --------------------------------------------------------------------------------------------


def squad_file(work_dir: Path, path: Path, change) -> tuple[Path, dict]:
    """The fixture's one-paragraph SQuAD file with `change(data)` applied."""
    data = json.loads((work_dir / "dev.json").read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path, data


def squad_predict(w: Path, predict_file: Path, out: Path, *extra) -> list:
    return ["--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt", "--output_dir", out,
            "--do_predict", "--predict_file", predict_file, "--max_seq_length", 128, "--doc_stride", 64, *extra]


def add_blank_paragraph(data: dict) -> None:
    data["data"][0]["paragraphs"].append({"context": " \n\t  ", "qas": [
        {"id": "blank-1", "question": "What is here?", "answers": []},
        {"id": "blank-2", "question": "Anything?", "answers": []}]})


@pytest.mark.parametrize("version_2", [False, True])
def test_questions_over_a_whitespace_only_context_get_an_empty_answer(tmp_path, work, version_2):  # noqa: F811
    predict_file, data = squad_file(work, tmp_path / "dev.json", add_blank_paragraph)
    extra = ["--version_2_with_negative"] if version_2 else []
    run_main(entry_point("run_squad"), [str(a) for a in squad_predict(work, predict_file, tmp_path / "out", *extra)])
    answers = json.loads((tmp_path / "out" / "predictions.json").read_text(encoding="utf-8"))
    ids = [qa["id"] for p in data["data"][0]["paragraphs"] for qa in p["qas"]]
    assert sorted(answers) == sorted(ids)
    assert answers["blank-1"] == "" and answers["blank-2"] == ""
    if version_2:
        odds = json.loads((tmp_path / "out" / "null_odds.json").read_text(encoding="utf-8"))
        assert sorted(odds) == sorted(ids) and odds["blank-1"] > 0


def first_question(data: dict) -> dict:
    return data["data"][0]["paragraphs"][0]["qas"][0]


def set_first(key: str, value) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        qa = first_question(data)
        qa[key] = value
        if value is True:
            qa["answers"] = []
    return change


SQUAD_LABEL_CASES = [
    ("is-impossible-string-v1", set_first("is_impossible", "false"), [],
     "question {qid}: 'is_impossible' must be true or false, got 'false'"),
    ("is-impossible-string-v2", set_first("is_impossible", "false"), ["--version_2_with_negative"],
     "question {qid}: 'is_impossible' must be true or false, got 'false'"),
    ("is-impossible-number-v2", set_first("is_impossible", 0), ["--version_2_with_negative"],
     "question {qid}: 'is_impossible' must be true or false, got 0"),
    ("v2-file-in-v1-mode", set_first("is_impossible", True), ["--do_eval"],
     "question {qid} has is_impossible true, a SQuAD 2.0 file; pass --version_2_with_negative"),
]


@pytest.mark.parametrize("change, extra, message", [c[1:] for c in SQUAD_LABEL_CASES],
                         ids=[c[0] for c in SQUAD_LABEL_CASES])
def test_squad_labels_are_checked_before_predictions_are_written(
        tmp_path, capsys, work, change, extra, message):  # noqa: F811
    predict_file, data = squad_file(work, tmp_path / "dev.json", change)
    qid = first_question(data)["id"]
    assert_one_line_error(capsys, "run_squad", squad_predict(work, predict_file, tmp_path / "out", *extra),
                          f"{predict_file}: {message.format(qid=qid)}")
    assert not [p for p in files_under(tmp_path / "out") if p.name != "dllogger.json"]


# --------------------------------------------------------------------------------------------
# 13, 14. Numbers, configs and vocabularies that used to end in a traceback
# --------------------------------------------------------------------------------------------


def config_with(w: Path, t: Path, name: str, **changes) -> Path:
    """The fixture's config with `changes` (json.dumps writes NaN as the bare NaN json.loads reads back)."""
    data = {**json.loads((w / "bert_config.json").read_text(encoding="utf-8")), **changes}
    return write(t / name, json.dumps(data))


def traceback_cases(w: Path, t: Path) -> list[tuple[str, list, str]]:
    glue = glue_folder(t / "glue")
    out = t / "out"
    squad = ["--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt", "--do_predict",
             "--predict_file", w / "dev.json", "--output_dir", out]
    shadow = config_with(w, t, "shadow.json", to_dict=1)
    prop = config_with(w, t, "prop.json", padded_vocab_size=8)
    negative_init = config_with(w, t, "neg.json", initializer_range=-1)
    nan_init = config_with(w, t, "nan.json", initializer_range=float("nan"))
    small_vocab = config_with(w, t, "small_vocab.json", vocab_size=1000)
    return [
        ("run_glue", glue_argv(w, glue, out, "--do_train", "--learning_rate", "nan"),
         "--learning_rate must be a finite number > 0, got nan"),
        ("run_glue", glue_argv(w, glue, out, "--do_train", "--num_train_epochs", "nan"),
         "--num_train_epochs must be a finite number > 0, got nan"),
        ("run_glue", glue_argv(w, glue, out, "--do_train", "--log_freq", 0),
         "--log_freq must be a finite number >= 1, got 0"),
        ("run_squad", [*squad, "--seed", 10**23], f"--seed must be a whole number of at most 63 bits, got {10**23}"),
        ("run_squad", [*squad, "--config_file", shadow], f"{shadow}: key 'to_dict' is the name of a BertConfig method"),
        ("run_squad", [*squad, "--config_file", prop], f"{prop}: key 'padded_vocab_size' is the name of a BertConfig"),
        ("run_squad", [*squad, "--config_file", negative_init],
         f"{negative_init}: initializer_range must be a finite number > 0, got -1"),
        ("run_squad", [*squad, "--config_file", nan_init],
         f"{nan_init}: initializer_range must be a finite number > 0, got nan"),
        ("run_glue", glue_argv(w, glue, out, "--do_eval", "--config_file", small_vocab),
         f"{w / 'vocab.txt'}: the vocab has ids up to 30521, the model config's vocab_size is 1000"),
        ("run_squad", [*squad, "--config_file", small_vocab],
         f"{w / 'vocab.txt'}: the vocab has ids up to 30521, the model config's vocab_size is 1000"),
        ("extract_features", ["--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt", "--input_file",
                              w / "vocab.txt", "--output_file", out / "f.jsonl", "--layers", "-1", "--config_file",
                              small_vocab],
         f"{w / 'vocab.txt'}: the vocab has ids up to 30521, the model config's vocab_size is 1000"),
    ]


TRACEBACK_IDS = ["glue-nan-learning-rate", "glue-nan-epochs", "glue-log-freq-0", "squad-seed-1e23",
                 "config-shadows-method", "config-shadows-property", "config-negative-initializer-range",
                 "config-nan-initializer-range", "glue-vocab-above-vocab-size", "squad-vocab-above-vocab-size",
                 "features-vocab-above-vocab-size"]


@pytest.mark.parametrize("index", range(len(TRACEBACK_IDS)), ids=TRACEBACK_IDS)
def test_former_tracebacks_are_one_line_before_any_output(tmp_path, capsys, work, index):  # noqa: F811
    cases = traceback_cases(work, tmp_path)
    assert len(cases) == len(TRACEBACK_IDS)
    name, argv, message = cases[index]
    assert_one_line_error(capsys, name, argv, message)
    assert not [p for p in files_under(tmp_path / "out") if p.name != "dllogger.json"]


@pytest.mark.parametrize("reader", ["glue", "swag"])
def test_a_200k_character_field_is_read_not_a_traceback(tmp_path, reader):
    """csv's default field limit is 131,072 characters; a longer sentence is text (truncated later), not a crash."""
    long_text = "word " * 40_000
    if reader == "glue":
        from processors import glue

        rows = [(1, ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]), (2, ["1", "7", "8", long_text, "short"])]
        path = write(tmp_path / "dev.tsv", "".join("\t".join(fields) + "\n" for _, fields in rows))
        fields = glue.read_tsv(path, 5)[1][1]
    else:
        from processors import swag

        path = write(tmp_path / "val.csv", SWAG_HEADER + SWAG_ROW.replace("The man sits.,He", f"{long_text},He"))
        example = swag.read_swag_examples(path, is_training=True)[0]
        fields = [example.context_sentence]
    assert long_text in fields


# --------------------------------------------------------------------------------------------
# 15. convert_checkpoint --to_hf writes a folder a tokenizer loads from, or says why not
# --------------------------------------------------------------------------------------------


def test_to_hf_copies_the_vocab_beside_the_checkpoint_or_refuses_without_one(tmp_path, capsys, work):  # noqa: F811
    import convert_checkpoint

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(work / "ckpt.pt", alone / "ckpt.pt")
    assert_one_line_error(capsys, "convert_checkpoint", ["--to_hf", alone / "ckpt.pt", tmp_path / "out" / "hf",
                                                         "--config_file", work / "bert_config.json"],
                          f"{alone / 'ckpt.pt'}: no --vocab_file given and no vocab.txt beside the checkpoint")
    assert not (tmp_path / "out").exists()
    convert_checkpoint.main(["--to_hf", str(alone / "ckpt.pt"), str(tmp_path / "weights_only"), "--config_file",
                             str(work / "bert_config.json"), "--no_vocab"])
    assert not (tmp_path / "weights_only" / "vocab.txt").exists()
    convert_checkpoint.main(["--to_hf", str(work / "ckpt.pt"), str(tmp_path / "hf")])  # vocab.txt is beside it
    assert (tmp_path / "hf" / "vocab.txt").read_bytes() == (work / "vocab.txt").read_bytes()


# Google's variable names (the bert repository's TF checkpoints), written from its modeling.py's scopes, not from
# our converter: ours → (Google's name, whether Google stores the matrix transposed, as a dense layer's kernel).
GOOGLE_RENAMES = ((".dense_act.", ".dense."), ("encoder.layer.", "encoder.layer_"),
                  ("_embeddings.weight", "_embeddings"),
                  ("LayerNorm.weight", "LayerNorm.gamma"), ("LayerNorm.bias", "LayerNorm.beta"),
                  ("cls.predictions.bias", "cls.predictions.output_bias"),
                  ("cls.seq_relationship.weight", "cls.seq_relationship.output_weights"),
                  ("cls.seq_relationship.bias", "cls.seq_relationship.output_bias"))


def google_name(key: str) -> tuple[str, bool] | None:
    if key == "cls.predictions.decoder.weight":
        return None  # tied to the word embeddings: Google stores it once
    name = key
    for ours, google in GOOGLE_RENAMES:
        name = name.replace(ours, google)
    kernel = name.endswith(".weight")  # what is left is a dense layer's matrix
    name = name.removesuffix(".weight") + (".kernel" if kernel else "")
    return name.replace(".", "/"), kernel


def test_google_tf_checkpoint_converts_to_the_same_weights(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed (pip install tensorflow-cpu)")
    import convert_checkpoint
    from modeling import BertConfig, BertForPreTraining

    config = BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    config.to_json_file(tmp_path / "bert_config.json")
    torch.manual_seed(3)
    model = BertForPreTraining(config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for value in state.values():  # no zero or one initialisation left: every tensor must land in its own place
        value.add_(torch.rand_like(value))
    graph = tf.Graph()
    with graph.as_default():
        variables = []
        for key, value in state.items():
            named = google_name(key)
            if named is not None:
                array = value[:config.vocab_size] if value.shape[0] == config.padded_vocab_size else value
                array = array.T if named[1] else array
                variables.append(tf.compat.v1.Variable(array.numpy().copy(), name=named[0]))
        variables.append(tf.compat.v1.Variable(7, name="global_step"))
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(session, str(tmp_path / "google" / "bert_model.ckpt"))
    assert "bert/encoder/layer_1/attention/self/query/kernel" in dict(tf.train.list_variables(prefix))

    convert_checkpoint.main(["--from_tf", prefix, str(tmp_path / "out" / "model.pt"),
                             "--config_file", str(tmp_path / "bert_config.json")])
    back = BertForPreTraining(BertConfig.from_json_file(tmp_path / "out" / "bert_config.json"))
    report = load_checkpoint(back, tmp_path / "out" / "model.pt", strict=True)
    assert not report.initialized and not report.skipped
    for key, value in back.state_dict().items():
        tied = key == "cls.predictions.decoder.weight"  # the word embeddings, in Google's checkpoint and in ours
        expected = state["bert.embeddings.word_embeddings.weight" if tied else key]
        if key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight", "cls.predictions.bias"):
            expected, value = expected[:config.vocab_size], value[:config.vocab_size]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
