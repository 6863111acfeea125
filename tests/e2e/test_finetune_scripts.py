"""The fine-tuning scripts end to end, through their shell wrappers, on slices of the real data.

A tiny random "pretrained" BERT (2 layers, hidden 64, the real uncased vocab) is fine-tuned on a few
hundred real SQuAD / GLUE examples; the tests check the files each script writes, the metrics it
logs and that the training loss falls. Subprocesses run with one OpenMP thread: the models are tiny
and the CI machine is shared.
"""
from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, script_env, shared_path

from checkpoint_io import load_checkpoint
from modeling import BertConfig, BertForPreTraining, BertForQuestionAnswering, BertModel
from run_log import read_dllogger

SCRIPTS = ROOT / "scripts"
TINY = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=512)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def env() -> dict[str, str]:
    e = script_env()
    e["OMP_NUM_THREADS"] = "1"
    return e


def run(cmd: list[str], expect_ok: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if expect_ok:
        assert done.returncode == 0, (f"exit {done.returncode}\nstdout:\n{done.stdout[-4000:]}\n"
                                      f"stderr:\n{done.stderr[-4000:]}")
    return done


def vocab_file() -> Path:
    return shared_path("vocab", "bert-base-uncased-vocab.txt")


def training_losses(dllogger: Path) -> list[float]:
    return [r["data"]["average_loss"] for r in read_dllogger(dllogger)
            if r["type"] == "LOG" and "average_loss" in r.get("data", {})]


def final_summary(dllogger: Path) -> dict:
    summary: dict = {}
    for record in read_dllogger(dllogger):
        if record["type"] == "LOG" and record["step"] == []:
            summary.update(record["data"])
    return summary


def assert_loss_falls(dllogger: Path) -> None:
    losses = training_losses(dllogger)
    assert len(losses) >= 4, losses
    assert np.mean(losses[-3:]) < 0.9 * losses[0], losses


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny BertForPreTraining checkpoint ({'model': sd}) with bert_config.json beside it."""
    folder = tmp_path_factory.mktemp("tiny_pretrained")
    config = BertConfig(**TINY)
    torch.manual_seed(0)
    torch.save({"model": BertForPreTraining(config).state_dict()}, folder / "ckpt.pt")
    config.to_json_file(folder / "bert_config.json")
    BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).to_json_file(
        folder / "bert_config_no_dropout.json")
    return folder


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")


def glue_slice(dst: Path, task_dir: str, n_train: int, n_dev: int, n_test: int, train_header: bool = True) -> Path:
    """The first rows of a GLUE task's files; with no dev.tsv (CoLA) dev rows come from later train rows."""
    src = shared_path("glue", task_dir)
    train = (src / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    head, rows = (train[:1], train[1:]) if train_header else ([], train)
    write_lines(dst / "train.tsv", head + rows[:n_train])
    if (src / "dev.tsv").is_file():
        dev = (src / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        write_lines(dst / "dev.tsv", dev[: 1 + n_dev])
    else:
        write_lines(dst / "dev.tsv", head + rows[n_train:n_train + n_dev])
    test = (src / "test.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    write_lines(dst / "test.tsv", test[: 1 + n_test])
    return dst


def squad_slice(dst: Path, source: Path, min_questions: int, name: str) -> Path:
    """The first paragraphs of a SQuAD file holding at least `min_questions` questions."""
    data = json.loads(source.read_text(encoding="utf-8"))
    paragraphs, count = [], 0
    for paragraph in data["data"][0]["paragraphs"]:
        paragraphs.append(paragraph)
        count += len(paragraph["qas"])
        if count >= min_questions:
            break
    dst.mkdir(parents=True, exist_ok=True)
    title = data["data"][0]["title"]
    (dst / name).write_text(json.dumps({"version": "1.1", "data": [{"title": title, "paragraphs": paragraphs}]}))
    return dst / name


def glue_wrapper_args(pretrained: Path, data_dir: Path, out_dir: Path, task: str, *, num_gpu: int = 1,
                      batch: int = 16, lr: str = "2e-3", epochs: str = "6", mode: str = "train eval prediction",
                      config: str = "bert_config.json") -> list:
    return ["bash", SCRIPTS / "run_glue.sh", pretrained / "ckpt.pt", data_dir, vocab_file(), pretrained / config,
            out_dir, task, num_gpu, batch, 1, lr, 0.1, epochs, -1, "fp32", 2, mode]


# --------------------------------------------------------------------------------------------
# SQuAD
# --------------------------------------------------------------------------------------------


def test_run_squad_sh_trains_predicts_and_scores(tmp_path, pretrained):
    squad_dir = tmp_path / "squad"
    squad_slice(squad_dir, shared_path("squad", "v1.1", "train-v1.1.first11articles.json"), 200, "train-v1.1.json")
    dev = squad_slice(squad_dir, shared_path("squad", "v1.1", "dev-v1.1.first4articles.json"), 60, "dev-v1.1.json")
    out = tmp_path / "out"
    run(["bash", SCRIPTS / "run_squad.sh", pretrained / "ckpt.pt", "2.0", 32, "1e-3", "fp32", 1, 1, squad_dir,
         vocab_file(), out, "train eval", pretrained / "bert_config.json", -1,
         "--max_seq_length=128", "--doc_stride=64", "--log_freq=3", "--disable_progress_bar"])

    for name in ("pytorch_model.bin", "bert_config.json", "vocab.txt", "logfile.txt", "dllogger.json"):
        assert (out / name).is_file(), name
    assert list(squad_dir.glob("train-v1.1.json.features-*.npz")), "training features were not cached"
    assert_loss_falls(out / "dllogger.json")

    question_ids = {qa["id"] for p in json.loads(dev.read_text())["data"][0]["paragraphs"] for qa in p["qas"]}
    predictions = json.loads((out / "predictions.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    assert set(predictions) == question_ids == set(nbest)
    for qid, entries in nbest.items():
        assert 1 <= len(entries) <= 20
        assert entries[0]["text"] == predictions[qid]
        assert sum(e["probability"] for e in entries) == pytest.approx(1.0)
        assert set(entries[0]) == {"text", "probability", "start_logit", "end_logit"}
    summary = final_summary(out / "dllogger.json")
    assert 0.0 <= summary["exact_match"] <= summary["F1"] <= 100.0
    for key in ("e2e_train_time", "training_sequences_per_second", "final_loss", "e2e_inference_time",
                "inference_sequences_per_second"):
        assert summary[key] > 0, key

    model = BertForQuestionAnswering(BertConfig.from_json_file(out / "bert_config.json"))
    load_checkpoint(model, out, strict=True)

    # The fine-tuned output folder predicts SQuAD v2.0 too: null odds and HasAns/NoAns scores.
    dev2 = squad_slice(tmp_path / "v2", shared_path("squad", "v2.0", "dev-v2.0.first5articles.json"), 40, "dev.json")
    out2 = tmp_path / "out_v2"
    run([sys.executable, ROOT / "run_squad.py", "--init_checkpoint", out, "--do_lower_case", "--do_predict",
         "--do_eval", "--predict_file", dev2, "--version_2_with_negative", "--output_dir", out2,
         "--json-summary", out2 / "dllogger.json", "--max_seq_length", 128, "--doc_stride", 64,
         "--disable_progress_bar"])
    question_ids = {qa["id"] for p in json.loads(dev2.read_text())["data"][0]["paragraphs"] for qa in p["qas"]}
    null_odds = json.loads((out2 / "null_odds.json").read_text())
    assert set(null_odds) == question_ids == set(json.loads((out2 / "predictions.json").read_text()))
    summary = final_summary(out2 / "dllogger.json")
    for key in ("exact_match", "F1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_f1"):
        assert 0.0 <= summary[key] <= 100.0, key


def test_inference_answers_a_question_after_fine_tuning(tmp_path, pretrained):
    """Fine-tune on one real paragraph's questions, then ask one of them through inference.py."""
    source = json.loads(shared_path("squad", "v1.1", "train-v1.1.first11articles.json").read_text())
    paragraph = source["data"][1]["paragraphs"][25]  # Beyoncé / "Formation" on Tidal, 8 questions
    question = "When did Beyoncé release Formation?"
    assert any(qa["question"] == question for qa in paragraph["qas"])
    squad_dir = tmp_path / "squad"
    squad_dir.mkdir()
    (squad_dir / "train-v1.1.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": [paragraph]}]}))
    out = tmp_path / "out"
    run(["bash", SCRIPTS / "run_squad.sh", pretrained / "ckpt.pt", "60", 8, "3e-3", "fp32", 1, 1, squad_dir,
         vocab_file(), out, "train", pretrained / "bert_config.json", -1,
         "--max_seq_length=64", "--log_freq=20", "--disable_progress_bar", "--warmup_proportion=0.05"])

    done = run([sys.executable, ROOT / "inference.py", "--init_checkpoint", out, "--do_lower_case",
                "--max_seq_length", 64, "--n_best_size", 3, "--question", question, "--context", paragraph["context"]])
    lines = done.stdout.splitlines()
    assert lines[0] == f"question:  {question}"
    assert lines[3] == "February 6, 2016"
    nbest = json.loads(done.stdout[done.stdout.index("["):])
    assert 1 <= len(nbest) <= 3 and nbest[0]["text"] == "February 6, 2016"
    assert nbest[0]["probability"] == max(e["probability"] for e in nbest)
    assert sum(e["probability"] for e in nbest) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------------
# GLUE and SWAG
# --------------------------------------------------------------------------------------------

GLUE_CASES = {
    # task: (folder, train has header, metric keys, submission file)
    "mrpc": ("MRPC", True, {"acc", "f1", "acc_and_f1"}, "MRPC.tsv"),
    "sst-2": ("SST-2", True, {"acc"}, "SST-2.tsv"),
    "sts-b": ("STS-B", True, {"pearson", "spearmanr", "corr"}, "STS-B.tsv"),
    "cola": ("CoLA", False, {"mcc"}, "CoLA.tsv"),
}


@pytest.mark.parametrize("task", list(GLUE_CASES))
def test_run_glue_sh_trains_evaluates_and_writes_a_submission(tmp_path, pretrained, task):
    folder, header, metrics, submission = GLUE_CASES[task]
    data = glue_slice(tmp_path / "data", folder, n_train=256, n_dev=96, n_test=24, train_header=header)
    out = tmp_path / "out"
    run([*glue_wrapper_args(pretrained, data, out, task), "--max_seq_length", "64", "--log_freq", "4",
         "--disable_progress_bar"])

    assert_loss_falls(out / "dllogger.json")
    results = json.loads((out / "results.txt").read_text())
    assert metrics <= set(results)
    assert all(np.isfinite(results[k]) for k in metrics)
    assert results["eval:num_samples_per_gpu"] == 96 and results["global_step"] == 96
    rows = (out / submission).read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 25
    values = [row.split("\t")[1] for row in rows[1:]]
    if task == "sts-b":
        assert all(float(v) == float(v) for v in values)
    else:
        assert set(values) <= {"0", "1"}
    assert len(json.loads((out / "predictions.json").read_text())) == 24
    summary = final_summary(out / "dllogger.json")
    assert summary["training_sequences_per_second"] > 0 and summary["inference_sequences_per_second"] > 0


def swag_from_mrpc(dst: Path, n: int, seed: int) -> None:
    """SWAG-format csv from real MRPC paraphrase pairs: pick the paraphrase of sent1 among 4 endings."""
    rows = list(csv.reader(shared_path("glue", "MRPC", "train.tsv").open(encoding="utf-8-sig"), delimiter="\t",
                           quotechar=None))[1:]
    pairs = [(r[3], r[4]) for r in rows if r[0] == "1"][: n + 50]
    rng = random.Random(seed)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
                         "ending0", "ending1", "ending2", "ending3", "label"])
        for index, (first, second) in enumerate(pairs[:n]):
            endings = [p[1] for p in rng.sample(pairs[:index] + pairs[index + 1:], 3)]
            label = rng.randrange(4)
            endings.insert(label, second)
            writer.writerow([index, "mrpc", index, first, first, "", "gold", *endings, label])


