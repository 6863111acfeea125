"""fp32 CPU matrix products of BERT's linears: torch's BLAS (MKL, `--cpu_gemm aten`) against oneDNN
(`--cpu_gemm onednn`), per product of a linear (forward, input gradient, weight gradient).

    python benchmarks/bench_cpu_gemm.py [--threads 2] [--rows 1024] [--hidden 768] [--repeats 8]

This is the measurement behind `--cpu_gemm auto`'s fixed rule (oneDNN where torch runs AVX-512
kernels, torch's BLAS elsewhere): run it on a CPU of yours to see whether the rule suits it. Each product
is timed `--repeats` times after one warm-up call, the two libraries in turns; the fastest call of each is
reported. Rows are tokens: 1,024 is a pretraining micro-batch of 8 × 128, 384 one SQuAD window.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from cpu_info import describe_cpu

from bert_kernels import _onednn_matmul_t, onednn_linear_available
from input_checks import InputError, run_main

Product = Callable[[], torch.Tensor]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--rows", type=int, default=1024, help="tokens per product")
    parser.add_argument("--hidden", type=int, default=768, help="hidden size (the FFN is 4x)")
    parser.add_argument("--repeats", type=int, default=8, help="timed calls per product and library")
    return parser.parse_args(argv)


def fastest_call_ms(products: dict[str, Product], repeats: int) -> dict[str, float]:
    """The fastest of `repeats` calls of each product, in milliseconds, the products called in turns."""
    for product in products.values():
        product()
    best = {name: float("inf") for name in products}
    for _ in range(repeats):
        for name, product in products.items():
            start = time.perf_counter()
            product()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds * 1e3 for name, seconds in best.items()}


def linear_products(rows: int, fan_in: int, fan_out: int) -> dict[str, tuple[Product, Product]]:
    """Each of a linear's three products as (torch's BLAS, oneDNN), on random fp32 operands."""
    x, weight, grad = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in), torch.randn(rows, fan_out)
    return {
        "forward": (lambda: torch.mm(x, weight.t()), lambda: _onednn_matmul_t(x, weight)),
        "input_grad": (lambda: torch.mm(grad, weight), lambda: _onednn_matmul_t(grad, weight.t())),
        "weight_grad": (lambda: torch.mm(grad.t(), x), lambda: _onednn_matmul_t(grad.t(), x.t())),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if min(args.threads, args.rows, args.hidden, args.repeats) < 1:
        raise InputError("--threads, --rows, --hidden and --repeats must be at least 1")
    if not onednn_linear_available():
        raise InputError("this torch build has no oneDNN linear: there is nothing to compare")
    torch.set_num_threads(args.threads)
    h = args.hidden
    print(f"fp32 GEMMs, {args.rows} rows, {args.threads} threads, torch {torch.__version__} "
          f"(CPU capability {torch.backends.cpu.get_cpu_capability()})")
    print(f"CPU: {describe_cpu()}")
    print("| linear | product | torch BLAS ms | oneDNN ms | oneDNN speed vs BLAS |")
    print("|---|---|---|---|---|")
    totals = {"aten": 0.0, "onednn": 0.0}
    for fan_in, fan_out in ((h, h), (h, 3 * h), (h, 4 * h), (4 * h, h)):
        for name, (blas, onednn) in linear_products(args.rows, fan_in, fan_out).items():
            ms = fastest_call_ms({"aten": blas, "onednn": onednn}, args.repeats)
            totals["aten"] += ms["aten"]
            totals["onednn"] += ms["onednn"]
            print(f"| {fan_in} → {fan_out} | {name} | {ms['aten']:.2f} | {ms['onednn']:.2f} | "
                  f"{ms['aten'] / ms['onednn']:.2f}x |")
    print(f"| sum of the rows | | {totals['aten']:.2f} | {totals['onednn']:.2f} | "
          f"{totals['aten'] / totals['onednn']:.2f}x |")


if __name__ == "__main__":
    run_main(main)
