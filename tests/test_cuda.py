"""The training path on a CUDA device, each test a few seconds (benchmarks/gpu.sh runs them in groups,
correctness first):

- kernels: FlashAttention's varlen kernel with dropout against an fp32 reference that applies the
  kernel's own dropout mask (forward and the three input gradients, through the project's autograd
  function); BERT-large attention shapes (16 heads, head dim 64, T ≈ 16k, max_seqlen 512) against
  per-sequence SDPA; packed against padded gradients of a BERT-large-wide layer stack; the CUDA fp32
  model against the CPU model;
- optimizer: LAMB (fused and foreach) against the float64 reference, fp16 loss scaling skipping an
  overflowed step and recovering on a real BERT Trainer step, and a whole Trainer optimizer step
  (accumulation included) under the CUDA sync debug mode;
- compile: inductor against eager on packed batches of two token counts (one graph);
- pretraining: a 4-step `run_pretraining.py` with accumulation, fp16, a checkpoint and a resume, and
  the post-accumulation all-reduce in an NCCL group.

Skipped without CUDA. `BERT_TEST_DEVICE=cpu` runs the device-independent ones on the CPU.
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
from batch_packing import masked_positions_from_labels
from data.synthetic_shards import write_synthetic_shard
from modeling import BertConfig, BertForPreTraining, BertPretrainingCriterion
from optimization import Lamb
from precision import apply_tf32, autocast_context
from run_log import Logger, read_dllogger

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


def _tiny_batch(config: BertConfig, batch: int = 6, seq: int = 32, max_pred: int = 5,
                lengths: tuple[int, ...] | None = None):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, config.vocab_size, (batch, seq), generator=g)
    lengths = torch.tensor(lengths or [seq, seq - 7, 12, seq, 20, 9])[:batch]
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


def test_packed_cuda_model_matches_padded_model():
    """The packed model on the device (flash under bf16 autocast where it runs) against the padded one."""
    from batch_packing import pack_batch
    from bert_kernels import flash_varlen_available

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


# --------------------------------------------------------------------------------------------
# Kernels: tests that would catch a wrong FlashAttention call
# --------------------------------------------------------------------------------------------

needs_flash = pytest.mark.skipif(DEVICE.type != "cuda" or not torch.cuda.is_available()
                                 or not __import__("bert_kernels").flash_varlen_available(DEVICE, "bf16"),
                                 reason="needs FlashAttention's varlen kernel (CUDA sm80+)")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖ / ‖want‖ in fp32: one number for a whole tensor, robust to single rounding outliers
    of 16-bit kernels, and of order 1 when a kernel computes something else."""
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


def _attention_reference(q, k, v, cu, scale: float, keep_masks=None, dropout_p: float = 0.0):
    """Per-sequence softmax attention in fp32 on [T, heads, d] tensors; `keep_masks[b]` ([heads, L, L],
    True = kept) applies a given dropout mask with the 1/(1 − p) rescaling."""
    outs = []
    bounds = cu.tolist()
    for b, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
        qb, kb, vb = (t[start:end].float().transpose(0, 1) for t in (q, k, v))
        probs = torch.softmax(qb @ kb.transpose(-1, -2) * scale, dim=-1)
        if keep_masks is not None:
            probs = probs * keep_masks[b] / (1.0 - dropout_p)
        outs.append((probs @ vb).transpose(0, 1))
    return torch.cat(outs)


