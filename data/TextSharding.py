"""Split documents into sentences and spread whole documents over balanced train/test text shards.

Input: files with one document (article, book) per non-blank line. Output:
`<prefix>_training_<i>.txt` and `<prefix>_test_<i>.txt`, one sentence per line, a blank line after
each document — the input format of create_pretraining_data.py.

Differences from the original's TextSharding (which held every article and sentence in memory and
could loop forever while balancing, NVIDIA/DeepLearningExamples#1083 and #489):
  * Two passes over the data. Pass 1 segments each document (in parallel) and streams its sentences
    to a temporary spool file, keeping only (offset, bytes, sentence count) per document. Pass 2
    copies each shard's documents from the spool.
  * Assignment is a single greedy pass, so it always terminates: documents in decreasing sentence
    count (ties in a seeded random order) each go to the shard that is currently least full relative
    to its target (training targets share (1 - fraction_test_set) of all sentences, test targets the
    rest). This is the "longest processing time first" rule; every shard ends within one document of
    its target when documents are small compared with shards.
"""
from __future__ import annotations

import heapq
import os
import random
import sys
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from atomic_io import atomic_path
from data.sentence_split import canonical_method, split_sentences
from data.TextFormatting import read_text_lenient
from data.workers import worker_pool
from input_checks import InputError

DOCUMENTS_PER_TASK = 64


@dataclass
class SpooledCorpus:
    """Where each document's sentences sit in the spool file, and how many there are."""

    path: Path
    offsets: array  # byte offset of each document's first sentence
    sizes: array  # bytes of each document's sentence block
    counts: array  # sentences in each document

    @property
    def total_sentences(self) -> int:
        return sum(self.counts)


@dataclass
class ShardPlan:
    training: list[list[int]]  # document indices of each training shard, ascending
    test: list[list[int]]


def iter_documents(input_files: Iterable[str | os.PathLike]) -> Iterator[str]:
    for path in input_files:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: input file not found")
        for line in read_text_lenient(path):
            line = line.strip()
            if line:
                yield line


def _split_batch(task: tuple[str, list[str]]) -> list[list[str]]:
    method, documents = task
    return [split_sentences(document, method) for document in documents]


def _batches(documents: Iterator[str], size: int) -> Iterator[list[str]]:
    while True:
        batch = list(islice(documents, size))
        if not batch:
            return
        yield batch


def _segmented(documents: Iterator[str], method: str, n_processes: int) -> Iterator[list[str]]:
    """Sentences of each document, in input order; at most a few batches in flight at a time."""
    if n_processes <= 1:
        for batch in _batches(documents, DOCUMENTS_PER_TASK):
            yield from _split_batch((method, batch))
        return
    with worker_pool(n_processes) as pool:
        window = n_processes * 4
        tasks = ((method, batch) for batch in _batches(documents, DOCUMENTS_PER_TASK))
        while True:
            chunk = list(islice(tasks, window))
            if not chunk:
                return
            for result in pool.map(_split_batch, chunk):
                yield from result


def spool_sentences(
    input_files: Iterable[str | os.PathLike], spool_path: Path, method: str = "punkt", n_processes: int = 1
) -> SpooledCorpus:
    """Pass 1: write every document's sentences (one per line) to `spool_path` and index them."""
    offsets, sizes, counts = array("q"), array("q"), array("l")
    with open(spool_path, "wb") as spool:
        for sentences in _segmented(iter_documents(input_files), method, n_processes):
            block = "".join(" ".join(s.split()) + "\n" for s in sentences).encode("utf-8")
            if not block:
                continue
            offsets.append(spool.tell())
            sizes.append(len(block))
            counts.append(len(sentences))
            spool.write(block)
    return SpooledCorpus(spool_path, offsets, sizes, counts)


def _check_shard_counts(n_documents: int, n_training: int, n_test: int) -> None:
    if n_training < 0 or n_test < 0 or n_training + n_test == 0:
        raise InputError("--n_training_shards and --n_test_shards must be >= 0 and not both 0")
    if n_documents == 0:
        raise InputError("the input holds no documents (no non-blank lines with any sentence)")
    if n_training + n_test > n_documents:
        raise InputError(
            f"{n_documents} document(s) cannot fill {n_training} training + {n_test} test shards "
            "(each shard needs at least one whole document); lower --n_training_shards/--n_test_shards"
        )


