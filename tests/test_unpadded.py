"""The unpadded (packed) path: real tokens only from the embeddings on, attention per sequence.

On CUDA with bf16/fp16 attention runs FlashAttention's variable-length kernel; elsewhere a per-sequence
SDPA stand-in runs the same plumbing, which is checked here against the padded model. The CUDA call
itself (shapes, autograd wiring) is checked on meta tensors.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import ROOT, script_env
from pretrain_helpers import TINY_MODEL, write_config

from batch_packing import UnpadChoice, choose_unpad, masked_positions_from_labels, pack_batch
from bert_kernels import (
    FlashVarlenAttention,
    PackedSequences,
    block_diagonal_attention,
    flash_varlen_problem,
    varlen_attention,
)
from data.synthetic_shards import write_synthetic_shard
from input_checks import InputError
from modeling import BertConfig, BertForPreTraining, BertPretrainingCriterion
from run_log import read_dllogger

LENGTHS = (32, 25, 12, 32, 9, 20)


def padded_batch(seq: int = 32, max_pred: int = 6, seed: int = 3, row_lengths: tuple[int, ...] = LENGTHS):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(row_lengths)
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, (len(row_lengths), seq), generator=g) * mask
    types = (torch.arange(seq)[None] >= (lengths[:, None] // 2)).long() * mask
    labels = torch.full((len(row_lengths), seq), -1)
    for row, length in enumerate(row_lengths):
        picked = torch.randperm(length - 2, generator=g)[: min(4, length - 2)] + 1
        labels[row, picked] = ids[row, picked]
    positions, labels = masked_positions_from_labels(labels, max_pred)
    return ids, types, mask, positions, labels, torch.randint(0, 2, (len(row_lengths),), generator=g)


def test_pack_batch_layout():
    ids, types, mask, positions, _, _ = padded_batch()
    packed = pack_batch(ids, types, mask, positions, bucket=64)
    seqs: PackedSequences = packed["packed"]
    assert not seqs.flash
    real = sum(LENGTHS)
    total = packed["input_ids"].numel()
    assert total % 32 == 0 and total > real and total - real <= 32, "bucket 64 is capped at the length 32"
    assert seqs.cu_seqlens.dtype == torch.int32
    assert seqs.cu_seqlens.tolist() == [0, 32, 57, 69, 101, 110, 130, total]
    assert seqs.max_seqlen == 32
    for row, length in enumerate(LENGTHS):
        start = seqs.cu_seqlens[row]
        assert torch.equal(packed["input_ids"][start : start + length], ids[row, :length])
        assert torch.equal(packed["segment_ids"][start : start + length], types[row, :length])
        assert seqs.position_ids[start : start + length].tolist() == list(range(length))
        assert seqs.first_token[row] == start
    assert (packed["input_ids"][real:] == 0).all() and (seqs.position_ids[real:] == 0).all()
    assert total - real <= seqs.max_seqlen, "the filler segment fits FlashAttention's max_seqlen"
    mlm = packed["masked_positions"]
    starts, ends = seqs.cu_seqlens[:-2, None], seqs.cu_seqlens[1:-1, None]
    assert ((mlm >= starts) & (mlm < ends)).all(), "every prediction slot stays inside its own sequence"


def test_packed_attention_equals_masked_padded_attention():
    torch.manual_seed(0)
    heads, dim = 2, 8
    ids, types, mask, positions, _, _ = padded_batch()
    seqs = pack_batch(ids, types, mask, positions, bucket=64)["packed"]
    q, k, v = (torch.randn(len(LENGTHS), heads, 32, dim) for _ in range(3))
    padded = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, None, :])
    flat = mask.reshape(-1).nonzero().squeeze(1)

    def pack(t):
        real = t.transpose(1, 2).reshape(-1, heads, dim)[flat]
        filler = torch.randn(int(seqs.cu_seqlens[-1]) - len(flat), heads, dim)
        return torch.cat([real, filler])

    out = varlen_attention(pack(q), pack(k), pack(v), seqs, dropout_p=0.0)
    torch.testing.assert_close(out[: len(flat)], padded.transpose(1, 2).reshape(-1, heads, dim)[flat])


def _model_pair():
    config = BertConfig.from_dict({**TINY_MODEL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    model.bert.encoder.unpad = False  # the padded reference (not the CPU PackedTokens path)
    return config, model


def _loss_and_grads(model, criterion, scores, nsp_scores, labels, nsp):
    model.zero_grad(set_to_none=True)
    loss, _, _ = criterion(scores, nsp_scores, labels, nsp)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_model_equals_padded_model_outputs_and_gradients():
    config, model = _model_pair()
    criterion = BertPretrainingCriterion(config.padded_vocab_size)
    ids, types, mask, positions, labels, nsp = padded_batch()
    padded_scores, padded_nsp = model(ids, types, mask, positions)
    padded_loss, padded_grads = _loss_and_grads(model, criterion, padded_scores, padded_nsp, labels, nsp)

    packed = pack_batch(ids, types, mask, positions, bucket=64)
    scores, nsp_scores = model(packed["input_ids"], packed["segment_ids"], None, packed["masked_positions"],
                               packed=packed["packed"])
    loss, grads = _loss_and_grads(model, criterion, scores, nsp_scores, labels, nsp)

    used = labels != -1  # filler slots differ (they read another position) and are ignored by the loss
    torch.testing.assert_close(scores[used], padded_scores[used], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nsp_scores, padded_nsp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, padded_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_flash_varlen_call_shapes_and_autograd_on_meta_tensors():
    """The aten FlashAttention op as the CUDA path calls it, on meta tensors (no GPU needed): output
    and gradients come back as [T, heads, d] in the input dtype, and backward reaches q, k and v."""
    if not hasattr(torch.ops.aten, "_flash_attention_forward"):
        pytest.skip("this torch has no aten flash attention op")
    total, heads, dim = 320, 4, 16
    q, k, v = (torch.empty(total, heads, dim, device="meta", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    cu_seqlens = torch.empty(len(LENGTHS) + 2, device="meta", dtype=torch.int32)
    out = FlashVarlenAttention.apply(q, k, v, cu_seqlens, 128, 0.1, dim**-0.5)
    assert out.shape == (total, heads, dim) and out.dtype == torch.bfloat16
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and t.grad.shape == t.shape and t.grad.dtype == torch.bfloat16


def test_block_diagonal_attention_keeps_sequences_apart_and_keeps_dropout():
    torch.manual_seed(0)
    q, k, v = (torch.randn(40, 2, 8) for _ in range(3))
    cu = torch.tensor([0, 30, 33, 40], dtype=torch.int32)
    plain = block_diagonal_attention(q, k, v, cu, 0.0, 8**-0.5)
    for start, end in ((0, 30), (30, 33), (33, 40)):
        alone = torch.nn.functional.scaled_dot_product_attention(
            *(t[start:end].transpose(0, 1) for t in (q, k, v)), scale=8**-0.5).transpose(0, 1)
        torch.testing.assert_close(plain[start:end], alone)
    dropped = block_diagonal_attention(q, k, v, cu, 0.5, 8**-0.5)
    assert not torch.allclose(plain, dropped)


def _pretrain(tmp_path, name: str, extra: list[str]) -> dict[int, float]:
    """Step losses of a 3-step tiny run_pretraining.py on the CPU (dropout off) with these extra flags."""
    data = tmp_path / "data"
    if not data.is_dir():
        data.mkdir()
        write_synthetic_shard(data / "synthetic_training_0.hdf5", rows=64, seq_len=64, max_pred=10,
                              profile="wikitext_512")
        write_config(tmp_path / "tiny.json", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    out = tmp_path / name
    cmd = [sys.executable, str(ROOT / "run_pretraining.py"), "--do_train", "--disable_progress_bar",
           f"--input_dir={data}", f"--config_file={tmp_path / 'tiny.json'}", f"--output_dir={out}",
           f"--json-summary={out / 'dllogger.json'}", "--train_batch_size=8", "--gradient_accumulation_steps=2",
           "--max_steps=3", "--learning_rate=1e-3", "--max_seq_length=64", "--max_predictions_per_seq=10",
           "--precision=fp32", "--skip_checkpoint", "--log_freq=1", "--device=cpu", *extra]
    env = {**script_env(), "OMP_NUM_THREADS": "1", "BERT_COMPILE_BACKEND": "eager"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return {r["step"][1]: r["data"]["step_loss"] for r in read_dllogger(out / "dllogger.json")
            if isinstance(r.get("step"), list) and len(r["step"]) == 2 and "step_loss" in r["data"]}


def test_run_pretraining_packed_and_compiled_equals_padded(tmp_path):
    """The whole Trainer path (host packing, DeviceBatches, the compiled model-and-loss region) against
    padded batches: same losses step by step (dropout off, fp32, so the two layouts compute the same)."""
    padded = _pretrain(tmp_path, "padded", ["--unpad=off", "--compile=off"])
    packed = _pretrain(tmp_path, "packed", ["--unpad=reference", "--compile=on", "--pack_bucket=32"])
    assert sorted(padded) == sorted(packed) == [1, 2, 3]
    for step, loss in padded.items():
        assert packed[step] == pytest.approx(loss, rel=1e-5), step


# --------------------------------------------------------------------------------------------
# --unpad: a clear choice instead of a silent slow path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, precision, head_dim, reason", [
    ("cpu", "bf16", 64, "device cpu: the kernel runs on CUDA only"),
    ("cuda", "fp32", 64, "precision fp32: the kernel computes in fp16/bf16 only"),
    ("cuda", "tf32", 64, "precision tf32"),
    ("cuda", "bf16", 36, "head dim 36 (hidden_size / num_attention_heads) must be a multiple of 8 and at most 256"),
    ("cuda", "fp16", 264, "head dim 264"),
])
def test_flash_varlen_problem_names_what_rules_the_kernel_out(device, precision, head_dim, reason):
    assert reason in flash_varlen_problem(torch.device(device), precision, head_dim)


def test_unpad_on_where_flash_cannot_run_is_a_one_line_input_error():
    problem = flash_varlen_problem(torch.device("cuda"), "fp32", 64)
    with pytest.raises(InputError) as caught:
        choose_unpad("on", True, problem)
    message = str(caught.value)
    assert "\n" not in message
    assert message == f"--unpad on: FlashAttention's varlen kernel cannot run here: {problem} (use --unpad auto or off)"


def test_unpad_choices_and_their_reasons():
    assert choose_unpad("on", True, None) == UnpadChoice(
        True, True, "packed batches with FlashAttention's varlen kernel")
    assert choose_unpad("auto", True, None).flash
    auto = choose_unpad("auto", True, "head dim 36 (hidden_size / num_attention_heads) must be ...")
    assert not auto.packed and not auto.flash and "head dim 36" in auto.reason
    assert choose_unpad("reference", True, "device cpu").packed and not choose_unpad("reference", True, None).flash
    assert choose_unpad("off", True, None) == UnpadChoice(False, False, "padded batches (--unpad off)")
    assert not choose_unpad("auto", False, None).packed
    for unpad in ("on", "reference"):
        with pytest.raises(InputError, match="needs the masked-only MLM head"):
            choose_unpad(unpad, False, None)


def test_flash_path_checks_the_head_dim_before_the_raw_kernel():
    """A packed batch marked for FlashAttention with a head dim the kernel was not built for fails with
    a message, before the aten op is reached (here on the CPU, where the op would not run at all)."""
    cu = torch.tensor([0, 5, 8], dtype=torch.int32)
    seqs = PackedSequences(cu, 8, torch.zeros(8, dtype=torch.long), cu[:1].long(), flash=True)
    q = torch.randn(8, 2, 12)
    with pytest.raises(ValueError, match="head dim 12 .* must be a multiple of 8"):
        varlen_attention(q, q, q, seqs, 0.0)


def _trainer_args(tmp_path, unpad: str, config_overrides: dict | None = None) -> list[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    write_synthetic_shard(data / "synthetic_training_0.hdf5", rows=16, seq_len=64, max_pred=10, profile="wikitext_512")
    config = write_config(tmp_path / "tiny.json", **(config_overrides or {}))
    return [f"--input_dir={data}", f"--config_file={config}", f"--output_dir={tmp_path / 'out'}", "--do_train",
            "--train_batch_size=8", "--max_seq_length=64", "--max_predictions_per_seq=10", "--precision=fp32",
            "--skip_checkpoint", "--device=cpu", f"--unpad={unpad}", "--compile=off"]


def test_run_pretraining_unpad_on_without_flash_fails_in_one_line(tmp_path):
    cmd = [sys.executable, str(ROOT / "run_pretraining.py"), *_trainer_args(tmp_path, "on"),
           f"--json-summary={tmp_path / 'dllogger.json'}"]
    proc = subprocess.run(cmd, env={**script_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: --unpad on: FlashAttention's varlen kernel cannot run here: precision fp32: the kernel computes in "
        "fp16/bf16 only (use --unpad auto or off)"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unpad_auto_says_once_which_path_it_took_and_why(tmp_path, capsys):
    import distributed
    import run_log
    import run_pretraining

    args = run_pretraining.parse_args(_trainer_args(tmp_path, "auto", {"hidden_size": 72, "intermediate_size": 144}))
    env = distributed.DistEnv(device=torch.device("cpu"))
    run_pretraining.validate_args(args, env)
    trainer = run_pretraining.Trainer(args, env, run_log.Logger(None, enabled=False))
    trainer.stream.close()
    printed = [line for line in capsys.readouterr().out.splitlines() if "--unpad" in line]
    assert printed == ["--unpad auto: padded batches: FlashAttention's varlen kernel cannot run here (precision fp32: "
                       "the kernel computes in fp16/bf16 only)"]
    assert not trainer.packed
