"""Length-binned batches and dynamic masking, measured in the real training loop on phase-2 shards.

    python benchmarks/bench_binned_batches.py [--data-dir ../shared/data] [--steps 16] [--bin_size 64]

Makes phase-2 shards (seq 512, 80 predictions, dupe factor 1) with create_pretraining_data.py from the
shared WikiText-2 articles and Gutenberg books (the text of bench_create_pretraining_data.py), takes the
WikiText shard (`--corpus wikitext`, the default) or all of them (`--corpus all`), then runs
`run_pretraining.Trainer` (micro_step + optimizer_step, LAMB, fp32) on a BERT-base-like model small enough
for a CPU (6 layers, hidden 384, 6 heads, the full 30522-word vocab) with padded batches and with
`--bin_size` batches, and prints per configuration: padded tokens per step (measured over the steps run
and over a whole epoch's batch plan) and sequences/s after warm-up steps. It also times dynamic masking
(`--dynamic_masking`, per micro-batch, pieces and whole words) against the step time.
`--dry_run` does the same on a tiny text, seq 128 and a tiny model in seconds (for the test suite).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from cpu_info import describe_cpu

from input_checks import InputError, run_main

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = ROOT.parent / "shared" / "data"
MODEL = {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
         "intermediate_size": 1536, "max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu",
         "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}
TINY_MODEL = {**MODEL, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
              "max_position_embeddings": 128}


def make_shards(data_dir: Path, work: Path, seq_len: int, max_pred: int, dry_run: bool) -> tuple[Path, Path]:
    """Phase-2 shards, one per text file, in work/shards (reused when present); returns (folder, vocab)."""
    vocab = data_dir / "vocab" / "bert-base-uncased-vocab.txt"
    if not vocab.is_file():
        raise InputError(f"vocab not found: {vocab} (pass --data-dir)")
    shards = work / f"shards_{seq_len}_{max_pred}"
    if shards.is_dir() and any(shards.glob("*.hdf5")):
        return shards, vocab
    from bench_create_pretraining_data import prepare_text

    text_dir = work / "text"
    text_dir.mkdir(parents=True, exist_ok=True)
    texts = prepare_text(data_dir, text_dir)
    if dry_run:
        texts = [trimmed_text(texts[0], text_dir / "tiny.txt", lines=400)]
    staging = work / f".staging_{seq_len}_{max_pred}"
    staging.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(texts):
        subprocess.run([sys.executable, str(ROOT / "create_pretraining_data.py"), f"--input_file={text}",
                        f"--output_file={staging / f'bench_training_{index}.hdf5'}", f"--vocab_file={vocab}",
                        "--do_lower_case", f"--max_seq_length={seq_len}", f"--max_predictions_per_seq={max_pred}",
                        "--dupe_factor=1", "--random_seed=12345"], check=True, capture_output=True, text=True)
    staging.rename(shards)  # complete or absent
    return shards, vocab


def corpus_shards(shards: Path, corpus: str) -> Path:
    """The shard folder for `--corpus`: all texts, or a folder holding only the WikiText shard (made first,
    index 0), whose articles are what Wikipedia-derived phase-2 data looks like."""
    if corpus == "all":
        return shards
    only = shards.with_name(shards.name + "_wikitext")
    if not only.is_dir():
        only.mkdir()
        os.link(shards / "bench_training_0.hdf5", only / "bench_training_0.hdf5")
    return only


def trimmed_text(source: Path, output: Path, lines: int) -> Path:
    output.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:lines]) + "\n", encoding="utf-8")
    return output


def build_trainer(shards: Path, work: Path, config: dict, micro_batch: int, seq_len: int, max_pred: int,
                  extra: list[str]):
    import json

    import distributed
    import run_log
    import run_pretraining

    config_file = work / "bench_config.json"
    config_file.write_text(json.dumps(config))
    args = run_pretraining.parse_args([
        f"--input_dir={shards}", f"--config_file={config_file}", f"--output_dir={work / 'out'}", "--do_train",
        f"--train_batch_size={micro_batch}", f"--max_seq_length={seq_len}", f"--max_predictions_per_seq={max_pred}",
        "--precision=fp32", "--skip_checkpoint", "--max_steps=1000", "--learning_rate=1e-4", *extra])
    env = distributed.DistEnv()
    run_pretraining.validate_args(args, env)
    return run_pretraining.Trainer(args, env, run_log.Logger(str(work / "dllogger.json"), enabled=False))


def padded_tokens(batch: list[torch.Tensor]) -> tuple[int, int]:
    """(token slots computed, real tokens) of a micro-batch."""
    return batch[0].numel(), int(batch[2].sum())


def epoch_plan(trainer) -> list[tuple[str, dict[str, torch.Tensor], torch.Tensor, int]]:
    """Every micro-batch of one epoch over all shards as (shard path, shard, rows, width)."""
    from data.pretraining_dataset import load_shard

    plan = []
    for path in trainer.files:
        shard = load_shard(path, trainer.max_pred)
        plan += [(path, shard, rows, width) for rows, width in trainer.stream.plan(shard, 0, path)]
    return plan


def epoch_padding(trainer) -> tuple[float, float]:
    """Mean (padded tokens, token slots) per micro-batch over one epoch's batch plans of every shard."""
    padded = slots = 0
    plan = epoch_plan(trainer)
    for _, shard, rows, width in plan:
        slots += len(rows) * width
        padded += len(rows) * width - int(shard["input_mask"][rows].sum())
    return padded / len(plan), slots / len(plan)


