"""The shared fine-tuning loop: update planning, accumulation equivalence, precisions, losses,
saving/loading/converting the output, and the ONNX backend of inference.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path
from torch.utils.data import TensorDataset

import finetuning as ft
import inference
import run_glue
import run_squad
from checkpoint_io import CheckpointError, load_checkpoint, resolve_vocab_file
from input_checks import InputError
from modeling import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_config(vocab_size: int = 99, **overrides) -> BertConfig:
    values = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    values.update(overrides)
    return BertConfig(**values)


def glue_context(out_dir: Path, *extra: str) -> ft.RunContext:
    """A RunContext from run_glue's real argument parser (data paths are never read by `train`)."""
    args = run_glue.parse_args(["--task_name", "mrpc", "--data_dir", str(out_dir), "--init_checkpoint", "unused",
                                "--output_dir", str(out_dir), "--do_train", "--disable_progress_bar", *extra])
    return ft.start_run(args)


def separable_dataset(n: int = 20, seq: int = 12, seed: int = 0) -> TensorDataset:
    """Label 1 iff token 7 occurs: learnable by a tiny model in a few steps."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 99, (n, seq), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids[labels == 1, 3] = 7
    mask = torch.ones(n, seq, dtype=torch.int8)
    mask[::3, -2:] = 0
    segments = torch.zeros(n, seq, dtype=torch.int8)
    return TensorDataset(ids.to(torch.int32), mask, segments, labels)


def trained_weights(out_dir: Path, argv: list[str], clip: float | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(), 2)
    ctx = glue_context(out_dir, *argv)
    ft.train(ctx, model, separable_dataset(), ft.batch_classification_loss, clip_grad_norm=clip)
    ctx.logger.close()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Update planning
# --------------------------------------------------------------------------------------------


def test_plan_counts_the_partial_last_group_of_an_epoch():
    plan = ft.plan_updates(micro_batches_per_epoch=5, accumulation=2, epochs=2, max_steps=-1)
    assert (plan.updates_per_epoch, plan.total_steps, plan.epochs) == (3, 6, 2)
    assert [plan.group_size(i) for i in range(5)] == [2, 2, 2, 2, 1]
    assert [plan.ends_update(i) for i in range(5)] == [False, True, False, True, True]


def test_plan_honours_max_steps_and_fractional_epochs():
    assert ft.plan_updates(5, 2, 2, max_steps=4).total_steps == 4
    half = ft.plan_updates(10, 1, 0.5, max_steps=-1)
    assert (half.total_steps, half.epochs) == (5, 1)
    with pytest.raises(InputError, match="no training data"):
        ft.plan_updates(0, 1, 1.0, -1)


def test_batch_arguments_are_checked():
    ctx_args = run_glue.parse_args(["--task_name", "mrpc", "--data_dir", ".", "--init_checkpoint", "x",
                                    "--output_dir", ".", "--do_train", "--train_batch_size", "6",
                                    "--gradient_accumulation_steps", "4"])
    with pytest.raises(InputError, match="multiple of --gradient_accumulation_steps"):
        ft.validate_batch_arguments(ctx_args)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer,clip", [("adamw", None), ("adamw", 1.0), ("bertadam", None)])
def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path, optimizer, clip):
    """20 samples, batch 8: accumulation 2×4 (with a partial last group) gives the weights of 8×1."""
    common = ["--train_batch_size", "8", "--num_train_epochs", "2", "--learning_rate", "1e-3",
              "--optimizer", optimizer, "--warmup_proportion", "0.2"]
    whole = trained_weights(tmp_path / "whole", [*common, "--gradient_accumulation_steps", "1"], clip)
    split = trained_weights(tmp_path / "split", [*common, "--gradient_accumulation_steps", "2"], clip)
    torch.manual_seed(0)
    initial = BertForSequenceClassification(tiny_config(), 2).state_dict()
    assert not torch.equal(whole["classifier.weight"], initial["classifier.weight"])
    for key, value in whole.items():
        torch.testing.assert_close(split[key], value, atol=2e-6, rtol=1e-5, msg=key)


def test_trimming_padding_changes_neither_training_nor_predictions(tmp_path):
    data = separable_dataset(n=24, seq=16)
    data.tensors[1][:, 10:] = 0  # every row has at most 10 real tokens
    assert [t.shape[-1] for t in ft.trim_padding(list(data.tensors))] == [10, 10, 10, 24]
    results = []
    for trim in (False, True):
        torch.manual_seed(0)
        model = BertForSequenceClassification(tiny_config(), 2)
        ctx = glue_context(tmp_path / str(trim), "--train_batch_size", "8", "--num_train_epochs", "2",
                           "--learning_rate", "1e-3")
        ft.train(ctx, model, data, ft.batch_classification_loss, trim=trim)
        logits = ft.predict(ctx, model, data, ft.batch_scores, batch_size=8, trim=trim).outputs[0]
        ctx.logger.close()
        results.append((model.state_dict(), logits))
    np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-5)
    for key, value in results[0][0].items():
        torch.testing.assert_close(results[1][0][key], value, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_inference_copy_gives_the_autocast_outputs_and_leaves_the_model_alone(precision):
    from precision import autocast_context

    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_config()).eval()
    cast = ft.inference_copy(model, precision)
    assert cast.qa_outputs.weight.dtype != torch.float32 and model.qa_outputs.weight.dtype == torch.float32
    ids = torch.randint(4, 99, (2, 16))
    with torch.inference_mode(), autocast_context(precision, torch.device("cpu")):
        expected = model(ids, torch.zeros_like(ids), torch.ones_like(ids))
        got = cast(ids, torch.zeros_like(ids), torch.ones_like(ids))
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    assert ft.inference_copy(model, "fp32") is model


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_lowers_the_loss_in_every_precision(tmp_path, precision):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(), 2)
    data = separable_dataset(n=48)
    ctx = glue_context(tmp_path, "--train_batch_size", "16", "--num_train_epochs", "12", "--learning_rate", "3e-3",
                       "--precision", precision, "--log_freq", "3")
    before = evaluate_loss(ctx, model, data)
    result = ft.train(ctx, model, data, ft.batch_classification_loss)
    after = evaluate_loss(ctx, model, data)
    ctx.logger.close()
    assert result.global_step == 36
    assert after < 0.5 * before, (before, after)
    assert result.losses[-1] < result.losses[0]


def evaluate_loss(ctx: ft.RunContext, model, data: TensorDataset) -> float:
    logits = ft.predict(ctx, model, data, ft.batch_scores, batch_size=16).outputs[0]
    return float(F.cross_entropy(torch.from_numpy(logits), data.tensors[3]))


@pytest.mark.parametrize("optimizer,expected", [("adamw", [0.5, 1.0, 0.5, 0.0]), ("bertadam", [0.0, 0.5, 1.0, 0.5])])
def test_logged_learning_rate_is_the_one_each_update_used(optimizer, expected):
    """Warm-up over half of 4 updates: AdamW + LinearWarmUp starts at p = 1/4; BertAdam's own schedule at 0."""
    model = torch.nn.Linear(4, 2)
    args = run_glue.parse_args(["--task_name", "mrpc", "--data_dir", ".", "--init_checkpoint", "x", "--output_dir",
                                ".", "--do_train", "--learning_rate", "1.0", "--warmup_proportion", "0.5",
                                "--optimizer", optimizer])
    optimizer_, scheduler = ft.build_optimizer_and_scheduler(model, args, total_steps=4)
    stepper = ft.Stepper(model, optimizer_, scheduler, "fp32", torch.device("cpu"))
    used = []
    for _ in range(4):
        stepper.accumulate([torch.randn(3, 4)], lambda m, b: m(b[0]).sum())
        stepper.update()
        used.append(ft.current_lr(optimizer_, scheduler))
    assert used == pytest.approx(expected)