def test_run_swag_sh_trains_and_evaluates(tmp_path, pretrained):
    data = tmp_path / "swag"
    swag_from_mrpc(data / "train.csv", 192, seed=1)
    swag_from_mrpc(data / "val.csv", 48, seed=2)
    out = tmp_path / "out"
    run(["bash", SCRIPTS / "run_swag.sh", pretrained / "ckpt.pt", data, vocab_file(), pretrained / "bert_config.json",
         out, 1, 16, 2, "2e-3", 0.1, 8, -1, "fp32", 42, "train eval",
         "--max_seq_length", "64", "--log_freq", "4", "--disable_progress_bar"])
    assert_loss_falls(out / "dllogger.json")
    results = dict(line.split(" = ") for line in (out / "eval_results.txt").read_text().splitlines())
    assert set(results) == {"eval_accuracy", "eval_loss", "global_step", "loss"}
    assert 0.0 <= float(results["eval_accuracy"]) <= 1.0 and int(results["global_step"]) == 96
    assert (out / "pytorch_model.bin").is_file() and (out / "logfile").is_file()


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path, pretrained):
    data = glue_slice(tmp_path / "data", "MRPC", n_train=64, n_dev=8, n_test=8)
    weights = []
    for num_gpu, batch in ((2, 8), (1, 16)):
        out = tmp_path / f"out{num_gpu}"
        run([*glue_wrapper_args(pretrained, data, out, "mrpc", num_gpu=num_gpu, batch=batch, lr="1e-3", epochs="2",
                                mode="train", config="bert_config_no_dropout.json"),
             "--max_seq_length", "64", "--disable_progress_bar", "--skip_cache"])
        weights.append(torch.load(out / "pytorch_model.bin", weights_only=True)["model"])
    assert "world_size : 2" in (tmp_path / "out2" / "logfile").read_text()
    initial = torch.load(pretrained / "ckpt.pt", weights_only=True)["model"]
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(weights[1][key], initial[key])
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[0][name], value, atol=1e-5, rtol=1e-4, msg=name)


