"""Latency and throughput of a BERT tensor model on a Triton server (what the original ran perf_client for).

    python triton/perf.py -u localhost:8001 -i grpc -m bert --batch-sizes 1 8 --concurrency 1 2 4 \\
        --seq-length 384 --output-dir results/perf

For every batch size × concurrency, `concurrency` clients send requests back to back (each waits
for its answer before sending the next) until --requests requests have been answered, after
--warmup requests that are not counted. Reports latency percentiles p50/p90/p95/p99 (ms) per
request and throughput in sequences per second, as a table on stdout, perf.csv / perf.json and a
PNG plot (perf.png) in --output-dir. Inputs are real SQuAD windows with --predict_file, else
random tokens of the requested length.
"""
from __future__ import annotations

import argparse
import csv
import threading
import time
from pathlib import Path
from typing import Any

import bert_io
import client_lib
import numpy as np

from atomic_io import atomic_path, atomic_write_json
from input_checks import InputError, run_main

PERCENTILES = (50, 90, 95, 99)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    client_lib.add_connection_args(parser, model_default="bert")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seq-length", type=int, default=384)
    parser.add_argument("--requests", type=int, default=20, help="measured requests per setting")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests per setting")
    parser.add_argument("--max-latency", type=float, default=None, metavar="MS",
                        help="stop raising the concurrency of a batch size after a setting whose average "
                             "latency exceeds MS (perf_client's -l in its concurrency sweep)")
    parser.add_argument("--output-dir", type=Path, default=Path("results/perf"))
    parser.add_argument("--predict_file", default=None, help="take inputs from this SQuAD json (needs --vocab_file)")
    parser.add_argument("--vocab_file", default=None)
    parser.add_argument("--do_lower_case", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or min(args.concurrency) < 1 or args.requests < 1 or args.seq_length < 2:
        parser.error("batch sizes, concurrency, --requests must be >= 1 and --seq-length >= 2")
    if args.predict_file and not args.vocab_file:
        parser.error("--predict_file needs --vocab_file")
    return args


def input_pool(args: argparse.Namespace, rows: int) -> dict[str, np.ndarray]:
    """`rows` model input rows to draw batches from."""
    if not args.predict_file:
        return bert_io.random_token_batch(np.random.default_rng(args.seed), rows, args.seq_length)
    from processors import squad
    from tokenization import FullTokenizer

    tokenizer = FullTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
    examples = squad.read_squad_examples(args.predict_file, is_training=False)[:rows]
    features = squad.convert_examples_to_features(examples, tokenizer, max_seq_length=args.seq_length)[:rows]
    arrays = bert_io.feature_arrays(features)
    repeats = -(-rows // len(features))
    return {name: np.concatenate([array] * repeats)[:rows] for name, array in arrays.items()}


def measure(model: client_lib.TritonModel, pool: dict[str, np.ndarray], batch_size: int, concurrency: int,
            requests: int, warmup: int) -> dict[str, Any]:
    """Closed-loop load: `concurrency` clients, each with one request in flight."""
    rows = len(pool["input_ids"])
    batches = [{k: v[(i * batch_size) % rows:][:batch_size] for k, v in pool.items()} for i in range(concurrency)]
    for batch in batches:
        if len(batch["input_ids"]) < batch_size:
            raise InputError(f"batch size {batch_size} is larger than the {rows} input rows available")
    latencies: list[float] = []
    lock = threading.Lock()
    counter = {"sent": 0}
    errors: list[str] = []
    warmed_up = threading.Barrier(concurrency + 1)

    def worker(batch: dict[str, np.ndarray]) -> None:
        try:
            for _ in range(warmup):
                model.infer(batch)
        except client_lib.ServerError as exc:
            errors.append(str(exc))
        warmed_up.wait()
        while True:
            with lock:
                if counter["sent"] >= requests or errors:
                    return
                counter["sent"] += 1
            start = time.perf_counter()
            try:
                model.infer(batch)
            except client_lib.ServerError as exc:
                errors.append(str(exc))
                return
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    warmed_up.wait()  # the clock starts when every client has finished its warm-up
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise client_lib.ServerError(errors[0])
    ms = np.array(latencies) * 1000.0
    row: dict[str, Any] = {"batch_size": batch_size, "concurrency": concurrency, "requests": len(latencies),
                           "sequences_per_second": batch_size * len(latencies) / wall,
                           "avg_ms": float(ms.mean())}
    row.update({f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES})
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ["batch", "concurrency", "seq/s"] + [f"p{p} ms" for p in PERCENTILES] + ["avg ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["batch_size"]), str(row["concurrency"]), f"{row['sequences_per_second']:.2f}"]
        cells += [f"{row[f'p{p}_ms']:.1f}" for p in PERCENTILES] + [f"{row['avg_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for batch in sorted({r["batch_size"] for r in rows}):
        series = sorted((r for r in rows if r["batch_size"] == batch), key=lambda r: r["concurrency"])
        concurrency = [r["concurrency"] for r in series]
        (line,) = left.plot(concurrency, [r["sequences_per_second"] for r in series], marker="o",
                            label=f"batch {batch}")
        throughput = [r["sequences_per_second"] for r in series]
        right.plot(throughput, [r["p99_ms"] for r in series], marker="o", color=line.get_color(),
                   label=f"batch {batch} p99")
        right.plot(throughput, [r["p50_ms"] for r in series], marker=".", linestyle="--", color=line.get_color(),
                   label=f"batch {batch} p50")
    left.set(xlabel="concurrent requests", ylabel="sequences / s", title="throughput")
    right.set(xlabel="sequences / s", ylabel="latency per request (ms)", title="latency vs throughput")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    model = client_lib.open_model(args)
    if "input_ids" not in model.inputs:
        raise InputError(f"model {model.name!r} does not take token tensors; name the tensor model with -m")
    pool = input_pool(args, max(args.batch_sizes) * max(args.concurrency))
    rows = []
    for batch_size in args.batch_sizes:
        for concurrency in args.concurrency:
            row = measure(model, pool, batch_size, concurrency, args.requests, args.warmup)
            rows.append(row)
            print(f"batch {batch_size}, concurrency {concurrency}: {row['sequences_per_second']:.2f} seq/s, "
                  f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms", flush=True)
            if args.max_latency is not None and row["avg_ms"] > args.max_latency:
                print(f"batch {batch_size}: average latency {row['avg_ms']:.1f} ms is above --max-latency "
                      f"{args.max_latency:g} ms; no higher concurrency", flush=True)
                break
    print(format_table(rows))
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "perf.csv")
    atomic_write_json(out / "perf.json", {"model": args.model_name, "protocol": args.protocol,
                                          "seq_length": args.seq_length, "results": rows})
    plot(rows, out / "perf.png", f"{args.model_name} over {args.protocol}, sequence length {args.seq_length}")
    print(f"wrote {out / 'perf.csv'}, {out / 'perf.json'}, {out / 'perf.png'}")
    return rows


if __name__ == "__main__":
    run_main(main)
