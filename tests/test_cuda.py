"""The training path on a CUDA device, in under a minute: LAMB (fused and foreach) against the float64
reference, fp16 loss scaling with LAMB skipping an overflowed step, the CUDA fp32 model against the
CPU model, and a 4-step `run_pretraining.py` with accumulation, fp16, a checkpoint and a resume.

Skipped without CUDA. `BERT_TEST_DEVICE=cpu` runs the same checks on the CPU (benchmarks/gpu.sh's
dry run does, so the checks themselves are exercised on machines without a GPU).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, script_env
from pretrain_helpers import TINY_MODEL, write_config
from test_optimization import gradient_steps, initial_weights, make_groups, make_params, reference_lamb, set_grads
from torch import nn

import distributed
from data.synthetic_shards import write_synthetic_shard
from modeling import BertConfig, BertForPreTraining, BertPretrainingCriterion, masked_positions_from_labels
from optimization import Lamb
from precision import apply_tf32, autocast_context
from run_log import read_dllogger

DEVICE = torch.device(os.environ.get("BERT_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def ieee_fp32():
    """fp32 means IEEE fp32 here (TF32 would put CUDA ~1e-3 away from the CPU)."""
    apply_tf32("fp32")


def to_device(params: dict[str, nn.Parameter]) -> dict[str, nn.Parameter]:
    return {n: nn.Parameter(p.detach().to(DEVICE)) for n, p in params.items()}


@pytest.mark.parametrize("fused", [None, True, False], ids=["auto", "fused", "foreach"])
def test_lamb_matches_float64_reference(fused):
    steps = gradient_steps(4, 10.0)
    params = to_device(make_params(torch.float32))
    opt = Lamb(make_groups(params, 0.01), lr=0.05, fused=fused)
    assert opt._use_fused(opt.param_groups[0], list(params.values())) is (fused is not False)
    for grads in steps:
        set_grads(params, {n: None if g is None else g.to(DEVICE) for n, g in grads.items()})
        opt.step()
    ref_w, ref_m, _, _ = reference_lamb(initial_weights(), steps, 0.05, 0.01, False)
    for name, param in params.items():
        torch.testing.assert_close(param.detach().cpu().double(), ref_w[name], rtol=1e-5, atol=1e-6)
        if name in ref_m and param in opt.state:
            torch.testing.assert_close(opt.state[param]["exp_avg"].cpu().double(), ref_m[name], rtol=1e-5, atol=1e-7)


def _scaled_backward(model: nn.Module, scaler: torch.amp.GradScaler, x: torch.Tensor) -> None:
    with torch.autocast(DEVICE.type, dtype=torch.float16):
        loss = model(x).float().square().mean()
    scaler.scale(loss).backward()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_fp16_grad_scaler_skips_the_overflowed_step_and_then_applies_the_next(fused):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).to(DEVICE)
    reference = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).to(DEVICE)
    reference.load_state_dict(model.state_dict())
    opt = Lamb([{"params": list(model.parameters()), "weight_decay": 0.01}], lr=0.01, fused=fused)
    ref_opt = Lamb([{"params": list(reference.parameters()), "weight_decay": 0.01}], lr=0.01, fused=fused)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**12, growth_interval=1000)
    x = torch.randn(8, 16, device=DEVICE)
    before = [p.detach().clone() for p in model.parameters()]

    _scaled_backward(model, scaler, x)
    model[0].weight.grad[0, 0] = float("inf")  # an fp16 overflow in one gradient
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    assert scaler.get_scale() == 2.0**11
    assert opt.param_groups[0]["step"] == 0 and not opt.state
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)

    _scaled_backward(model, scaler, x)
    scaler.step(opt)
    scaler.update()
    assert opt.param_groups[0]["step"] == 1
    # the applied step equals LAMB on the unscaled fp32 gradients
    with torch.autocast(DEVICE.type, dtype=torch.float16):
        ref_loss = reference(x).float().square().mean()
    ref_loss.backward()
    ref_opt.step()
    for p, r, b in zip(model.parameters(), reference.parameters(), before, strict=True):
        assert not torch.equal(p.detach(), b)
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-5, atol=1e-6)


def _tiny_batch(config: BertConfig, batch: int = 6, seq: int = 32, max_pred: int = 5):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, config.vocab_size, (batch, seq), generator=g)
    lengths = torch.tensor([seq, seq - 7, 12, seq, 20, 9])[:batch]
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    types = (torch.arange(seq)[None] >= (lengths[:, None] // 2)).long() * mask
    labels = torch.full((batch, seq), -1)
    labels[:, 3] = ids[:, 3]
    labels[:, 5] = ids[:, 5]
    positions, labels = masked_positions_from_labels(labels, max_pred)
    return ids * mask, types, mask, positions, labels, torch.randint(0, 2, (batch,), generator=g)


def test_cuda_fp32_model_equals_cpu_model():
    """Training-mode forward and backward (dropout 0): the CUDA padded path against the CPU path."""
    config = BertConfig.from_dict({**TINY_MODEL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    torch.manual_seed(0)
    cpu_model = BertForPreTraining(config).train()
    dev_model = BertForPreTraining(config).to(DEVICE).train()
    dev_model.load_state_dict(cpu_model.state_dict())
    criterion = BertPretrainingCriterion(config.padded_vocab_size)
    batch = _tiny_batch(config)
    results = []
    for model, device in ((cpu_model, torch.device("cpu")), (dev_model, DEVICE)):
        ids, types, mask, positions, labels, nsp = (t.to(device) for t in batch)
        scores, nsp_scores = model(ids, types, mask, positions)
        loss, _, _ = criterion(scores, nsp_scores, labels, nsp)
        loss.backward()
        grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
        results.append((scores.detach().cpu(), nsp_scores.detach().cpu(), loss.detach().cpu(), grads))
    (cpu_scores, cpu_nsp, cpu_loss, cpu_grads), (dev_scores, dev_nsp, dev_loss, dev_grads) = results
    torch.testing.assert_close(dev_scores, cpu_scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dev_nsp, cpu_nsp, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dev_loss, cpu_loss, rtol=1e-5, atol=1e-5)
    assert dev_grads.keys() == cpu_grads.keys()
    for name, grad in cpu_grads.items():
        torch.testing.assert_close(dev_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def _pretrain(out: Path, data: Path, config: Path, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "run_pretraining.py"), "--do_train", "--disable_progress_bar",
           f"--input_dir={data}", f"--config_file={config}", f"--output_dir={out / 'ckpt'}",
           f"--json-summary={out / 'dllogger.json'}", "--train_batch_size=8", "--gradient_accumulation_steps=2",
           "--max_steps=4", "--learning_rate=5e-3", "--warmup_proportion=0.25", "--max_seq_length=64",
           "--max_predictions_per_seq=10", "--precision=fp16", "--init_loss_scale=1024", "--seed=3",
           "--num_steps_per_checkpoint=2", "--log_freq=1", f"--device={DEVICE.type}",
           "--compile=off", *extra]  # compiled rows are benchmarks/bench_gpu.py's (compiling costs ~30 s a run)
    proc = subprocess.run(cmd, env=script_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _step_losses(path: Path) -> dict[int, float]:
    return {r["step"][1]: r["data"]["step_loss"] for r in read_dllogger(path)
            if isinstance(r.get("step"), list) and len(r["step"]) == 2 and "step_loss" in r["data"]}


def test_run_pretraining_fp16_accumulation_checkpoint_and_resume(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_synthetic_shard(data / "synthetic_training_0.hdf5", rows=96, seq_len=64, max_pred=10, profile="wikitext_128")
    config = write_config(tmp_path / "tiny.json")
    _pretrain(tmp_path / "straight", data, config, [])
    _pretrain(tmp_path / "split", data, config, ["--steps_this_run=2"])
    _pretrain(tmp_path / "split", data, config, ["--resume_from_checkpoint"])

    ckpt = torch.load(tmp_path / "split" / "ckpt" / "ckpt_4.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["step"] == 4
    assert ckpt["scaler"]["scale"] > 0 and ckpt["data_position"][0]["offset"] == 4 * 8
    straight = _step_losses(tmp_path / "straight" / "dllogger.json")
    resumed = _step_losses(tmp_path / "split" / "dllogger.json")
    assert sorted(resumed) == [3, 4] and sorted(straight) == [1, 2, 3, 4]
    for step in (3, 4):  # the resumed run continues at the same data, weights, moments and loss scale
        assert resumed[step] == pytest.approx(straight[step], rel=2e-3)
    final = torch.load(tmp_path / "straight" / "ckpt" / "ckpt_4.pt", weights_only=True)
    for name, value in final["model"].items():
        torch.testing.assert_close(ckpt["model"][name], value, rtol=5e-3, atol=5e-4, msg=name)


def test_post_accumulation_allreduce_on_device_tensors(tmp_path):
    """One-rank process group (NCCL bound to the GPU, as distributed.py sets it up): the fp16 wire format keeps
    the mean of loss-scaled sums that exceed fp16's range."""
    import torch.distributed as dist

    from training import allreduce_post_accumulation

    options = distributed.process_group_options(DEVICE, rank=0, world_size=1)
    dist.init_process_group(init_method=f"file://{tmp_path / 'store'}", **options)
    try:
        grads = [torch.full((1000,), 2000.0 * 64, device=DEVICE), torch.full((3, 5), -1000.0 * 64, device=DEVICE)]
        allreduce_post_accumulation(grads, 64, fp16=True)
    finally:
        dist.destroy_process_group()
    assert all(g.device == grads[0].device for g in grads)
    torch.testing.assert_close(grads[0], torch.full((1000,), 2000.0, device=DEVICE))
    torch.testing.assert_close(grads[1], torch.full((3, 5), -1000.0, device=DEVICE))


