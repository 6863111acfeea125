"""The compiled training step: model and loss in one graph with no breaks (padded, packed, and the packed
FlashAttention call traced on meta tensors), one compile however the packed token count varies, and
compiled = eager on the CPU."""
from __future__ import annotations

import pytest
import torch
from conftest import record_allreduces
from pretrain_helpers import TINY_MODEL, write_config
from test_unpadded import padded_batch

from batch_packing import pack_batch
from bert_kernels import mark_token_count_dynamic
from data.synthetic_shards import write_synthetic_shard
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


def test_varying_token_counts_compile_one_graph_once_marked_dynamic():
    """Packed batches of many token counts T: with T marked dynamic (as the Trainer does) the first
    compile serves them all; unmarked, dynamo would specialise to the first T and recompile."""
    torch._dynamo.reset()
    compiled_graphs = []

    def counting_backend(gm, example_inputs):
        compiled_graphs.append(gm)
        return gm.forward

    step = torch.compile(loss_module(), backend=counting_backend)
    token_counts = set()
    for seed in range(8):
        args = packed_args(seed=seed, bucket=16, vary=True)
        mark_token_count_dynamic(args[0], args[1], args[6].position_ids)
        token_counts.add(args[0].numel())
        loss, _, _ = step(*args)
        loss.backward()
    assert len(token_counts) >= 3, "the batches must really vary in packed size"
    assert len(compiled_graphs) == 1, f"{len(compiled_graphs)} compilations for {len(token_counts)} token counts"


def test_trainer_compiles_one_graph_for_packed_micro_batches_of_varying_size(tmp_path, monkeypatch):
    """The real Trainer (host packing, DeviceBatches, the compiled region, its CompileStats backend):
    two optimizer steps of packed micro-batches whose token counts vary → one graph, no recompile."""
    import distributed
    import run_log
    import run_pretraining

    monkeypatch.setenv("BERT_COMPILE_BACKEND", "eager")
    data = tmp_path / "data"
    data.mkdir()
    write_synthetic_shard(data / "synthetic_training_0.hdf5", rows=64, seq_len=64, max_pred=10, profile="wikitext_512")
    config = write_config(tmp_path / "tiny.json")
    args = run_pretraining.parse_args([
        f"--input_dir={data}", f"--config_file={config}", f"--output_dir={tmp_path / 'out'}", "--do_train",
        "--train_batch_size=16", "--gradient_accumulation_steps=4", "--max_seq_length=64",
        "--max_predictions_per_seq=10", "--precision=fp32", "--skip_checkpoint", "--device=cpu",
        "--unpad=reference", "--compile=on", "--pack_bucket=16"])
    env = distributed.DistEnv(device=torch.device("cpu"))
    run_pretraining.validate_args(args, env)
    torch._dynamo.reset()
    trainer = run_pretraining.Trainer(args, env, run_log.Logger(None, enabled=False))
    token_counts = set()
    try:
        for _ in range(2):
            for i, batch in enumerate(trainer.batches.step(trainer.accum)):
                token_counts.add(batch["input_ids"].numel())
                trainer.micro_step(batch, sync=i == trainer.accum - 1)
            trainer.optimizer_step()
    finally:
        trainer.stream.close()
    assert trainer.packed and trainer.compiled
    assert len(token_counts) >= 3, token_counts
    assert trainer.compile_stats.as_dict()["graphs_compiled"] == 1
    assert trainer.compile_stats.as_dict()["recompiles"] == 0


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