def test_training_logs_dllogger_records(tmp_path):
    from run_log import read_dllogger

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(), 2)
    ctx = glue_context(tmp_path, "--train_batch_size", "4", "--num_train_epochs", "1", "--log_freq", "2")
    result = ft.train(ctx, model, separable_dataset(), ft.batch_classification_loss)
    ft.log_train_summary(ctx, result)
    ctx.logger.close()
    records = read_dllogger(tmp_path / "dllogger.json")
    steps = [r["step"] for r in records if r["type"] == "LOG" and "average_loss" in r.get("data", {})]
    assert steps == [[0, 2], [0, 4], [0, 5]]
    summary = [r["data"] for r in records if r["type"] == "LOG" and r["step"] == []][-1]
    assert summary["training_sequences_per_second"] > 0 and summary["final_loss"] == pytest.approx(result.final_loss)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def test_qa_loss_is_mean_of_start_and_end_cross_entropy_ignoring_outside_positions():
    g = torch.Generator().manual_seed(1)
    start, end = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g)
    start_pos, end_pos = torch.tensor([0, 4, 9]), torch.tensor([2, 25, 9])  # 25 → clamped to 10 → ignored
    expected_start = F.cross_entropy(start, start_pos)
    expected_end = F.cross_entropy(end[[0, 2]], end_pos[[0, 2]])
    loss = run_squad.qa_loss(start, end, start_pos, end_pos)
    torch.testing.assert_close(loss, (expected_start + expected_end) / 2)