def test_flash_varlen_attention_matches_the_reference_and_keeps_dropout():
    """FlashAttention's varlen kernel (bf16 on CUDA; the reference itself elsewhere) against the
    block-diagonal SDPA reference, forward and backward at dropout 0; with dropout 0.1 it differs, its
    gradients are finite and a replay with the same RNG state gives the same output."""
    from bert_kernels import PackedSequences, block_diagonal_attention, flash_varlen_available, varlen_attention

    flash = flash_varlen_available(DEVICE, "bf16")
    dtype = torch.bfloat16 if flash else torch.float32
    torch.manual_seed(0)
    cu = torch.tensor([0, 100, 101, 228, 300, 384], dtype=torch.int32, device=DEVICE)
    packed = PackedSequences(cu, 128, torch.zeros(384, dtype=torch.long, device=DEVICE),
                             cu[:-2].long(), flash)
    q, k, v = (torch.randn(384, 4, 64, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(3))
    out = varlen_attention(q, k, v, packed, 0.0)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    ref = block_diagonal_attention(*(t.float() for t in (q, k, v)), cu, 0.0, 64**-0.5)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if flash else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out.float(), ref, **tolerance)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.float(), want.float(), **tolerance)

    state = torch.cuda.get_rng_state(DEVICE) if DEVICE.type == "cuda" else torch.get_rng_state()
    dropped = varlen_attention(q, k, v, packed, 0.1)
    if DEVICE.type == "cuda":
        torch.cuda.set_rng_state(state, DEVICE)
    else:
        torch.set_rng_state(state)
    replayed = varlen_attention(q, k, v, packed, 0.1)
    assert not torch.allclose(dropped.float(), out.float(), atol=1e-3)
    torch.testing.assert_close(dropped, replayed)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(dropped.float().sum(), (q, k, v)))