def _effective_test_fraction(n_training: int, n_test: int, fraction_test: float) -> float:
    if n_test == 0:
        if fraction_test > 0:
            print("warning: --n_test_shards 0: --fraction_test_set is ignored, every document is training data",
                  file=sys.stderr, flush=True)
        return 0.0
    if n_training == 0:
        return 1.0
    if not 0.0 < fraction_test < 1.0:
        raise InputError(f"--fraction_test_set must be in (0, 1) when there are test shards, got {fraction_test}")
    return fraction_test


def plan_shards(
    counts: array | list[int], n_training: int, n_test: int, fraction_test: float, seed: int = 12345
) -> ShardPlan:
    """Greedy longest-first assignment of documents to shards by sentence count (always terminates)."""
    _check_shard_counts(len(counts), n_training, n_test)
    fraction_test = _effective_test_fraction(n_training, n_test, fraction_test)
    total = sum(counts)
    targets = [(1.0 - fraction_test) * total / n_training] * n_training if n_training else []
    targets += [fraction_test * total / n_test] * n_test if n_test else []
    order = list(range(len(counts)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -counts[i])  # stable: equal counts keep the seeded random order
    loads = [0] * len(targets)
    members: list[list[int]] = [[] for _ in targets]
    heap = [(0.0, shard) for shard in range(len(targets))]
    for document in order:
        _, shard = heapq.heappop(heap)
        members[shard].append(document)
        loads[shard] += counts[document]
        heapq.heappush(heap, (loads[shard] / targets[shard], shard))
    members = [sorted(m) for m in members]
    return ShardPlan(training=members[:n_training], test=members[n_training:])


def shard_path(prefix: str | os.PathLike, split: str, index: int) -> Path:
    return Path(f"{prefix}_{split}_{index}.txt")


def _write_shard(corpus: SpooledCorpus, documents: list[int], output: Path) -> None:
    with open(corpus.path, "rb") as spool, atomic_path(output) as tmp, open(tmp, "wb") as out:
        for document in documents:
            spool.seek(corpus.offsets[document])
            out.write(spool.read(corpus.sizes[document]))
            out.write(b"\n")


def write_shards(corpus: SpooledCorpus, plan: ShardPlan, prefix: str | os.PathLike) -> list[Path]:
    """Pass 2: each shard file written atomically from the spool."""
    written = []
    for split, shards in (("training", plan.training), ("test", plan.test)):
        for index, documents in enumerate(shards):
            path = shard_path(prefix, split, index)
            _write_shard(corpus, documents, path)
            written.append(path)
    return written


def describe(plan: ShardPlan, counts: array | list[int]) -> str:
    parts = []
    for split, shards in (("training", plan.training), ("test", plan.test)):
        if shards:
            sizes = [sum(counts[d] for d in shard) for shard in shards]
            parts.append(f"{split}: {len(shards)} shards, {sum(sizes)} sentences, "
                         f"per shard min {min(sizes)} / mean {sum(sizes) / len(sizes):.1f} / max {max(sizes)}")
    return "; ".join(parts)


class Sharding:
    """The original's entry point, kept: `Sharding(...).run()` writes all shards."""

    def __init__(
        self,
        input_files: list[str | os.PathLike],
        output_name_prefix: str | os.PathLike,
        n_training_shards: int,
        n_test_shards: int,
        fraction_test_set: float,
        segmentation_method: str = "punkt",
        n_processes: int = 1,
        seed: int = 12345,
    ):
        self.input_files = [Path(p) for p in input_files]
        self.prefix = Path(output_name_prefix)
        self.n_training_shards = n_training_shards
        self.n_test_shards = n_test_shards
        self.fraction_test_set = fraction_test_set
        self.method = canonical_method(segmentation_method)
        self.n_processes = n_processes
        self.seed = seed

    def run(self) -> ShardPlan:
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        fd, spool_name = tempfile.mkstemp(prefix=".tmp-sentences-", dir=self.prefix.parent)
        os.close(fd)
        spool = Path(spool_name)
        try:
            corpus = spool_sentences(self.input_files, spool, self.method, self.n_processes)
            print(f"segmented {len(corpus.counts)} documents into {corpus.total_sentences} sentences", flush=True)
            plan = plan_shards(corpus.counts, self.n_training_shards, self.n_test_shards,
                               self.fraction_test_set, self.seed)
            write_shards(corpus, plan, self.prefix)
            print(describe(plan, corpus.counts), flush=True)
            return plan
        finally:
            spool.unlink(missing_ok=True)