# --------------------------------------------------------------------------------------------
# extract_features.py
# --------------------------------------------------------------------------------------------


def test_extract_features_writes_google_style_json_lines(tmp_path, pretrained):
    from tokenization import FullTokenizer

    texts = ["The quick brown fox jumps over the lazy dog.", "Who won? ||| The Denver Broncos won Super Bowl 50."]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "features.jsonl"
    run([sys.executable, ROOT / "extract_features.py", "--input_file", tmp_path / "in.txt", "--output_file", out,
         "--init_checkpoint", pretrained / "ckpt.pt", "--vocab_file", vocab_file(), "--do_lower_case",
         "--layers=-1,-2", "--max_seq_length", 32])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["linex_index"] for r in records] == [0, 1]

    tokenizer = FullTokenizer(str(vocab_file()), do_lower_case=True)
    expected_tokens = ["[CLS]", *tokenizer.tokenize("Who won?"), "[SEP]",
                       *tokenizer.tokenize("The Denver Broncos won Super Bowl 50."), "[SEP]"]
    pair = records[1]["features"]
    assert [f["token"] for f in pair] == expected_tokens
    assert [layer["index"] for layer in pair[0]["layers"]] == [-1, -2]

    model = BertModel(BertConfig.from_json_file(pretrained / "bert_config.json"))
    load_checkpoint(model, pretrained / "ckpt.pt", strict=False)
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(expected_tokens)])
    segments = torch.tensor([[0] * 5 + [1] * (len(expected_tokens) - 5)])
    with torch.no_grad():
        layers, _ = model.eval()(ids, segments, torch.ones_like(ids), output_all_encoded_layers=True)
    for layer_index, position in ((-1, 0), (-2, 3), (-1, len(expected_tokens) - 1)):
        got = pair[position]["layers"][[-1, -2].index(layer_index)]["values"]
        np.testing.assert_allclose(got, layers[layer_index][0, position].numpy(), atol=2e-6)