def test_packed_cuda_model_matches_padded_model():
    """The packed model on the device (flash under bf16 autocast where it runs) against the padded one."""
    from bert_kernels import flash_varlen_available, pack_batch

    config = BertConfig.from_dict({**TINY_MODEL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    torch.manual_seed(0)
    model = BertForPreTraining(config).to(DEVICE).train()
    model.bert.encoder.unpad = False
    criterion = BertPretrainingCriterion(config.padded_vocab_size)
    ids, types, mask, positions, labels, nsp = _tiny_batch(config)
    flash = flash_varlen_available(DEVICE, "bf16")
    packed = pack_batch(ids, types, mask, positions, 64, flash=flash)
    precision = "bf16" if flash else "fp32"
    losses = []
    for inputs in ((ids, types, mask, positions, None), (packed["input_ids"], packed["segment_ids"], None,
                                                          packed["masked_positions"], packed["packed"])):
        moved = [t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in inputs[:4]]
        seqs = inputs[4].to(DEVICE) if inputs[4] is not None else None
        with autocast_context(precision, DEVICE):
            scores, nsp_scores = model(*moved, packed=seqs) if seqs is not None else model(*moved)
            losses.append(criterion(scores, nsp_scores, labels.to(DEVICE), nsp.to(DEVICE))[0].float())
    tolerance = 2e-2 if flash else 1e-5
    torch.testing.assert_close(losses[1], losses[0], rtol=tolerance, atol=tolerance)