@needs_flash
def test_flash_varlen_dropout_matches_reference_with_the_kernels_own_mask():
    """The project's FlashVarlenAttention (forward, and the backward that regenerates the mask from the
    forward's Philox state) against an fp32 reference that applies the very mask the kernel drew: aten's
    op run again from the same RNG state with `return_debug_mask` returns it (the sign bit of each entry
    of the debug output marks a dropped probability). A backward that used another mask, or a forward
    that read another sequence's keys, is off by order 1."""
    from bert_kernels import FlashVarlenAttention

    torch.manual_seed(0)
    p, heads, dim = 0.1, 4, 64
    scale = dim**-0.5
    lengths = [100, 1, 127, 72, 84, 128]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    total, max_len = int(cu[-1]), max(lengths)
    q, k, v = (torch.randn(total, heads, dim, device=DEVICE, dtype=torch.float16, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(total, heads, dim, device=DEVICE, dtype=torch.float16)

    state = torch.cuda.get_rng_state(DEVICE)
    with torch.no_grad():
        raw_out, _, raw_seed, raw_offset, debug = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, p, False, True, scale=scale)
    torch.cuda.set_rng_state(state, DEVICE)
    out = FlashVarlenAttention.apply(q, k, v, cu, max_len, p, scale)
    assert torch.equal(out, raw_out), "the same RNG state must draw the same mask"
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    keep = [~torch.signbit(debug[b, :, :n, :n]) for b, n in enumerate(lengths)]
    dropped = 1.0 - sum(float(m.float().sum()) for m in keep) / sum(heads * n * n for n in lengths)
    assert 0.07 < dropped < 0.13, f"the debug mask drops {dropped:.3f} of the probabilities, not about {p}"
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = _attention_reference(*leaves, cu, scale, keep, p)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out.float())
    assert relative_error(out, ref) < 1e-2
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert relative_error(got, want) < 2e-2, name
    no_dropout = _attention_reference(*leaves, cu, scale)
    assert relative_error(out, no_dropout) > 0.05, "dropout 0.1 must change the output"