# --------------------------------------------------------------------------------------------
# Bad input: one line naming what is wrong
# --------------------------------------------------------------------------------------------


def test_unknown_glue_task_is_one_line(tmp_path, pretrained):
    done = run([sys.executable, ROOT / "run_glue.py", "--task_name", "mrcp", "--data_dir", tmp_path,
                "--init_checkpoint", pretrained / "ckpt.pt", "--output_dir", tmp_path / "o", "--do_train"],
               expect_ok=False)
    assert_one_line_error(done, "unknown GLUE task 'mrcp'", "mrpc")


def test_checkpoint_of_another_architecture_is_one_line(tmp_path, pretrained):
    data = glue_slice(tmp_path / "data", "MRPC", n_train=8, n_dev=8, n_test=8)
    done = run([sys.executable, ROOT / "run_glue.py", "--task_name", "mrpc", "--data_dir", data,
                "--init_checkpoint", pretrained / "ckpt.pt", "--config_file", ROOT / "bert_configs" / "tiny.json",
                "--vocab_file", vocab_file(), "--output_dir", tmp_path / "o", "--do_train"], expect_ok=False)
    assert_one_line_error(done, str(pretrained / "ckpt.pt"), "shapes do not fit")


def test_malformed_squad_json_is_one_line(tmp_path, pretrained):
    broken = tmp_path / "dev-v1.1.json"
    broken.write_text('{"data": [{"title": "x", "paragraphs": [{"context": "a b", "qas": [')
    done = run([sys.executable, ROOT / "run_squad.py", "--init_checkpoint", pretrained / "ckpt.pt",
                "--vocab_file", vocab_file(), "--output_dir", tmp_path / "o", "--do_predict",
                "--predict_file", broken, "--json-summary", tmp_path / "o" / "dll.json"], expect_ok=False)
    assert_one_line_error(done, str(broken), "not valid JSON")


def test_glue_row_with_wrong_column_count_is_one_line(tmp_path, pretrained):
    data = glue_slice(tmp_path / "data", "MRPC", n_train=8, n_dev=8, n_test=8)
    lines = (data / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[3] = "1\tonly three\tcolumns\n"
    (data / "train.tsv").write_text("".join(lines), encoding="utf-8")
    done = run([sys.executable, ROOT / "run_glue.py", "--task_name", "mrpc", "--data_dir", data,
                "--init_checkpoint", pretrained / "ckpt.pt", "--vocab_file", vocab_file(),
                "--output_dir", tmp_path / "o", "--do_train"], expect_ok=False)
    assert_one_line_error(done, f"{data / 'train.tsv'}:4", "expected 5 tab-separated columns, found 3")