def test_masked_qa_loss_ignores_padding_so_cutting_it_changes_nothing():
    g = torch.Generator().manual_seed(2)
    start, end = torch.randn(2, 12, generator=g), torch.randn(2, 12, generator=g)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, 7:] = 0
    mask[1, 9:] = 0
    positions = (torch.tensor([3, 0]), torch.tensor([5, 8]))
    padded = run_squad.qa_loss(start, end, *positions, mask)
    cut = run_squad.qa_loss(start[:, :9], end[:, :9], *positions, mask[:, :9])
    torch.testing.assert_close(cut, padded)
    expected_start = -(start[0, 3] - start[0, :7].logsumexp(0) + start[1, 0] - start[1, :9].logsumexp(0)) / 2
    expected_end = -(end[0, 5] - end[0, :7].logsumexp(0) + end[1, 8] - end[1, :9].logsumexp(0)) / 2
    torch.testing.assert_close(padded, (expected_start + expected_end) / 2)
    assert not torch.isclose(run_squad.qa_loss(start, end, *positions), padded)  # the original's softmax differs


def test_squad_training_and_prediction_are_unchanged_by_cutting_padding(tmp_path):
    g = torch.Generator().manual_seed(4)
    n, seq = 12, 24
    ids = torch.randint(10, 99, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.int8)
    for row in range(n):
        mask[row, 10 + row % 7:] = 0
    starts = torch.randint(1, 8, (n,), generator=g)
    data = TensorDataset(ids, mask, torch.zeros(n, seq, dtype=torch.int8), starts, starts + 1)
    runs = []
    for trim in (False, True):
        torch.manual_seed(0)
        model = BertForQuestionAnswering(tiny_config())
        ctx = glue_context(tmp_path / str(trim), "--train_batch_size", "4", "--num_train_epochs", "2",
                           "--learning_rate", "1e-3")
        ft.train(ctx, model, data, run_squad.squad_train_loss, skip_pooler=True, clip_grad_norm=1.0, trim=trim)
        inputs = TensorDataset(*data.tensors[:3])
        out = ft.predict(ctx, model, inputs, run_squad.squad_forward, batch_size=4, trim=trim, per_position=True)
        ctx.logger.close()
        runs.append((model.state_dict(), out.outputs))
    real = mask.bool().numpy()
    for full, cut in zip(runs[0][1], runs[1][1], strict=True):
        assert full.shape == cut.shape == (n, seq)
        np.testing.assert_allclose(cut[real], full[real], atol=1e-4)
        assert np.isneginf(cut[:, 16:]).all()  # every batch is cut to at most 16 positions
    for key, value in runs[0][0].items():
        if key == "qa_outputs.bias":
            continue  # a softmax is shift-invariant: its gradient is 0 up to rounding, which AdamW amplifies
        torch.testing.assert_close(runs[1][0][key], value, atol=1e-5, rtol=1e-4, msg=key)


