"""Bad input at every entry point: one `error: ...` line naming what is wrong, exit 2, no traceback,
nothing written (issue 14).

Each table row is (script, arguments, expected message). The scripts run in this process through
`input_checks.run_main`, exactly as their `__main__` does, so a traceback would fail the test as an uncaught
exception; the checks of the shell wrappers run the real scripts in a subprocess
(tests/e2e/test_finetune_scripts.py).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import shared_path
from triton_helpers import load_triton_module, make_checkpoint

from input_checks import InputError, run_main
from modeling import BertConfig, BertForPreTraining
from training import release_output_locks

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=512)


def entry_point(name: str) -> Callable[[list[str]], object]:
    """The `main` of a top-level script or of a triton/ script (`triton/<name>`)."""
    if name.startswith("triton/"):
        return load_triton_module(name.removeprefix("triton/")).main
    return __import__(name).main


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def assert_one_line_error(capsys, name: str, argv: list[str], expected: str) -> None:
    """`main(argv)` exits 2 with exactly `error: <expected…>` on stderr and nothing else."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_main(entry_point(name), [str(a) for a in argv])
    release_output_locks()  # what the end of the script's process does (the lock file goes with it)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {expected}"), lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny pretraining checkpoint, a QA fine-tuned folder, the real vocab and a real SQuAD slice."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    config = BertConfig(**TINY)
    torch.manual_seed(0)
    torch.save({"model": BertForPreTraining(config).state_dict()}, folder / "ckpt.pt")
    config.to_json_file(folder / "bert_config.json")
    make_checkpoint(folder / "qa")
    (folder / "vocab.txt").write_bytes(shared_path("vocab", "bert-base-uncased-vocab.txt").read_bytes())
    squad_json = json.loads(shared_path("squad", "v1.1", "dev-v1.1.first4articles.json").read_text(encoding="utf-8"))
    squad_json["data"] = [{"title": "t", "paragraphs": squad_json["data"][0]["paragraphs"][:1]}]
    (folder / "dev.json").write_text(json.dumps(squad_json), encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------
# --doc_stride: a stride below 1 never finished windowing (memory grew without bound)
# --------------------------------------------------------------------------------------------

STRIDE_ENTRY_POINTS = [
    ("run_squad", lambda w: ["--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt",
                             "--output_dir", w / "out", "--do_predict", "--predict_file", w / "dev.json"]),
    ("inference", lambda w: ["--init_checkpoint", w / "qa", "--vocab_file", w / "vocab.txt"]),
    ("triton/client", lambda w: ["--question", "Who?", "--context", "Someone.", "--url", "127.0.0.1:9"]),
    ("triton/run_squad_client", lambda w: ["--predict_file", w / "dev.json", "--output_dir", w / "out",
                                           "--vocab_file", w / "vocab.txt", "--url", "127.0.0.1:9"]),
    ("triton/model_repository", lambda w: ["--export-dir", w / "export", "--model-repository", w / "out",
                                           "--vocab_file", w / "vocab.txt"]),
]


@pytest.mark.parametrize("stride", [0, -1])
@pytest.mark.parametrize(("name", "argv"), STRIDE_ENTRY_POINTS, ids=[n for n, _ in STRIDE_ENTRY_POINTS])
def test_non_positive_doc_stride_is_refused_at_every_entry_point(capsys, work, name, argv, stride):
    assert_one_line_error(capsys, name, [*argv(work), "--doc_stride", stride],
                          f"--doc_stride must be a positive number of tokens, got {stride}")
    assert not (work / "out").exists()


def test_model_repository_api_refuses_a_non_positive_doc_stride():
    """The config writer itself checks too: a repository with doc_stride 0 would hang its server on a request."""
    mr = load_triton_module("model_repository")
    tensor = mr.TensorModelSpec(backend="python", max_sequence=512, vocab_size=30522, type_vocab_size=2)
    with pytest.raises(InputError, match="--doc_stride must be a positive number of tokens, got 0"):
        mr.text_model_config(mr.TextModelSpec(tensor=tensor, doc_stride=0))


# --------------------------------------------------------------------------------------------
# Config values BertConfig used to coerce silently or accept out of range
# --------------------------------------------------------------------------------------------

BAD_CONFIG_VALUES = [
    ({"hidden_size": 32.5}, "hidden_size must be a whole number >= 1, got 32.5"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a whole number >= 1, got 0"),
    ({"intermediate_size": "64"}, "intermediate_size must be a whole number >= 1, got '64'"),
    ({"max_position_embeddings": True}, "max_position_embeddings must be a whole number >= 1, got True"),
    ({"hidden_dropout_prob": 1.0}, "hidden_dropout_prob must be a probability in [0, 1), got 1.0"),
    ({"hidden_dropout_prob": -0.1}, "hidden_dropout_prob must be a probability in [0, 1), got -0.1"),
    ({"attention_probs_dropout_prob": 1.5}, "attention_probs_dropout_prob must be a probability in [0, 1), got 1.5"),
]


@pytest.mark.parametrize(("change", "message"), BAD_CONFIG_VALUES,
                         ids=[m.split()[0] + str(c) for c, m in BAD_CONFIG_VALUES])
def test_config_values_are_checked_not_truncated(tmp_path, capsys, work, change, message):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({**TINY, **change}), encoding="utf-8")
    with pytest.raises(InputError) as info:
        BertConfig.from_json_file(path)
    assert str(info.value) == f"{path}: {message}"
    # The same line from a script, before it writes anything.
    assert_one_line_error(capsys, "extract_features", [
        "--init_checkpoint", work / "ckpt.pt", "--config_file", path, "--vocab_file", work / "vocab.txt",
        "--input_file", path, "--output_file", tmp_path / "out" / "features.jsonl"], f"{path}: {message}")
    assert not (tmp_path / "out").exists()


def test_whole_number_floats_and_edge_probabilities_are_accepted(tmp_path):
    config = BertConfig.from_dict({**TINY, "hidden_size": 32.0, "hidden_dropout_prob": 0.0,
                                   "attention_probs_dropout_prob": 0.999})
    assert config.hidden_size == 32 and isinstance(config.hidden_size, int)


# --------------------------------------------------------------------------------------------
# Inputs that are not UTF-8: one line naming the file and line
# --------------------------------------------------------------------------------------------

LATIN1 = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tcaf\xe9 au lait\tcoffee\n".encode("latin-1")


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def glue_folder(folder: Path, dev: bytes | str | None = None) -> Path:
    """An MRPC folder of real rows (8 train, 8 dev, 8 test); `dev` replaces dev.tsv."""
    src = shared_path("glue", "MRPC")
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        write(folder / name, "".join((src / name).read_text(encoding="utf-8").splitlines(keepends=True)[:9]))
    if dev is not None:
        write(folder / "dev.tsv", dev)
    return folder


SWAG_HEADER = "video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label\n"
SWAG_ROW = "v1,7,The man sits. He,The man sits.,He,gold,stands up.,runs.,eats.,sleeps.,0\n"


def non_utf8_cases(w: Path, t: Path) -> list[tuple[str, list, str]]:
    bad_tsv = glue_folder(t / "glue_bad", dev=LATIN1)
    bad_text = write(t / "sentences.txt", b"fine line\nna\xefve line\n")
    bad_config = write(t / "config.json",
                       json.dumps({**TINY, "hidden_act": "g\xe9lu"}, ensure_ascii=False).encode("latin-1"))
    bad_squad = write(t / "squad.json", b'{"data": [{"title": "caf\xe9"}]}')
    bad_swag = write(t / "swag" / "val.csv", (SWAG_HEADER + SWAG_ROW.replace("runs", "r\xfcns")).encode("latin-1"))
    return [
        ("run_glue", ["--task_name", "mrpc", "--data_dir", bad_tsv, "--init_checkpoint", w / "ckpt.pt",
                      "--vocab_file", w / "vocab.txt", "--output_dir", t / "out", "--do_eval"],
         f"{bad_tsv / 'dev.tsv'}:2: not UTF-8 text (byte 0xe9 at offset 49)"),
        ("run_swag",
         ["--data_dir", bad_swag.parent, "--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt",
                      "--output_dir", t / "out", "--do_eval"],
         f"{bad_swag}:2: not UTF-8 text (byte 0xfc"),
        ("extract_features", ["--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt",
                              "--input_file", bad_text, "--output_file", t / "out" / "f.jsonl", "--layers", "-1"],
         f"{bad_text}:2: not UTF-8 text (byte 0xef at offset 12)"),
        ("extract_features", ["--init_checkpoint", w / "ckpt.pt", "--config_file", bad_config,
                              "--input_file", bad_text, "--output_file", t / "out" / "f.jsonl"],
         f"{bad_config}:1: not UTF-8 text (byte 0xe9 at offset 164)"),
        ("run_squad", ["--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt", "--output_dir", t / "out",
                       "--do_predict", "--predict_file", bad_squad, "--json-summary", t / "log" / "dll.json"],
         f"{bad_squad}:1: not UTF-8 text (byte 0xe9 at offset 24)"),
    ]


@pytest.mark.parametrize("index", range(5), ids=["glue-tsv", "swag-csv", "text", "config", "squad-json"])
def test_non_utf8_inputs_are_one_line_naming_the_file(tmp_path, capsys, work, index):
    name, argv, message = non_utf8_cases(work, tmp_path)[index]
    assert_one_line_error(capsys, name, argv, message)
    assert not [p for p in files_under(tmp_path / "out") if p.name != "dllogger.json"]


# --------------------------------------------------------------------------------------------
# Batch sizes, sequence lengths, output paths, empty data
# --------------------------------------------------------------------------------------------


def glue_argv(w: Path, data: Path, out: Path, *extra) -> list:
    return ["--task_name", "mrpc", "--data_dir", data, "--init_checkpoint", w / "ckpt.pt", "--vocab_file",
            w / "vocab.txt", "--output_dir", out, *extra]


def bad_setting_cases(w: Path, t: Path) -> list[tuple[str, list, str]]:
    glue = glue_folder(t / "glue")
    empty_dev = glue_folder(t / "glue_empty", dev="")
    header_only = glue_folder(t / "glue_header", dev="Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
    sst = write(t / "sst" / "dev.tsv", "sentence\tlabel\nfine film\t1\n").parent
    swag_header_only = write(t / "swag" / "val.csv", SWAG_HEADER).parent
    a_file = write(t / "a_file", "x")
    out = t / "out"
    squad = ["--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt", "--do_predict",
             "--predict_file", w / "dev.json"]
    features = ["--init_checkpoint", w / "ckpt.pt", "--vocab_file", w / "vocab.txt", "--input_file", w / "vocab.txt",
                "--layers", "-1"]
    return [
        # batch size 0
        ("run_glue", glue_argv(w, glue, out, "--do_train", "--train_batch_size", 0),
         "--train_batch_size must be at least 1, got 0"),
        ("run_glue", glue_argv(w, glue, out, "--do_eval", "--eval_batch_size", 0),
         "--eval_batch_size must be at least 1, got 0"),
        ("run_squad", [*squad, "--output_dir", out, "--predict_batch_size", 0],
         "--predict_batch_size must be at least 1, got 0"),
        ("extract_features", [*features, "--output_file", out / "f.jsonl", "--batch_size", 0],
         "--batch_size must be at least 1, got 0"),
        ("triton/run_squad_client", ["--predict_file", w / "dev.json", "--output_dir", out, "--vocab_file",
                                     w / "vocab.txt", "--batch_size", 0], "--batch_size must be at least 1, got 0"),
        # max_seq_length above the position limit, or below what the task needs
        ("run_glue", glue_argv(w, glue, out, "--do_eval", "--max_seq_length", 513),
         "--max_seq_length 513 exceeds the model's max_position_embeddings 512"),
        ("run_squad", [*squad, "--output_dir", out, "--max_seq_length", 1000],
         "--max_seq_length 1000 exceeds the model's max_position_embeddings 512"),
        ("inference", ["--init_checkpoint", w / "qa", "--vocab_file", w / "vocab.txt", "--max_seq_length", 600],
         "--max_seq_length 600 exceeds the model's max_position_embeddings 512"),
        ("extract_features", [*features, "--output_file", out / "f.jsonl", "--max_seq_length", 513],
         "--max_seq_length 513 exceeds the model's max_position_embeddings 512"),
        ("run_glue", glue_argv(w, glue, out, "--do_eval", "--max_seq_length", 4),
         "--max_seq_length 4 is too short: [CLS] a [SEP] b [SEP] needs at least 5"),
        ("run_glue", ["--task_name", "sst-2", "--data_dir", sst, "--init_checkpoint", w / "ckpt.pt",
                      "--output_dir", out, "--do_eval", "--max_seq_length", 2],
         "--max_seq_length 2 is too short: [CLS] text [SEP] needs at least 3"),
        ("run_swag", ["--data_dir", swag_header_only, "--init_checkpoint", w / "ckpt.pt", "--output_dir", out,
                      "--do_eval", "--max_seq_length", 3], "--max_seq_length 3 is too short"),
        ("run_squad", [*squad, "--output_dir", out, "--max_seq_length", 4], "--max_seq_length must be at least 5"),
        # output paths that are files, folders or under a file
        ("run_glue", glue_argv(w, glue, a_file, "--do_eval"), f"--output_dir {a_file}: not a folder"),
        ("run_glue", glue_argv(w, glue, a_file / "out", "--do_eval"),
         f"--output_dir {a_file / 'out'}: {a_file} is not a folder"),
        ("run_squad", [*squad, "--output_dir", "/proc/bert_out"], "--output_dir /proc/bert_out: cannot write in /proc"),
        ("run_squad", [*squad, "--output_dir", out, "--json-summary", t], f"--json-summary {t}: is a folder"),
        ("extract_features", [*features, "--output_file", t], f"--output_file {t}: is a folder, expected a file name"),
        ("extract_features", [*features, "--output_file", a_file / "f.jsonl"],
         f"--output_file {a_file / 'f.jsonl'}: {a_file} is not a folder"),
        ("triton/run_squad_client", ["--predict_file", w / "dev.json", "--output_dir", a_file, "--vocab_file",
                                     w / "vocab.txt"], f"--output_dir {a_file}: not a folder"),
        # empty or header-only dev files: found before training, not after it
        ("run_glue", glue_argv(w, empty_dev, out, "--do_train", "--do_eval"),
         f"{empty_dev / 'dev.tsv'}: no examples (the file is empty or has only its header)"),
        ("run_glue", glue_argv(w, header_only, out, "--do_train", "--do_eval"),
         f"{header_only / 'dev.tsv'}: no examples (the file is empty or has only its header)"),
        ("run_swag", ["--data_dir", swag_header_only, "--init_checkpoint", w / "ckpt.pt", "--output_dir", out,
                      "--do_train", "--do_eval"], f"{swag_header_only / 'val.csv'}: no examples"),
    ]


BAD_SETTING_IDS = [
    "glue-train-batch-0", "glue-eval-batch-0", "squad-predict-batch-0", "features-batch-0", "squad-client-batch-0",
    "glue-seq-above-positions", "squad-seq-above-positions", "inference-seq-above-positions",
    "features-seq-above-positions", "glue-pair-seq-too-short", "glue-single-seq-too-short", "swag-seq-too-short",
    "squad-seq-too-short", "output-dir-is-a-file", "output-dir-under-a-file", "output-dir-unwritable",
    "json-summary-is-a-folder", "output-file-is-a-folder", "output-file-under-a-file", "client-output-dir-is-a-file",
    "glue-empty-dev", "glue-header-only-dev", "swag-header-only-val",
]


@pytest.mark.parametrize("index", range(len(BAD_SETTING_IDS)), ids=BAD_SETTING_IDS)
def test_bad_settings_are_one_line_before_any_output(tmp_path, capsys, work, index):
    cases = bad_setting_cases(work, tmp_path)
    assert len(cases) == len(BAD_SETTING_IDS)
    name, argv, message = cases[index]
    assert_one_line_error(capsys, name, argv, message)
    # Nothing but the run's log: no model, predictions, features or cache.
    assert not [p for p in files_under(tmp_path / "out") if p.name != "dllogger.json"]
    assert not list(tmp_path.rglob(".tmp-*")) and not list(tmp_path.rglob("*.npz"))


def test_duplicate_squad_id_in_the_predict_file_is_found_before_training(tmp_path, capsys, work):
    """One question would silently lose its answer; with --do_train it must fail before the training run."""
    data = json.loads((work / "dev.json").read_text(encoding="utf-8"))
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas[2]["id"] = qas[0]["id"]
    dev = write(tmp_path / "dev.json", json.dumps(data))
    assert_one_line_error(capsys, "run_squad", [
        "--init_checkpoint", work / "ckpt.pt", "--vocab_file", work / "vocab.txt", "--output_dir", tmp_path / "out",
        "--do_train", "--train_file", work / "dev.json", "--do_predict", "--predict_file", dev],
        f"{dev}: data[0].paragraphs[0].qas[2]: question id {qas[0]['id']!r} appears twice")
    assert not (tmp_path / "out").exists()