def print_corpus(trainer) -> None:
    """Sequences, their real lengths, and the most any padding scheme can save on them."""
    from data.pretraining_dataset import load_shard

    lengths = torch.cat([load_shard(path, trainer.max_pred)["input_mask"].sum(1) for path in trainer.files])
    width = trainer.seq_len
    longer = (lengths > width - 64).float().mean() * 100
    print(f"{lengths.numel()} sequences in {len(trainer.files)} shard(s); real length mean "
          f"{lengths.float().mean():.0f} of {width}, median {lengths.median():.0f}, {longer:.0f}% longer than "
          f"{width - 64}; no padding at all would compute {width * lengths.numel() / lengths.sum():.2f}x fewer tokens")


def epoch_estimate(trainer, reps: int) -> tuple[float, float, dict[int, float]]:
    """Sequences per CPU second over a whole epoch, with bins and padded, from the CPU time of one optimizer
    step at each batch width the epoch's plan holds (the fastest of `reps`, on a real batch of that width),
    weighted by how many batches of each width the epoch has; and the per-width times."""
    plan = epoch_plan(trainer)
    first_of_width: dict[int, tuple] = {}
    for path, shard, rows, width in plan:
        first_of_width.setdefault(width, (path, shard, rows))
    path, shard, rows, _ = plan[0]
    full = shard["input_ids"].size(1)
    first_of_width.setdefault(full, (path, shard, rows))
    seconds = {}
    for width, (path, shard, rows) in sorted(first_of_width.items()):
        batch = trainer.stream.make_batch(shard, rows, width, 0, path)
        times = []
        for _ in range(reps):
            cpu = time.process_time()
            trainer.micro_step(trainer.prepare_batch(batch), sync=True)
            trainer.optimizer_step()
            times.append(time.process_time() - cpu)
        seconds[width] = min(times)
    sequences = len(plan) * trainer.micro_batch
    binned = sequences / sum(seconds[width] for *_, width in plan)
    padded = sequences / (len(plan) * seconds[full])
    return binned, padded, seconds


def step(trainer, batches) -> tuple[float, float, int, int]:
    """One optimizer step, reading its batch included: (wall seconds, CPU seconds of this process, token slots,
    real tokens)."""
    wall, cpu = time.perf_counter(), time.process_time()
    batch = next(batches)
    slots, real = padded_tokens(batch)
    trainer.micro_step(trainer.prepare_batch(batch), sync=True)
    trainer.optimizer_step()
    return time.perf_counter() - wall, time.process_time() - cpu, slots, real


