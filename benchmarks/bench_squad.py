"""SQuAD fine-tuning and inference throughput: ours vs Hugging Face `transformers`, same machine, one run.

Ours: `BertForQuestionAnswering` driven by `training.Stepper`, exactly as `run_squad.py` trains
(AdamW + LinearWarmUp over the original's parameter groups, pooler frozen, global clipping to 1.0,
autocast). Theirs: `transformers.BertForQuestionAnswering` built from a `BertConfig` with the same
weights copied in, trained the way its examples and Trainer do it (torch's fused AdamW with the usual
no-decay groups, linear warm-up schedule, clipping to 1.0, the same autocast). Same batch, same
precision, two kinds of batch: real SQuAD features padded to 384 (run_squad.py cuts each batch to
its longest sequence; transformers' run_qa.py pads to max_length by default, as here), and
synthetic full-length sequences, where both models do the same work. Timings alternate between the
two models step by step, so machine load hits both alike; the median step counts.

  python benchmarks/bench_squad.py                         # BERT-base, seq 384, batch 2, fp32 and bf16
  python benchmarks/bench_squad.py --precisions bf16 --data full --train_steps 8
  python benchmarks/bench_squad.py --threads 1 --clock cpu   # steadier numbers on a busy machine

Prints sequences/s and the ratio ours / transformers (targets: training >= 1.15, inference >= 1.0).
"""
from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from cpu_info import BENCHMARK_CLOCKS, benchmark_precisions, describe_cpu

import bert_kernels as kernels
import finetuning as ft
from checkpoint_io import to_hf_state_dict
from modeling import BertConfig, BertForQuestionAnswering
from precision import autocast_context
from run_squad import squad_forward, squad_train_loss

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SHARED_SQUAD = ROOT.parent / "shared" / "data" / "squad" / "v1.1" / "train-v1.1.first11articles.json"
SHARED_VOCAB = ROOT.parent / "shared" / "data" / "vocab" / "bert-base-uncased-vocab.txt"
CPU = torch.device("cpu")


def real_batch(batch_size: int, seq: int, seed: int = 0) -> tuple[list[torch.Tensor], str] | None:
    """A random batch of SQuAD training features (ids, mask, segments, start, end), or None without the data."""
    if not (SHARED_SQUAD.is_file() and SHARED_VOCAB.is_file()):
        return None
    from processors import squad
    from tokenization import FullTokenizer

    examples = squad.read_squad_examples(SHARED_SQUAD, is_training=True)[:400]
    features = squad.convert_examples_to_features(examples, FullTokenizer(str(SHARED_VOCAB)), max_seq_length=seq,
                                                  is_training=True)
    chosen = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:batch_size].tolist()
    arrays = squad.features_to_arrays([features[i] for i in chosen])
    names = ("input_ids", "input_mask", "segment_ids", "start_positions", "end_positions")
    tensors = [torch.from_numpy(arrays[n]).long() for n in names]
    longest = int(tensors[1].sum(-1).max())
    return tensors, f"random real SQuAD features padded to {seq}, longest {longest} (run_squad.py cuts the batch there)"


def synthetic_batch(batch_size: int, seq: int) -> tuple[list[torch.Tensor], str]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch_size, seq), generator=g)
    segments = (torch.arange(seq) >= 40).long().expand(batch_size, seq).clone()
    positions = torch.randint(41, seq, (2, batch_size), generator=g)
    inputs = [ids, torch.ones_like(ids), segments, positions[0], positions[1]]
    return inputs, f"synthetic full-length sequences of {seq}"


def build_models(seed: int = 0) -> tuple[BertForQuestionAnswering, torch.nn.Module]:
    import transformers

    torch.manual_seed(seed)
    ours = BertForQuestionAnswering(BertConfig(**BASE))
    hf_config = transformers.BertConfig(**BASE, max_position_embeddings=512, hidden_dropout_prob=0.1,
                                        attention_probs_dropout_prob=0.1)
    theirs = transformers.BertForQuestionAnswering(hf_config)
    weights = {k: v for k, v in to_hf_state_dict(ours.state_dict(), BASE["vocab_size"]).items() if "pooler" not in k}
    missing, unexpected = theirs.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    return ours, theirs


def ours_train_step(model: BertForQuestionAnswering, batch: list[torch.Tensor], precision: str) -> Callable[[], float]:
    args = argparse.Namespace(optimizer="adamw", learning_rate=3e-5, weight_decay=0.01, warmup_proportion=0.1)
    ft.freeze(model, "pooler")
    optimizer, scheduler = ft.build_optimizer_and_scheduler(model, args, total_steps=1000, skip_pooler=True)
    stepper = ft.Stepper(model.train(), optimizer, scheduler, precision, CPU, clip_grad_norm=1.0)

    def step() -> float:
        loss = stepper.accumulate(ft.trim_padding(batch), squad_train_loss)
        stepper.update()
        return loss.item()

    return step