@needs_flash
def test_flash_varlen_bert_large_shapes_match_per_sequence_sdpa():
    """BERT-large phase-2 attention: 16 heads of 64, about 16k packed tokens of mixed lengths up to 512,
    the filler segment `pack_batch` adds, bf16; forward and input gradients against fp32 SDPA run on each
    sequence alone."""
    from bert_kernels import PackedSequences, round_up, varlen_attention

    torch.manual_seed(1)
    heads, dim, max_len = 16, 64, 512
    lengths = torch.randint(16, max_len + 1, (60,), generator=torch.Generator().manual_seed(1))
    lengths[:4] = torch.tensor([512, 1, 511, 17])
    real = int(lengths.sum())
    total = round_up(real + 1, max_len)
    cu = torch.tensor([0, *lengths.cumsum(0).tolist(), total], dtype=torch.int32, device=DEVICE)
    packed = PackedSequences(cu, max_len, torch.zeros(total, dtype=torch.long, device=DEVICE),
                             cu[:-2].long(), flash=True)
    q, k, v = (torch.randn(total, heads, dim, device=DEVICE, dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    grad_out = torch.randn(real, heads, dim, device=DEVICE, dtype=torch.bfloat16)
    out = varlen_attention(q, k, v, packed, 0.0)[:real]
    grads = [g[:real] for g in torch.autograd.grad(out, (q, k, v), grad_out)]

    leaves = [t.detach()[:real].float().requires_grad_() for t in (q, k, v)]
    ref_parts = []
    bounds = cu[:-1].tolist()
    for start, end in zip(bounds, bounds[1:], strict=False):
        alone = torch.nn.functional.scaled_dot_product_attention(
            *(t[start:end].transpose(0, 1) for t in leaves), scale=dim**-0.5)
        ref_parts.append(alone.transpose(0, 1))
    ref = torch.cat(ref_parts)
    ref_grads = torch.autograd.grad(ref, leaves, grad_out.float())
    assert 15_000 < total < 18_000
    assert relative_error(out, ref) < 2e-2
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert relative_error(got, want) < 3e-2, name


@needs_flash
def test_packed_layer_stack_gradients_match_padded():
    """Two BERT-large-wide layers (hidden 1024, 16 heads, intermediate 4096) with embeddings and heads,
    dropout 0, bf16 autocast: the packed path (host packing, FlashAttention varlen) against the padded
    path (SDPA with the padding mask), every parameter's gradient."""
    from batch_packing import pack_batch

    config = BertConfig.from_dict({**TINY_MODEL, "hidden_size": 1024, "num_attention_heads": 16,
                                   "intermediate_size": 4096, "num_hidden_layers": 2, "max_position_embeddings": 512,
                                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    torch.manual_seed(0)
    model = BertForPreTraining(config).to(DEVICE).train()
    model.bert.encoder.unpad = False
    criterion = BertPretrainingCriterion(config.padded_vocab_size)
    g = torch.Generator().manual_seed(5)
    batch, seq, max_pred = 8, 512, 80
    lengths = torch.tensor([512, 300, 77, 512, 450, 128, 9, 260])
    mask = (torch.arange(seq)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, config.vocab_size, (batch, seq), generator=g) * mask
    types = (torch.arange(seq)[None] >= (lengths[:, None] // 2)).long() * mask
    labels = torch.full((batch, seq), -1)
    for row, n in enumerate(lengths.tolist()):
        picked = torch.randperm(n - 2, generator=g)[: max(1, (n - 2) // 7)] + 1
        labels[row, picked] = ids[row, picked]
    positions, labels = masked_positions_from_labels(labels, max_pred)
    nsp = torch.randint(0, 2, (batch,), generator=g)
    packed = pack_batch(ids, types, mask, positions, 512, flash=True)

    results = []
    for inputs, seqs in (((ids, types, mask, positions), None),
                         ((packed["input_ids"], packed["segment_ids"], None, packed["masked_positions"]),
                          packed["packed"])):
        model.zero_grad(set_to_none=True)
        moved = [t.to(DEVICE) if t is not None else None for t in inputs]
        with autocast_context("bf16", DEVICE):
            if seqs is None:
                scores, nsp_scores = model(*moved)
            else:
                scores, nsp_scores = model(*moved, packed=seqs.to(DEVICE))
            loss = criterion(scores, nsp_scores, labels.to(DEVICE), nsp.to(DEVICE))[0].float()
        loss.backward()
        results.append((loss.detach(),
                        {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}))
    (padded_loss, padded_grads), (packed_loss, packed_grads) = results
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-2, atol=1e-2)
    assert packed_grads.keys() == padded_grads.keys()
    worst = max(((relative_error(packed_grads[n], g), n) for n, g in padded_grads.items()))
    assert worst[0] < 5e-2, worst


# --------------------------------------------------------------------------------------------
# Optimizer and step: fp16 loss scaling on a real BERT step, no host wait in a step
# --------------------------------------------------------------------------------------------


def _trainer(tmp_path: Path, precision: str, extra: list[str], rows: int = 256, accumulation: int = 1):
    """The real run_pretraining.Trainer on the test device, tiny model, synthetic shard in the real format."""
    import run_pretraining

    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    write_synthetic_shard(data / "synthetic_training_0.hdf5", rows=rows, seq_len=64, max_pred=10,
                          profile="wikitext_512")
    config = write_config(tmp_path / "tiny.json")
    args = run_pretraining.parse_args([
        f"--input_dir={data}", f"--config_file={config}", f"--output_dir={tmp_path / 'out'}", "--do_train",
        f"--train_batch_size={4 * accumulation}", f"--gradient_accumulation_steps={accumulation}",
        "--max_seq_length=64", "--max_predictions_per_seq=10", f"--precision={precision}", "--skip_checkpoint",
        f"--device={DEVICE.type}", "--compile=off", "--learning_rate=1e-3", *extra])
    env = distributed.DistEnv(device=DEVICE)
    run_pretraining.validate_args(args, env)
    return run_pretraining.Trainer(args, env, Logger(None, enabled=False))


def _one_step(trainer) -> bool:
    for i, batch in enumerate(trainer.batches.step(trainer.accum)):
        trainer.micro_step(batch, sync=i == trainer.accum - 1)
    return trainer.optimizer_step()


def test_fp16_grad_scaler_skip_and_recover_on_a_bert_step(tmp_path):
    """A loss scale of 2^40 overflows BERT's fp16 backward: the Trainer's steps are skipped (weights,
    LAMB state and step count untouched, the scale halved each time) until the scale fits, and from
    then on the updates apply and stay finite."""
    trainer = _trainer(tmp_path, "fp16", ["--init_loss_scale=1099511627776"])
    try:
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        outcomes, scales = [], []
        while len(outcomes) < 60 and outcomes.count(True) < 2:
            outcomes.append(_one_step(trainer))
            scales.append(trainer.scaler.get_scale())
            if not outcomes[-1] and True not in outcomes:
                assert trainer.optimizer.param_groups[0]["step"] == 0 and not trainer.optimizer.state
                for name, param in trainer.model.named_parameters():
                    assert torch.equal(param.detach(), before[name]), name
        assert outcomes[0] is False, "2^40 must overflow fp16"
        first = outcomes.index(True)
        assert outcomes[first:] == [True, True], outcomes
        assert trainer.state.skipped_steps == first and trainer.state.global_step == 2
        assert scales[: first] == [2.0**40 / 2 ** (i + 1) for i in range(first)]
        assert trainer.optimizer.param_groups[0]["step"] == 2
        for name, param in trainer.model.named_parameters():
            assert torch.isfinite(param).all(), name
        assert any(not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters())
    finally:
        trainer.stream.close()


def test_trainer_step_never_waits_for_the_device(tmp_path):
    """A whole optimizer step of the Trainer (4 micro-steps of accumulation, then scheduler and LAMB),
    bf16, packed batches where FlashAttention runs, under torch's sync debug mode "error": any
    operation that makes the host wait for the device raises. The same mode does raise on a read
    (so the check is live), and the step's result is usable afterwards."""
    if DEVICE.type != "cuda":
        pytest.skip("the sync debug mode is CUDA's")
    trainer = _trainer(tmp_path, "bf16", [], accumulation=4)
    try:
        assert _one_step(trainer)  # warm-up: allocations, handles, LAMB's device scalars
        weight = trainer.model.bert.embeddings.word_embeddings.weight
        before = weight.detach().clone()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            assert _one_step(trainer)
            with pytest.raises(RuntimeError):
                torch.zeros(1, device=DEVICE).item()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert not torch.equal(weight.detach(), before)
        assert torch.isfinite(weight).all()
        assert trainer.optimizer.settle() == 0 and trainer.optimizer.param_groups[0]["step"] == 2
    finally:
        trainer.stream.close()


# --------------------------------------------------------------------------------------------
# Compile: inductor against eager
# --------------------------------------------------------------------------------------------


@needs_flash
def test_compiled_bert_step_matches_eager():
    """torch.compile (inductor, through training.compile_module as the Trainer uses it) of model + loss
    on packed bf16 batches of two different token counts, dropout 0: one graph for both (the token
    count is marked dynamic), loss and every gradient as eager computes them."""
    import training
    from batch_packing import pack_batch
    from bert_kernels import mark_token_count_dynamic

    torch._dynamo.reset()
    config = BertConfig.from_dict({**TINY_MODEL, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    torch.manual_seed(0)
    eager = training.PretrainingLoss(BertForPreTraining(config).to(DEVICE).train(),
                                     BertPretrainingCriterion(config.padded_vocab_size))
    twin = training.PretrainingLoss(BertForPreTraining(config).to(DEVICE).train(),
                                    BertPretrainingCriterion(config.padded_vocab_size))
    twin.load_state_dict(eager.state_dict())
    stats = training.CompileStats()
    compiled = training.compile_module(twin, stats)
    for lengths in ((32, 25, 12, 32, 20, 9), (32, 32, 30, 31, 28, 29)):  # 144 and 192 packed tokens
        ids, types, mask, positions, labels, nsp = _tiny_batch(config, lengths=lengths)
        packed = pack_batch(ids, types, mask, positions, 16, flash=True)
        seqs = packed["packed"].to(DEVICE)
        args = [packed["input_ids"].to(DEVICE), packed["segment_ids"].to(DEVICE), None,
                packed["masked_positions"].to(DEVICE), labels.to(DEVICE), nsp.to(DEVICE), seqs]
        mark_token_count_dynamic(args[0], args[1], seqs.position_ids)
        results = []
        for fn, module in ((eager, eager), (compiled, twin)):
            module.zero_grad(set_to_none=True)
            with autocast_context("bf16", DEVICE):
                loss, _, _ = fn(*args)
            loss.backward()
            results.append((loss.detach().float(), {n: p.grad.detach().clone() for n, p in module.named_parameters()
                                                    if p.grad is not None}))
        (loss_e, grads_e), (loss_c, grads_c) = results
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-2, atol=1e-2)
        assert grads_c.keys() == grads_e.keys()
        worst = max((relative_error(grads_c[n], g), n) for n, g in grads_e.items())
        assert worst[0] < 5e-2, (lengths, worst)
    assert stats.graphs == 1, f"{stats.graphs} graphs for two packed token counts"
