"""Pretraining step throughput: ours (BertForPreTraining + LAMB, masked-only MLM) vs Hugging Face
`transformers.BertForPreTraining` + AdamW (fused, the Trainer's default), same config, batch and data,
in one run on this machine.

  python benchmarks/bench_pretraining.py                  # BERT-base and a small shape, seq 128, fp32 + bf16
  python benchmarks/bench_pretraining.py --shard demo_out/data/hdf5_.../demo/training_0.hdf5
  python benchmarks/bench_pretraining.py --shapes small --steps 5 --precisions fp32

The batch is the first rows of --shard (a real HDF5 shard), else synthetic rows shaped like a phase-1
shard (90% full length, 10% shorter, 15% of tokens masked). Prints sequences/s and the ratio ours /
transformers; on the CPU in fp32, when ours runs its GEMMs in oneDNN (--cpu_gemm; auto picks oneDNN where torch runs
AVX-512 kernels), it also times ours with every GEMM in torch's BLAS, so the part of the gain that comes
from the GEMM library shows separately. bf16 rows are skipped, with the reason, on a CPU without native
bf16. The output names the CPU (model name, family and model numbers) and the GEMM choice: the ratios
depend on both.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cpu_info import benchmark_precisions, describe_cpu

import bert_kernels as kernels
from batch_packing import masked_positions_from_labels
from modeling import BertConfig, BertForPreTraining, BertPretrainingCriterion
from optimization import build_lamb, pretraining_param_groups
from precision import autocast_context

SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, batch=8),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, batch=32),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, batch=64),
}


def make_batch(batch: int, seq: int, max_pred: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows like a phase-1 shard's: 90% full length, 10% shorter (create_pretraining_data's
    short_seq_prob), 15% of real tokens masked (capped at max_pred)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    short = torch.rand(batch, generator=g) < 0.1
    lengths = torch.where(short, torch.randint(8, seq + 1, (batch,), generator=g), torch.full((batch,), seq))
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    types = ((torch.arange(seq)[None, :] >= lengths[:, None] // 2) & mask.bool()).long()
    labels = torch.full((batch, seq), -1)
    for b in range(batch):
        n = min(max_pred, max(1, int(0.15 * lengths[b])))
        pos = torch.randperm(int(lengths[b]) - 2, generator=g)[:n] + 1
        labels[b, pos] = ids[b, pos]
    nsp = torch.randint(0, 2, (batch,), generator=g)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels, "nsp": nsp}


def shard_batch(path: str, batch: int, max_pred: int) -> dict[str, torch.Tensor]:
    """The first `batch` rows of a pretraining HDF5 shard, as the step functions take them."""
    from data.pretraining_dataset import PretrainingShardDataset

    rows = PretrainingShardDataset(path, max_pred).tensors()
    if len(rows["input_ids"]) < batch:
        raise SystemExit(f"{path}: {len(rows['input_ids'])} rows, fewer than the batch of {batch}")
    names = {"input_ids": "input_ids", "segment_ids": "token_type_ids", "input_mask": "attention_mask",
             "masked_lm_labels": "labels", "next_sentence_labels": "nsp"}
    return {names[k]: v[:batch] for k, v in rows.items() if k in names}


def ours_step_fn(config: BertConfig, batch: dict, precision: str, max_pred: int, device: torch.device, compile_: bool):
    model = BertForPreTraining(config).to(device).train()
    opt = build_lamb(pretraining_param_groups(model), lr=1e-4)
    crit = BertPretrainingCriterion(config.padded_vocab_size)
    forward = torch.compile(model) if compile_ else model

    def step():
        positions, labels = masked_positions_from_labels(batch["labels"], max_pred)
        with autocast_context(precision, device):
            scores, nsp = forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], positions)
            loss = crit(scores, nsp, labels, batch["nsp"])[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return model, step


def hf_step_fn(config: BertConfig, batch: dict, precision: str, device: torch.device):
    import transformers

    hf_config = transformers.BertConfig(
        vocab_size=config.padded_vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
    )
    model = transformers.BertForPreTraining(hf_config).to(device).train()
    # The Trainer's default optimizer with torch >= 2.8 (optim="adamw_torch_fused").
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    labels = batch["labels"].masked_fill(batch["labels"] == -1, -100)

    def step():
        with autocast_context(precision, device):
            out = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                        attention_mask=batch["attention_mask"], labels=labels, next_sentence_label=batch["nsp"])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    return model, step


def time_steps(step, warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)  # waits for the device
    sync(device)
    return (time.perf_counter() - start) / steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mfu(config: BertConfig, seq: int, max_pred: int, seq_per_s: float, device: torch.device, precision: str) -> str:
    from flops import model_flops_utilization, training_flops_per_sequence

    if device.type != "cuda":
        return "-"
    value = model_flops_utilization(training_flops_per_sequence(config, seq, max_pred) * seq_per_s, 1.0, device,
                                    precision)
    return f"{value:.1%}" if value is not None else "?"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="small,base", help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--max_pred", type=int, default=20)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds of timing, taken in turns; the median counts")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--batch", type=int, default=0, help="override the shape's batch size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--skip_hf", action="store_true", help="time ours only (e.g. BERT-large on a GPU)")
    p.add_argument("--shard", default=None, help="HDF5 pretraining shard to take the batch from (else synthetic)")
    kernels.add_kernel_arguments(p)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels.configure_kernels(args)
    ours_gemms = kernels.cpu_gemm_backend()
    precisions, skipped = benchmark_precisions(args.precisions.split(","), device.type)
    rows = []
    for shape in args.shapes.split(","):
        spec = dict(SHAPES[shape])
        batch_size = args.batch or spec.pop("batch")
        spec.pop("batch", None)
        config = BertConfig(vocab_size=30522, **spec)
        batch = (shard_batch(args.shard, batch_size, args.max_pred) if args.shard
                 else make_batch(batch_size, args.seq, args.max_pred, config.vocab_size))
        seq = batch["input_ids"].size(1)
        batch = {k: v.to(device) for k, v in batch.items()}
        for precision in precisions:
            contenders = {"ours": ours_step_fn(config, batch, precision, args.max_pred, device, args.compile)[1]}
            if device.type == "cpu" and precision == "fp32" and ours_gemms != "aten":
                contenders["ours_aten"] = contenders["ours"]  # the same model, GEMMs left to torch's BLAS
            if not args.skip_hf:
                contenders["hf"] = hf_step_fn(config, batch, precision, device)[1]
            seconds = time_rounds(contenders, args.rounds, args.warmup, args.steps, device, ours_gemms)
            ours_sps, aten_sps, hf_sps = (batch_size / seconds.get(name, float("nan"))
                                          for name in ("ours", "ours_aten", "hf"))
            del contenders
            fill = float(batch["attention_mask"].float().mean())
            rows.append((shape, precision, batch_size, fill, ours_sps, aten_sps, hf_sps,
                         mfu(config, seq, args.max_pred, ours_sps, device, precision)))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    data = f"rows of {args.shard}" if args.shard else "synthetic phase-1-like rows"
    print(f"\nPretraining step (fwd+bwd+optimizer), seq {seq}, {args.max_pred} predictions, {data}, "
          f"{where}, torch {torch.__version__}")
    print(f"CPU: {describe_cpu()}; ours' fp32 GEMMs: {ours_gemms}")
    print(f"{'shape':<6} {'prec':<5} {'batch':>5} {'real tok':>8} {'ours seq/s':>11} {'HF seq/s':>9} {'ours/HF':>8} "
          f"{'ours, torch BLAS/HF':>20} {'MFU':>6}")
    for shape, precision, b, fill, ours, aten, hf, util in rows:
        aten_ratio = f"{aten / hf:.2f}x" if aten == aten else "-"
        print(f"{shape:<6} {precision:<5} {b:>5} {fill:>8.0%} {ours:>11.2f} {hf:>9.2f} {ours / hf:>7.2f}x "
              f"{aten_ratio:>20} {util:>6}")
    for precision, reason in skipped.items():
        print(f"{precision} rows skipped: {reason}")



def time_rounds(contenders: dict, rounds: int, warmup: int, steps: int, device: torch.device,
                ours_gemms: str) -> dict[str, float]:
    """Median seconds per step of each contender, timed in turns (round 1: each in order, round 2: ...)
    so that a slow spell of the machine hits all of them rather than one."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        for name, step in contenders.items():
            kernels.set_cpu_gemm_backend("aten" if name == "ours_aten" else ours_gemms)
            times[name].append(time_steps(step, warmup if round_index == 0 else 0, steps, device))
    kernels.set_cpu_gemm_backend(ours_gemms)
    return {name: statistics.median(values) for name, values in times.items()}

if __name__ == "__main__":
    main()