def hf_train_step(model: torch.nn.Module, batch: list[torch.Tensor], precision: str) -> Callable[[], float]:
    from transformers import get_linear_schedule_with_warmup

    decay = [p for n, p in model.named_parameters() if not any(k in n for k in ("bias", "LayerNorm"))]
    no_decay = [p for n, p in model.named_parameters() if any(k in n for k in ("bias", "LayerNorm"))]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=3e-5, eps=1e-6, fused=True)  # the Trainer's default with torch >= 2.8
    scheduler = get_linear_schedule_with_warmup(optimizer, 100, 1000)
    model.train()
    ids, mask, segments, start, end = batch

    def step() -> float:
        with autocast_context(precision, CPU):
            loss = model(input_ids=ids, token_type_ids=segments, attention_mask=mask, start_positions=start,
                         end_positions=end).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def ours_infer_step(model: BertForQuestionAnswering, batch: list[torch.Tensor], precision: str) -> Callable[[], None]:
    """As `finetuning.predict` runs it (Linear weights cast to 16 bits once for bf16, same outputs)."""
    inputs = batch[:3]
    model = ft.inference_copy(model, precision)

    @torch.inference_mode()
    def step() -> None:
        with autocast_context(precision, CPU):
            squad_forward(model, ft.trim_padding(inputs))

    return step


def hf_infer_step(model: torch.nn.Module, batch: list[torch.Tensor], precision: str) -> Callable[[], None]:
    ids, mask, segments = batch[:3]

    @torch.inference_mode()
    def step() -> None:
        with autocast_context(precision, CPU):
            model.eval()(input_ids=ids, token_type_ids=segments, attention_mask=mask)

    return step


def alternate(ours: Callable, theirs: Callable, warmup: int, steps: int, clock: str) -> tuple[float, float]:
    """Median seconds per call of each, measured in turn (ours, theirs, ours, ...)."""
    now = BENCHMARK_CLOCKS[clock]
    for _ in range(warmup):
        ours()
        theirs()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(steps):
        for fn, bucket in ((ours, times[0]), (theirs, times[1])):
            start = now()
            fn()
            bucket.append(now() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def measure(batch: list[torch.Tensor], precision: str, args: argparse.Namespace) -> tuple[float, ...]:
    """Training and inference sequences/s of (ours, theirs) on one batch."""
    ours, theirs = build_models()
    train = alternate(ours_train_step(ours, batch, precision), hf_train_step(theirs, batch, precision),
                      args.warmup, args.train_steps, args.clock)
    infer = alternate(ours_infer_step(ours, batch, precision), hf_infer_step(theirs, batch, precision),
                      args.warmup, args.infer_steps, args.clock)
    return tuple(args.batch_size / t for t in (*train, *infer))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    p.add_argument("--data", choices=("real", "full", "both"), default="both",
                   help="real: SQuAD features (padded; ours cuts padding as run_squad.py does); full: synthetic "
                        "sequences without padding (identical work for both); both (default)")
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--train_steps", type=int, default=5)
    p.add_argument("--infer_steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--clock", choices=tuple(BENCHMARK_CLOCKS), default="wall",
                   help="wall time, or this process's CPU time (steadier on a shared machine; use with --threads 1)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = []
    if args.data in ("real", "both"):
        batches.append(real_batch(args.batch_size, args.seq) or synthetic_batch(args.batch_size, args.seq))
    if args.data in ("full", "both"):
        batches.append(synthetic_batch(args.batch_size, args.seq))
    print(f"BERT-base QA, batch {args.batch_size} x seq {args.seq}, {torch.get_num_threads()} threads, "
          f"{args.clock} clock")
    print(f"CPU: {describe_cpu()}; ours' fp32 GEMMs: {kernels.cpu_gemm_backend()}")
    precisions, skipped = benchmark_precisions(args.precisions.split(","), "cpu")
    for precision, reason in skipped.items():
        print(f"{precision} rows skipped: {reason}")
    rows = []
    for index, (batch, description) in enumerate(batches):
        print(f"  data {index}: {description}")
        rows += [(index, precision, *measure(batch, precision, args)) for precision in precisions]
    print(f"{'data':<6}{'precision':<10}{'train ours':>12}{'train HF':>12}{'ratio':>8}{'infer ours':>12}"
          f"{'infer HF':>12}{'ratio':>8}   (sequences/s)")
    for index, precision, train_ours, train_hf, infer_ours, infer_hf in rows:
        print(f"{index:<6}{precision:<10}{train_ours:>12.3f}{train_hf:>12.3f}{train_ours / train_hf:>7.2f}x"
              f"{infer_ours:>12.3f}{infer_hf:>12.3f}{infer_ours / infer_hf:>7.2f}x")


if __name__ == "__main__":
    main()
