"""Pretraining step throughput: ours (BertForPreTraining + LAMB, masked-only MLM) vs Hugging Face
`transformers.BertForPreTraining` + AdamW, same config, batch and data, in one run on this machine.

  python benchmarks/bench_pretraining.py                  # BERT-base and a small shape, seq 128, fp32 + bf16
  python benchmarks/bench_pretraining.py --shapes small --steps 5 --precisions fp32

Prints sequences/s for each and the ratio ours / transformers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modeling import BertConfig, BertForPreTraining, BertPretrainingCriterion, masked_positions_from_labels  # noqa: E402
from optimization import build_lamb, pretraining_param_groups  # noqa: E402
from utils import autocast_context  # noqa: E402

SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, batch=8),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, batch=32),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, batch=64),
}


def make_batch(batch: int, seq: int, max_pred: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded sequences with 15% of real tokens masked (capped at max_pred), like a phase-1 shard."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
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
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
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


def mfu(config: BertConfig, seq: int, max_pred: int, seq_per_s: float, device: torch.device) -> str:
    from run_pretraining import PEAK_BF16_FLOPS, training_flops_per_sequence

    if device.type != "cuda":
        return "-"
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return f"{training_flops_per_sequence(config, seq, max_pred) * seq_per_s / peak:.1%}" if peak else "?"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="small,base", help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--max_pred", type=int, default=20)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--batch", type=int, default=0, help="override the shape's batch size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--skip_hf", action="store_true", help="time ours only (e.g. BERT-large on a GPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes.split(","):
        spec = dict(SHAPES[shape])
        batch_size = args.batch or spec.pop("batch")
        spec.pop("batch", None)
        config = BertConfig(vocab_size=30522, **spec)
        batch = {k: v.to(device) for k, v in make_batch(batch_size, args.seq, args.max_pred, config.vocab_size).items()}
        for precision in args.precisions.split(","):
            torch.manual_seed(0)
            _, ours = ours_step_fn(config, batch, precision, args.max_pred, device, args.compile)
            ours_sps = batch_size / time_steps(ours, args.warmup, args.steps, device)
            del ours
            hf_sps = float("nan")
            if not args.skip_hf:
                _, theirs = hf_step_fn(config, batch, precision, device)
                hf_sps = batch_size / time_steps(theirs, args.warmup, args.steps, device)
                del theirs
            rows.append((shape, precision, batch_size, ours_sps, hf_sps, ours_sps / hf_sps,
                         mfu(config, args.seq, args.max_pred, ours_sps, device)))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nPretraining step (fwd+bwd+optimizer), seq {args.seq}, {args.max_pred} predictions, {where}, "
          f"torch {torch.__version__}")
    print(f"{'shape':<6} {'prec':<5} {'batch':>5} {'ours seq/s':>11} {'HF seq/s':>9} {'ours/HF':>8} {'MFU':>6}")
    for shape, precision, b, ours, hf, ratio, util in rows:
        print(f"{shape:<6} {precision:<5} {b:>5} {ours:>11.2f} {hf:>9.2f} {ratio:>7.2f}x {util:>6}")


if __name__ == "__main__":
    main()