def test_classification_loss_is_cross_entropy_or_mse():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    torch.testing.assert_close(ft.classification_loss(logits, torch.tensor([0, 1])),
                               F.cross_entropy(logits, torch.tensor([0, 1])))
    scores = torch.tensor([[1.0], [3.0]])
    assert float(ft.classification_loss(scores, torch.tensor([2.0, 3.0]))) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# Output: save, reload, convert
# --------------------------------------------------------------------------------------------


def test_saved_output_reloads_strictly_and_converts_to_hugging_face(tmp_path):
    transformers = pytest.importorskip("transformers")
    import convert_checkpoint

    torch.manual_seed(0)
    config = tiny_config()
    model = BertForQuestionAnswering(config)
    vocab = tmp_path / "vocab.src.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(95)]) + "\n")
    ctx = glue_context(tmp_path / "out")
    ft.save_model(ctx, model, config, vocab)
    ctx.logger.close()
    out = tmp_path / "out"
    saved = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert set(saved) == {"model"}
    assert json.loads((out / "bert_config.json").read_text())["hidden_size"] == 32
    assert (out / "vocab.txt").read_text() == vocab.read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]

    reloaded = BertForQuestionAnswering(BertConfig.from_json_file(out / "bert_config.json"))
    load_checkpoint(reloaded, out, strict=True)
    ids = torch.randint(4, 99, (2, 16))
    segments = torch.zeros_like(ids)
    mask = torch.ones_like(ids)
    ours = [t.detach() for t in model.eval()(ids, segments, mask)]
    torch.testing.assert_close(list(reloaded.eval()(ids, segments, mask)), ours)

    convert_checkpoint.main(["--to_hf", str(out), str(tmp_path / "hf")])
    hf = transformers.BertForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        hf_out = hf(input_ids=ids, token_type_ids=segments, attention_mask=mask)
    torch.testing.assert_close(hf_out.start_logits, ours[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hf_out.end_logits, ours[1], atol=1e-5, rtol=1e-4)


def test_loading_a_checkpoint_of_another_shape_names_the_file(tmp_path):
    ckpt = tmp_path / "hidden32.pt"
    torch.save({"model": BertForQuestionAnswering(tiny_config()).state_dict()}, ckpt)
    (tmp_path / "wide.json").write_text(json.dumps(tiny_config(hidden_size=48, num_attention_heads=4).to_dict()))
    args = run_squad.parse_args(["--init_checkpoint", str(ckpt), "--config_file", str(tmp_path / "wide.json"),
                                 "--output_dir", str(tmp_path / "o"), "--do_predict", "--predict_file", "x.json",
                                 "--max_seq_length", "32", "--json-summary", str(tmp_path / "dllogger.json")])
    ctx = ft.start_run(args)
    with pytest.raises(CheckpointError) as err:
        ft.load_model(ctx, BertForQuestionAnswering)
    ctx.logger.close()
    message = str(err.value)
    assert str(ckpt) in message and "\n" not in message and "shapes do not fit" in message


def test_vocab_file_falls_back_to_the_checkpoint_folder(tmp_path):
    (tmp_path / "vocab.txt").write_text("[UNK]\n")
    assert resolve_vocab_file(None, tmp_path / "pytorch_model.bin") == tmp_path / "vocab.txt"
    with pytest.raises(InputError, match="vocab file not found"):
        resolve_vocab_file(str(tmp_path / "missing.txt"), tmp_path)
    with pytest.raises(InputError, match="no --vocab_file"):
        resolve_vocab_file(None, tmp_path / "elsewhere" / "ckpt.pt")


# --------------------------------------------------------------------------------------------
# inference.py backends
# --------------------------------------------------------------------------------------------


def export_qa_onnx(model: BertForQuestionAnswering, path: Path, seq: int) -> None:
    ids = torch.ones(1, seq, dtype=torch.long)
    torch.onnx.export(
        model.eval(), (ids, torch.zeros_like(ids), torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
        input_names=list(inference.ONNX_INPUTS), output_names=list(inference.ONNX_OUTPUTS),
        dynamic_axes={name: {0: "batch"} for name in (*inference.ONNX_INPUTS, *inference.ONNX_OUTPUTS)},
    )


def test_onnx_backend_gives_the_pytorch_logits_and_answer(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    torch.manual_seed(3)
    config = tiny_config(vocab_size=30522, max_position_embeddings=128)
    model = BertForQuestionAnswering(config)
    folder = tmp_path / "qa"
    folder.mkdir()
    torch.save({"model": model.state_dict()}, folder / "pytorch_model.bin")
    config.to_json_file(folder / "bert_config.json")
    export_qa_onnx(model, folder / "model.onnx", seq=64)

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (3, 64))
    segments = np.zeros_like(ids)
    mask = np.ones_like(ids)
    mask[1, 40:] = 0
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_start, onnx_end = inference.onnx_qa_logits(session, ids, segments, mask)
    torch_start, torch_end = inference.pytorch_qa_logits(model.eval(), ids, segments, mask, "fp32", torch.device("cpu"))
    np.testing.assert_allclose(onnx_start, torch_start, atol=1e-4)
    np.testing.assert_allclose(onnx_end, torch_end, atol=1e-4)

    # A context longer than one window goes through several windows in both backends alike.
    common = ["--vocab_file", str(vocab), "--do_lower_case", "--max_seq_length", "64", "--doc_stride", "24",
              "--n_best_size", "3", "--question", "Where is the bell tower?"]
    outputs = []
    for backend in (["--init_checkpoint", str(folder)],
                    ["--backend", "onnx", "--onnx_model", str(folder / "model.onnx")]):
        inference.main([*common, *backend])
        outputs.append(capsys.readouterr().out)
    heads = [out[:out.index("[")] for out in outputs]
    nbests = [json.loads(out[out.index("["):]) for out in outputs]
    assert heads[0] == heads[1]  # question, context and the answer itself
    assert [e["text"] for e in nbests[0]] == [e["text"] for e in nbests[1]]
    for ours, theirs in zip(*nbests, strict=True):
        assert ours["start_logit"] == pytest.approx(theirs["start_logit"], abs=1e-4)
    assert 1 <= len(nbests[0]) <= 3 and sum(e["probability"] for e in nbests[0]) == pytest.approx(1.0)
    assert heads[0].split("\n")[3] == nbests[0][0]["text"]


def test_verbose_logging_prints_the_first_features(tmp_path, capsys):
    """--verbose_logging does something in every fine-tuning script: the first features, cut at the real tokens."""
    from tokenization import FullTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world"]) + "\n")
    ids = torch.tensor([[2, 4, 5, 3, 0, 0], [2, 5, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    data = TensorDataset(ids, mask, torch.zeros_like(ids), torch.tensor([1, 0]))
    names = ("input_ids", "input_mask", "segment_ids", "label_ids")
    quiet = glue_context(tmp_path)
    ft.show_features(quiet, data, names, FullTokenizer(str(vocab)))
    assert "Example" not in capsys.readouterr().out
    ctx = glue_context(tmp_path, "--verbose_logging")
    ft.show_features(ctx, data, names, FullTokenizer(str(vocab)), count=1)
    out = capsys.readouterr().out
    assert "tokens: [CLS] hello world [SEP]\n" in out and "input_ids: 2 4 5 3\n" in out and "label_ids: 1" in out
    assert "Example 1" not in out


def test_compatibility_flags_are_grouped_and_say_they_have_no_effect():
    import io
    from contextlib import redirect_stdout

    buffer = io.StringIO()
    with redirect_stdout(buffer), pytest.raises(SystemExit):
        run_glue.parse_args(["--help"])
    help_text = buffer.getvalue()
    group = help_text.split("accepted for compatibility with the original (no effect):")[1].split("\n\n")[0]
    for flag in ("--bert_model", "--local_rank", "--use_env", "--server_ip", "--server_port"):
        assert flag in group, flag