def measure(trainers: dict, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Sequences/s (by wall and by CPU time) and padded tokens per step over `steps` optimizer steps after
    `warmup`, the configurations' steps interleaved so that a change of load on a shared machine hits all."""
    streams = {name: iter(trainer.stream) for name, trainer in trainers.items()}
    totals = {name: [0.0, 0.0, 0, 0] for name in trainers}
    for index in range(warmup + steps):
        for name, trainer in trainers.items():
            trainer.model.train()
            measured = step(trainer, streams[name])
            if index >= warmup:
                totals[name] = [a + b for a, b in zip(totals[name], measured, strict=True)]
    out = {}
    for name, (wall, cpu, slots, real) in totals.items():
        sequences = steps * trainers[name].micro_batch
        out[name] = {"seq_per_s": sequences / wall, "cpu_seq_per_s": sequences / cpu, "step_s": wall / steps,
                     "padded_per_step": (slots - real) / steps, "slots_per_step": slots / steps}
        trainers[name].stream.close()
    return out


def masking_cost(trainer, vocab: Path, batches: int) -> dict[str, float]:
    """Milliseconds per micro-batch of dynamic masking (restoring the tokens included), pieces and whole words."""
    from data.pretraining_dataset import load_shard, masker_from_vocab, unmasked_input_ids

    path = trainer.files[0]
    shard = load_shard(path, trainer.max_pred)
    n = shard["input_ids"].size(0)
    out = {}
    for name, whole_word in (("pieces", False), ("whole words", True)):
        masker = masker_from_vocab(str(vocab), trainer.config.vocab_size, trainer.max_pred, 0.15, 1, whole_word)
        start = time.perf_counter()
        for b in range(batches):
            rows = torch.arange(b * trainer.micro_batch, (b + 1) * trainer.micro_batch) % n
            unmasked = unmasked_input_ids(shard["input_ids"][rows], shard["masked_lm_labels"][rows])
            masker(unmasked, shard["segment_ids"][rows], shard["input_mask"][rows], 0, path, rows)
        out[name] = (time.perf_counter() - start) / batches * 1000
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    p.add_argument("--work_dir", type=Path, default=None, help="where shards are made (default: a temp folder)")
    p.add_argument("--steps", type=int, default=16, help="timed optimizer steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--micro_batch", type=int, default=8, help="sequences per step")
    p.add_argument("--bin_size", type=int, default=64, help="bin width in tokens")
    p.add_argument("--reps", type=int, default=2, help="steps timed per batch width for the epoch estimate")
    p.add_argument("--corpus", choices=("wikitext", "all"), default="wikitext",
                   help="the WikiText-2 articles' shard (Wikipedia text), or that and six Gutenberg books")
    p.add_argument("--dry_run", action="store_true", help="tiny text, seq 128, tiny model, 2 steps")
    args = p.parse_args(argv)
    seq_len, max_pred, config = (128, 20, TINY_MODEL) if args.dry_run else (512, 80, MODEL)
    if args.dry_run:
        args.steps, args.warmup, args.bin_size, args.reps = 2, 1, min(args.bin_size, 32), 1
    with tempfile.TemporaryDirectory(prefix="bench_bins_") as tmp:
        work = args.work_dir or Path(tmp)
        shards, vocab = make_shards(args.data_dir, work, seq_len, max_pred, args.dry_run)
        shards = corpus_shards(shards, args.corpus)
        print(f"CPU: {describe_cpu()}")
        print(f"torch threads {torch.get_num_threads()}; shards {shards} "
              f"(seq {seq_len}, {max_pred} predictions); model {config['num_hidden_layers']} layers, hidden "
              f"{config['hidden_size']}; micro-batch {args.micro_batch}; {args.steps} timed steps after "
              f"{args.warmup}", flush=True)
        trainers = {name: build_trainer(shards, work, config, args.micro_batch, seq_len, max_pred, extra)
                    for name, extra in (("padded", []), (f"bins of {args.bin_size}", [f"--bin_size={args.bin_size}"]))}
        print_corpus(trainers["padded"])
        results = measure(trainers, args.steps, args.warmup)
        for name, trainer in trainers.items():
            results[name]["epoch_padded"], results[name]["epoch_slots"] = epoch_padding(trainer)
        masking = masking_cost(trainers["padded"], vocab, batches=max(args.steps, 20))
        binned_epoch, padded_epoch, per_width = epoch_estimate(trainers[f"bins of {args.bin_size}"], args.reps)
        print(f"| {'batches':<12} | {'padded tokens per step (run)':>28} | {'padded tokens per step (epoch)':>30} "
              f"| {'tokens computed per step (run / epoch)':>38} | {'s/step':>7} | {'sequences/s':>11} | "
              f"{'per CPU s':>9} |")
        for name, r in results.items():
            print(f"| {name:<12} | {r['padded_per_step']:>28.0f} | {r['epoch_padded']:>30.0f} "
                  f"| {r['slots_per_step']:>18.0f} / {r['epoch_slots']:>17.0f} | {r['step_s']:>7.3f} | "
                  f"{r['seq_per_s']:>11.2f} | {r['cpu_seq_per_s']:>9.2f} |")
        padded, binned = results.values()
        print(f"speed-up of bins: {binned['seq_per_s'] / padded['seq_per_s']:.2f}x sequences/s "
              f"({binned['cpu_seq_per_s'] / padded['cpu_seq_per_s']:.2f}x per CPU second); tokens computed per "
              f"step over an epoch {binned['epoch_slots'] / padded['epoch_slots']:.2f}x of padded")
        print("CPU seconds per optimizer step by batch width: " + ", ".join(
            f"{width}: {sec:.2f}" for width, sec in per_width.items()))
        print(f"over a whole epoch (per-width step times × the epoch's batch widths): bins {binned_epoch:.2f}, "
              f"padded {padded_epoch:.2f} sequences per CPU second: speed-up {binned_epoch / padded_epoch:.2f}x")
        step_ms = padded["step_s"] * 1000
        print("dynamic masking per micro-batch: " + "; ".join(
            f"{name} {ms:.2f} ms ({ms / step_ms * 100:.2f}% of a padded step)" for name, ms in masking.items()))


if __name__ == "__main__":
    run_main(main)
