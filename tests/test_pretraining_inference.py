"""Pretraining evaluation: run_pretraining_inference.py and evaluation during run_pretraining.py, on real text.

One 60-step training run (evaluating every 5 steps on the two test shards) serves most tests: its
checkpoints are evaluated by the command, compared with a plain per-example loop, with 2 ranks, after
a resume, and a second run with a target accuracy must stop at the first evaluation that reaches it.
"""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, script_env
from pretrain_helpers import copy_rows, make_shard, shard_rows, wikitext_documents, write_config

import distributed
import evaluation
import run_pretraining_inference as rpi
from checkpoint_io import load_checkpoint
from data.pretraining_dataset import PretrainingShardDataset
from input_checks import InputError
from modeling import BertConfig, BertForPreTraining
from run_log import read_dllogger

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEQ, MAX_PRED, BATCH, STEPS, EVAL_EVERY_STEPS, SEED = 64, 10, 32, 60, 5, 7
EVAL_KEYS = ("eval_mlm_accuracy", "eval_mlm_loss", "eval_nsp_accuracy", "eval_nsp_loss", "eval_perplexity",
             "eval_sequences", "eval_masked_tokens")


def single_thread_env() -> dict[str, str]:
    # One thread per process: the machine is shared, and equal thread counts keep CPU kernels bitwise comparable.
    return {**script_env(), "OMP_NUM_THREADS": "1"}


