"""The compiled training step: model and loss in one graph with no breaks (padded, packed, and the packed
FlashAttention call traced on meta tensors), a bounded number of recompilations while the packed token
count varies, and compiled = eager on the CPU."""
from __future__ import annotations

import pytest
import torch
from conftest import record_allreduces
from pretrain_helpers import TINY_MODEL
from test_unpadded import padded_batch

from bert_kernels import pack_batch
from modeling import BertConfig, BertForPreTraining, BertPretrainingCriterion
from training import PretrainingLoss


def loss_module(device: str = "cpu", dtype: torch.dtype = torch.float32, dropout: float = 0.1) -> PretrainingLoss:
    config = BertConfig.from_dict({**TINY_MODEL, "hidden_dropout_prob": dropout,
                                   "attention_probs_dropout_prob": dropout})
    torch.manual_seed(0)
    model = BertForPreTraining(config).to(dtype).to(device).train()
    return PretrainingLoss(model, BertPretrainingCriterion(config.padded_vocab_size))


def padded_args(seed: int = 3):
    ids, types, mask, positions, labels, nsp = padded_batch(seed=seed)
    return [ids, types, mask, positions, labels, nsp, None]


def packed_args(seed: int = 3, flash: bool = False, device: str = "cpu", bucket: int = 64, vary: bool = False):
    """A packed batch; with `vary`, rows of random lengths (so the packed size changes with the seed)."""
    lengths = tuple(torch.randint(8, 33, (6,),
                                  generator=torch.Generator().manual_seed(seed)).tolist()) if vary else None
    ids, types, mask, positions, labels, nsp = padded_batch(seed=seed, **({"row_lengths": lengths} if vary else {}))
    p = pack_batch(ids, types, mask, positions, bucket, flash=flash)
    tensors = [p["input_ids"], p["segment_ids"], None, p["masked_positions"], labels, nsp]
    return [t if t is None else t.to(device) for t in tensors] + [p["packed"].to(device)]


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_model_and_loss_compile_to_one_graph(layout):
    explained = torch._dynamo.explain(loss_module())(*(padded_args() if layout == "padded" else packed_args()))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_flash_varlen_path_compiles_to_one_graph_on_meta_tensors():
    """The CUDA path (FlashAttention's varlen op with dropout), traced without a GPU."""
    module = loss_module("meta", torch.bfloat16)
    explained = torch._dynamo.explain(module)(*packed_args(flash=True, device="meta"))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_varying_token_counts_recompile_a_bounded_number_of_times():
    torch._dynamo.reset()
    compiled_graphs = []

    def counting_backend(gm, example_inputs):
        compiled_graphs.append(gm)
        return gm.forward

    step = torch.compile(loss_module(), backend=counting_backend)
    token_counts = set()
    for seed in range(8):
        args = packed_args(seed=seed, bucket=16, vary=True)
        token_counts.add(args[0].numel())
        loss, _, _ = step(*args)
        loss.backward()
    assert len(token_counts) >= 3, "the batches must really vary in packed size"
    assert len(compiled_graphs) <= 2, f"{len(compiled_graphs)} compilations for {len(token_counts)} token counts"


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_compiled_equals_eager_on_cpu(layout):
    """inductor's code against eager, forward and backward (dropout off: the random streams differ)."""
    torch._dynamo.reset()
    eager, compiled = loss_module(dropout=0.0), loss_module(dropout=0.0)
    step = torch.compile(compiled)
    args = padded_args() if layout == "padded" else packed_args()
    results = []
    for fn, module in ((eager, eager), (step, compiled)):
        loss, mlm, nsp = fn(*args)
        loss.backward()
        results.append((loss.detach(), mlm.detach(),
                        {n: p.grad for n, p in module.named_parameters() if p.grad is not None}))
    (loss_e, mlm_e, grads_e), (loss_c, mlm_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mlm_c, mlm_e, rtol=1e-5, atol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    for name, grad in grads_e.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-3, atol=1e-5, msg=name)


MICRO_STEPS, ACCUMULATION = 6, 3


def _count_allreduces_through_compiled_loss(rank: int, world: int, init_file: str, out: dict) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import training

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        module = loss_module(dropout=0.0)
        ddp = DistributedDataParallel(module.model)
        calls = record_allreduces(ddp, world)
        step = torch.compile(PretrainingLoss(ddp, module.criterion), backend="eager")
        for micro in range(MICRO_STEPS):
            with training.gradient_sync(ddp, sync=(micro + 1) % ACCUMULATION == 0):
                loss, _, _ = step(*padded_args(seed=rank * 100 + micro))
                loss.backward()
        grad = ddp.module.cls.predictions.bias.grad.clone()
        gathered = [torch.zeros_like(grad) for _ in range(world)]
        dist.all_gather(gathered, grad)
        out[rank] = (len(set(calls)), len(calls), all(torch.equal(g, gathered[0]) for g in gathered))
    finally:
        dist.destroy_process_group()


def test_compiled_model_and_loss_around_ddp_reduce_once_per_update(tmp_path):
    """The Trainer's arrangement (the compiled region wraps DDP, no_sync set outside it): 2 gloo ranks,
    3 micro-batches per update, 2 updates → gradients reduced only on the updates' last micro-batch."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_count_allreduces_through_compiled_loss, args=(2, str(tmp_path / "rendezvous"), out), nprocs=2,
                 join=True)
        results = dict(out)
    for rank in (0, 1):
        buckets, calls, synced = results[rank]
        assert buckets >= 1 and calls == buckets * (MICRO_STEPS // ACCUMULATION), results
        assert synced, "both ranks hold the same reduced gradients"