def run_script(cmd: list[str], expect_rc: int = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env or single_thread_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect_rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """In-process evaluations use one thread too, so their numbers compare bitwise with the subprocesses'."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """WikiText-2 shards (seq 64, 10 predictions): two training shards and two test shards of 40 and 27 rows."""
    base = tmp_path_factory.mktemp("pretrain_eval_data")
    text = base / "wiki.txt"
    text.write_text(wikitext_documents(40), encoding="utf-8")
    src = make_shard(base / "all.hdf5", text, SEQ, MAX_PRED, dupe=2)
    n = shard_rows(src)
    data = base / "data"
    data.mkdir()
    copy_rows(src, data / "wiki_training_0.hdf5", 0, (n - 67) // 2)
    copy_rows(src, data / "wiki_training_1.hdf5", (n - 67) // 2, n - 67)
    copy_rows(src, data / "wiki_test_0.hdf5", n - 67, n - 27)
    copy_rows(src, data / "wiki_test_1.hdf5", n - 27, n)
    return {"data": data, "config": write_config(base / "tiny.json"),
            "test_shards": [data / "wiki_test_0.hdf5", data / "wiki_test_1.hdf5"]}


def pretrain_args(corpus, out: Path, **overrides) -> list[str]:
    values = {
        "input_dir": corpus["data"], "config_file": corpus["config"], "output_dir": out / "ckpt",
        "json-summary": out / "dllogger.json", "train_batch_size": BATCH, "learning_rate": 3e-2, "max_steps": STEPS,
        "warmup_proportion": 0.1, "max_seq_length": SEQ, "max_predictions_per_seq": MAX_PRED, "seed": SEED,
        "num_steps_per_checkpoint": 20, "log_freq": 5, "precision": "fp32", "eval_dir": corpus["data"],
        "eval_every_samples": EVAL_EVERY_STEPS * BATCH, "eval_samples": 67, "eval_batch_size": 16,
    }
    values.update(overrides)
    return [sys.executable, str(ROOT / "run_pretraining.py"), "--do_train", "--disable_progress_bar",
            *(f"--{k}={v}" for k, v in values.items())]


def eval_records(json_path: Path) -> dict[int, dict]:
    """Evaluation records by optimizer step."""
    return {r["step"][1]: r["data"] for r in read_dllogger(json_path)
            if isinstance(r.get("step"), list) and len(r["step"]) == 2 and "eval_mlm_accuracy" in r["data"]}


def summary_record(json_path: Path) -> dict:
    return [r["data"] for r in read_dllogger(json_path) if r.get("step") == []][-1]


def pick(record: dict) -> dict:
    return {k: record[k] for k in EVAL_KEYS}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """60 steps at lr 3e-2, batch 32, evaluating every 5 steps on the first 67 test rows; checkpoints every 20."""
    out = tmp_path_factory.mktemp("trained")
    run_script(pretrain_args(corpus, out))
    return out


def cli_args(checkpoint: Path, corpus, json_path: Path, *extra: str) -> list[str]:
    return [f"--init_checkpoint={checkpoint}", f"--eval_dir={corpus['data']}", "--eval_batch_size=16",
            f"--json-summary={json_path}", "--disable_progress_bar", *extra]


@pytest.fixture(scope="module")
def trained_eval(trained, corpus, tmp_path_factory) -> dict:
    """The command on the final checkpoint, one process; the config comes from the checkpoint itself."""
    out = tmp_path_factory.mktemp("trained_eval") / "eval.json"
    proc = run_script([sys.executable, str(ROOT / "run_pretraining_inference.py"),
                       *cli_args(trained / "ckpt" / f"ckpt_{STEPS}.pt", corpus, out)])
    assert proc.stdout.strip().splitlines()[-1].startswith("evaluated 67 sequences")
    return summary_record(out)


# --------------------------------------------------------------------------------------------
# 1. Numbers equal a plain per-example loop; training beats the untrained start
# --------------------------------------------------------------------------------------------


def reference_metrics(model: BertForPreTraining, shards: list[Path]) -> dict[str, float]:
    """Per example, logits at every position, float64 sums: what the evaluation must report."""
    model.eval()
    mlm_loss = nsp_loss = 0.0
    mlm_correct = nsp_correct = masked = sequences = 0
    with torch.no_grad():
        for path in shards:
            dataset = PretrainingShardDataset(path, MAX_PRED)
            for i in range(len(dataset)):
                input_ids, segment_ids, input_mask, labels, nsp_label = dataset[i]
                scores, nsp_scores = model(input_ids[None], segment_ids[None], input_mask[None])
                log_probs = F.log_softmax(scores[0].double(), dim=-1)
                for pos in (labels != -1).nonzero().flatten().tolist():
                    mlm_loss -= log_probs[pos, labels[pos]].item()
                    mlm_correct += int(scores[0, pos].argmax() == labels[pos])
                    masked += 1
                nsp_loss -= F.log_softmax(nsp_scores[0].double(), dim=-1)[nsp_label].item()
                nsp_correct += int(nsp_scores[0].argmax() == nsp_label)
                sequences += 1
    return {"eval_mlm_accuracy": mlm_correct / masked, "eval_mlm_loss": mlm_loss / masked,
            "eval_nsp_accuracy": nsp_correct / sequences, "eval_nsp_loss": nsp_loss / sequences,
            "eval_sequences": sequences, "eval_masked_tokens": masked}


def assert_matches_reference(reported: dict, reference: dict) -> None:
    for key in ("eval_sequences", "eval_masked_tokens", "eval_mlm_accuracy", "eval_nsp_accuracy"):
        assert reported[key] == reference[key], key
    for key in ("eval_mlm_loss", "eval_nsp_loss"):
        assert reported[key] == pytest.approx(reference[key], rel=1e-5), key
    assert reported["eval_perplexity"] == pytest.approx(math.exp(reference["eval_mlm_loss"]), rel=1e-5)


def untrained_model(corpus) -> BertForPreTraining:
    """The weights run_pretraining.py starts from with this seed (it seeds, then builds the model)."""
    distributed.seed_everything(SEED)
    return BertForPreTraining(BertConfig.from_json_file(corpus["config"]))


@pytest.mark.slow
def test_metrics_equal_per_example_reference(trained, trained_eval, corpus, tmp_path):
    config = BertConfig.from_json_file(corpus["config"])
    trained_model = BertForPreTraining(config)
    load_checkpoint(trained_model, trained / "ckpt" / f"ckpt_{STEPS}.pt")
    assert_matches_reference(trained_eval, reference_metrics(trained_model, corpus["test_shards"]))

    start = untrained_model(corpus)
    torch.save({"model": start.state_dict()}, tmp_path / "untrained.pt")
    untrained = rpi.main(cli_args(tmp_path / "untrained.pt", corpus, tmp_path / "u.json",
                                  f"--config_file={corpus['config']}", "--eval_batch_size=7")).metrics()
    assert_matches_reference(untrained, reference_metrics(start, corpus["test_shards"]))

    chance = 1 / config.vocab_size
    assert untrained["eval_mlm_accuracy"] < 0.01
    assert trained_eval["eval_mlm_accuracy"] > max(50 * chance, untrained["eval_mlm_accuracy"] + 0.03)
    assert trained_eval["eval_mlm_loss"] < untrained["eval_mlm_loss"] - 2.0
    assert summary_record(tmp_path / "u.json")["inference_sequences_per_second"] > 0


@pytest.mark.slow  # needs the 60-step training run
def test_bf16_close_to_fp32(trained, corpus, tmp_path):
    ckpt = trained / "ckpt" / f"ckpt_{STEPS}.pt"
    fp32 = rpi.main(cli_args(ckpt, corpus, tmp_path / "a.json"))
    bf16 = rpi.main(cli_args(ckpt, corpus, tmp_path / "b.json", "--precision=bf16"))
    assert bf16.masked_tokens == fp32.masked_tokens and bf16.sequences == fp32.sequences
    assert bf16.mlm_loss == pytest.approx(fp32.mlm_loss, rel=2e-2)
    assert bf16.nsp_loss == pytest.approx(fp32.nsp_loss, rel=2e-2)
    assert bf16.mlm_loss != fp32.mlm_loss, "bf16 autocast must actually be applied"


@pytest.mark.slow  # needs the 60-step training run
def test_max_samples_and_max_steps_bound_the_set(trained, corpus, tmp_path):
    ckpt = trained / "ckpt" / f"ckpt_{STEPS}.pt"
    first50 = rpi.main(cli_args(ckpt, corpus, tmp_path / "a.json", "--max_samples=50"))
    # The first 50 rows of the sorted test shards: all 40 of shard 0 and the first 10 of shard 1.
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(corpus["test_shards"][0], cut / "wiki_test_0.hdf5")
    copy_rows(corpus["test_shards"][1], cut / "wiki_test_1.hdf5", 0, 10)
    whole = rpi.main(cli_args(ckpt, {"data": cut}, tmp_path / "b.json"))
    assert first50.sequences == 50 and pick(first50.metrics()) == pick(whole.metrics())
    three_steps = rpi.main(cli_args(ckpt, corpus, tmp_path / "c.json", "--max_steps=3"))
    assert three_steps.sequences == 40  # 16 + 16 + 8: batches never straddle shards


def test_batch_plan_is_a_fixed_partition():
    shards = [evaluation.ShardInfo("a", 40, SEQ, MAX_PRED), evaluation.ShardInfo("b", 27, SEQ, MAX_PRED)]
    plan = evaluation.plan_batches(shards, 16)
    assert [(s.shard, s.start, s.stop) for s in plan] == [(0, 0, 16), (0, 16, 32), (0, 32, 40), (1, 0, 16), (1, 16, 27)]
    assert [s.index for s in plan] == list(range(5))
    assert [(s.shard, s.stop) for s in evaluation.plan_batches(shards, 16, max_samples=45)][-2:] == [(0, 40), (1, 5)]
    for world in (1, 2, 3, 7):
        parts = [evaluation.batches_for_rank(plan, r, world) for r in range(world)]
        assert [s for part in parts for s in part] == plan  # contiguous, in order, each batch once
    assert [len(evaluation.batches_for_rank(plan, r, 2, max_steps=1)) for r in range(2)] == [1, 1]


def test_evaluation_restores_train_mode(corpus):
    model = untrained_model(corpus).train()
    shards = evaluation.find_eval_shards(corpus["data"])
    plan = evaluation.plan_batches(shards, 16, max_samples=20)
    result = evaluation.evaluate(model, evaluation.iter_batches(shards, plan), len(plan), distributed.DistEnv(), "fp32")
    assert model.training and result.sequences == 20
    model.eval()
    evaluation.evaluate(model, evaluation.iter_batches(shards, plan), len(plan), distributed.DistEnv(), "fp32")
    assert not model.training


def test_evaluation_cadence_survives_resume_and_ends_with_the_last_step():
    # Resumed at 250 samples with an evaluation every 100: next at 300, then 400; always at the final step 10.
    ev = evaluation.PeriodicEvaluator([], 0, every_samples=100, samples_seen=250, final_step=10)
    assert not ev.should_evaluate(299, 5) and ev.should_evaluate(300, 6)
    ev.mark_evaluated(320)
    assert not ev.should_evaluate(320, 6) and not ev.should_evaluate(399, 7)
    assert ev.should_evaluate(400, 8) and ev.should_evaluate(352, 10)
    only_last = evaluation.PeriodicEvaluator([], 0, every_samples=0, samples_seen=0, final_step=10)
    assert not only_last.should_evaluate(10**9, 9) and only_last.should_evaluate(10**9, 10)
    only_last.mark_evaluated(320)
    assert not only_last.should_evaluate(320, 10)


# --------------------------------------------------------------------------------------------
# 2. Two ranks report exactly the one-process numbers (through the shell wrapper)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_equal_one_process(trained, trained_eval, corpus, tmp_path):
    results = tmp_path / "results"
    env = {**single_thread_env(), "PYTHON": sys.executable}
    ckpt = trained / "ckpt" / f"ckpt_{STEPS}.pt"
    run_script(["bash", str(ROOT / "scripts" / "run_pretraining_inference.sh"), str(ckpt), str(corpus["data"]), "16",
                "fp32", "2", str(corpus["config"]), "-1", str(results), "test", "--disable_progress_bar"], env=env)
    two = summary_record(results / "dllogger_inference.json")
    assert pick(two) == pick(trained_eval)  # exact, not approximately
    assert list(results.glob("pyt_bert_pretraining_inference_fp32_bs16_gpu2.*.log"))
    params = [r["data"] for r in read_dllogger(results / "dllogger_inference.json") if r.get("step") == "PARAMETER"]
    assert params[0]["world_size"] == 2


# --------------------------------------------------------------------------------------------
# 3. Evaluation during pretraining: target accuracy stops the run; resume keeps the eval set
# --------------------------------------------------------------------------------------------


@pytest.mark.slow  # needs the 60-step training run
def test_periodic_evaluation_is_logged_and_plotted(trained):
    evals = eval_records(trained / "dllogger.json")
    assert sorted(evals) == list(range(EVAL_EVERY_STEPS, STEPS + 1, EVAL_EVERY_STEPS))
    assert all(r["eval_sequences"] == 67 for r in evals.values())
    assert evals[STEPS]["eval_mlm_loss"] < evals[EVAL_EVERY_STEPS]["eval_mlm_loss"]
    assert (trained / "dllogger_loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # needs the 60-step training run
def test_final_checkpoint_scores_what_training_logged(trained, trained_eval):
    """The command and the in-training evaluation are one implementation on one fixed set."""
    assert pick(trained_eval) == pick(eval_records(trained / "dllogger.json")[STEPS])


@pytest.mark.slow
def test_target_accuracy_stops_at_first_evaluation_reaching_it(trained, corpus, tmp_path):
    evals = eval_records(trained / "dllogger.json")
    steps = sorted(evals)
    accuracy = [evals[s]["eval_mlm_accuracy"] for s in steps]
    # The first evaluation better than every earlier one: the target run must stop exactly there.
    first_gain = next((i for i in range(1, len(steps)) if accuracy[i] > max(accuracy[:i])), None)
    assert first_gain is not None, f"MLM accuracy never improved during training: {accuracy}"
    stop_step, target = steps[first_gain], accuracy[first_gain]

    proc = run_script(pretrain_args(corpus, tmp_path, target_mlm_accuracy=target))
    assert "target MLM accuracy" in proc.stdout
    records = read_dllogger(tmp_path / "dllogger.json")
    reached = [r for r in records if "samples_to_target" in r.get("data", {})]
    assert len(reached) == 1 and reached[0]["step"][1] == stop_step
    assert reached[0]["data"]["samples_to_target"] == stop_step * BATCH
    assert 0 < reached[0]["data"]["seconds_to_target"] < summary_record(tmp_path / "dllogger.json")["e2e_train_time"]
    trained_at = [r["step"][1] for r in records if isinstance(r.get("step"), list) and r["step"]
                  and "average_loss" in r["data"]]
    assert max(trained_at) == stop_step
    assert sorted(eval_records(tmp_path / "dllogger.json")) == steps[: first_gain + 1]
    assert (tmp_path / "ckpt" / f"ckpt_{stop_step}.pt").is_file()
    assert not (tmp_path / "ckpt" / f"ckpt_{STEPS}.pt").exists()


@pytest.mark.slow
def test_resumed_run_evaluates_the_same_set(trained, corpus, tmp_path):
    (tmp_path / "ckpt").mkdir()
    shutil.copy(trained / "ckpt" / "ckpt_40.pt", tmp_path / "ckpt" / "ckpt_40.pt")
    run_script(pretrain_args(corpus, tmp_path) + ["--resume_from_checkpoint"])
    first, resumed = eval_records(trained / "dllogger.json"), eval_records(tmp_path / "dllogger.json")
    assert sorted(resumed) == [45, 50, 55, 60]
    for step, record in resumed.items():
        assert pick(record) == pick(first[step]), step
    # The same weights score the same on the command's view of that set.
    at40 = rpi.main(cli_args(trained / "ckpt" / "ckpt_40.pt", corpus, tmp_path / "e.json", "--max_samples=67"))
    assert pick(at40.metrics()) == pick(first[40])


# --------------------------------------------------------------------------------------------
# 5. Bad input: one clear line each
# --------------------------------------------------------------------------------------------


def one_line_error(cmd: list[str]) -> str:
    proc = run_script(cmd, expect_rc=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_bad_inputs_give_one_line(trained, corpus, tmp_path):
    ckpt = trained / "ckpt" / f"ckpt_{STEPS}.pt"
    command = [sys.executable, str(ROOT / "run_pretraining_inference.py")]
    narrow = write_config(tmp_path / "narrow.json", hidden_size=32, intermediate_size=64)
    line = one_line_error(command + cli_args(ckpt, corpus, tmp_path / "x.json", f"--config_file={narrow}"))
    assert str(ckpt) in line and "do not fit" in line

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "wiki_training_0.hdf5").write_bytes(b"")  # training shards are not evaluated by default
    line = one_line_error(command + [f"--init_checkpoint={ckpt}", f"--eval_dir={empty}"])
    assert str(empty) in line and "no .hdf5 shards" in line

    short = write_config(tmp_path / "short.json", max_position_embeddings=32)
    line = one_line_error(command + cli_args(ckpt, corpus, tmp_path / "x.json", f"--config_file={short}"))
    assert "wiki_test_0.hdf5" in line and "sequence length 64" in line and "max_position_embeddings 32" in line

    line = one_line_error(pretrain_args(corpus, tmp_path / "run", eval_dir=empty, max_steps=2))
    assert "no .hdf5 shards" in line


@pytest.mark.slow  # needs the 60-step training run
def test_bad_inputs_in_process(trained, corpus, tmp_path):
    """The same checks from Python: InputError (a one-line message), never another exception."""
    ckpt = trained / "ckpt" / f"ckpt_{STEPS}.pt"
    with pytest.raises(InputError, match="not found"):
        rpi.main(cli_args(tmp_path / "missing.pt", corpus, tmp_path / "x.json"))
    with pytest.raises(InputError, match="max_samples"):
        rpi.main(cli_args(ckpt, corpus, tmp_path / "x.json", "--max_samples=0"))
    headless = tmp_path / "headless.pt"
    sd = torch.load(ckpt, weights_only=True)["model"]
    torch.save({k: v for k, v in sd.items() if not k.startswith("cls.")}, headless)
    with pytest.raises(InputError, match="missing keys") as err:
        rpi.main(cli_args(headless, corpus, tmp_path / "x.json", f"--config_file={corpus['config']}"))
    assert "\n" not in str(err.value)


def test_shell_script_lint_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    script = ROOT / "scripts" / "run_pretraining_inference.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    proc = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.slow  # needs the 60-step training run
def test_dynamic_masking_evaluation_is_fixed_by_its_seed(trained, trained_eval, corpus, tmp_path):
    """--dynamic_masking --seed N: the same masks whatever the batch size; another seed, other masks; the
    number of masked tokens is the shards' own (the same rule drew them)."""
    ckpt = trained / "ckpt" / f"ckpt_{STEPS}.pt"
    a = rpi.main(cli_args(ckpt, corpus, tmp_path / "a.json", "--dynamic_masking", "--seed=3"))
    b = rpi.main(cli_args(ckpt, corpus, tmp_path / "b.json", "--dynamic_masking", "--seed=3", "--eval_batch_size=5"))
    c = rpi.main(cli_args(ckpt, corpus, tmp_path / "c.json", "--dynamic_masking", "--seed=4"))
    assert (a.masked_tokens, a.mlm_correct, a.nsp_correct) == (b.masked_tokens, b.mlm_correct, b.nsp_correct)
    assert a.mlm_loss == pytest.approx(b.mlm_loss, rel=1e-6)
    assert a.masked_tokens == c.masked_tokens == trained_eval["eval_masked_tokens"]
    assert a.mlm_loss != c.mlm_loss and a.mlm_loss != trained_eval["eval_mlm_loss"]
    with pytest.raises(InputError, match="--whole_word_masking needs --dynamic_masking"):
        rpi.main(cli_args(ckpt, corpus, tmp_path / "x.json", "--whole_word_masking"))
