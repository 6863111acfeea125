"""Pretraining-data creation speed: create_pretraining_data.py against the plain reference port.

    python benchmarks/bench_create_pretraining_data.py [--data-dir ../shared/data] [--dupe-factor 5]

Builds sentence-per-line text (WikiText-2 test articles and a few Gutenberg books, split into
sentences, a blank line between documents) and makes phase-1 instances (seq 128, 20 predictions,
bertPrep's dupe factor 5) from the same text with:

* the reference port (benchmarks/reference_create_pretraining_data.py): the original's code path,
  one process, the pure-Python tokenizer line by line, token-string instances, row-by-row arrays;
* ours in one process (create_hdf5_from_text);
* ours over all cores: one shard per input file on bertPrep's process pool (what
  `bertPrep.py --action create_hdf5_files` runs), against ours over the same files one after another,
  on this text and on the files repeated to --large-megabytes (50 MB): the pool is sized from the
  work, so it must be no slower than one process on the small corpus and use the cores on the large.

Each measurement runs in a fresh process. It prints wall times, instances/s and ratios, a phase
breakdown, and fails unless ours wrote exactly the reference's arrays (so identical statistics).
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from cpu_info import describe_cpu

from input_checks import InputError, run_main

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = ROOT.parent / "shared" / "data"
BOOKS = ("austen-emma.txt", "austen-persuasion.txt", "chesterton-brown.txt", "melville-moby_dick.txt",
         "shakespeare-hamlet.txt", "whitman-leaves.txt")
PARAGRAPHS_PER_BOOK_DOCUMENT = 40  # books become documents of this many paragraphs (chapter-sized)
SETTINGS = dict(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15, short_seq_prob=0.1,
                random_seed=12345, do_lower_case=True, do_whole_word_mask=False)


# --------------------------------------------------------------------------------------------
# Benchmark text
# --------------------------------------------------------------------------------------------


def wikitext_documents(path: Path) -> list[list[str]]:
    """Articles (a ' = Title = ' line starts one) as paragraphs; headings dropped."""
    articles: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("= ") and not line.startswith("= ="):
            articles.append([])
        elif line and not line.startswith("=") and articles:
            articles[-1].append(line)
    return [article for article in articles if article]


def book_documents(path: Path) -> list[list[str]]:
    """A book's paragraphs (blank-line separated, lines joined) in documents of a few dozen paragraphs."""
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    paragraphs = [" ".join(block.split()) for block in text.split("\n\n") if block.strip()]
    step = PARAGRAPHS_PER_BOOK_DOCUMENT
    return [paragraphs[start:start + step] for start in range(0, len(paragraphs), step)]


def write_sentence_file(documents: list[list[str]], output: Path, split) -> None:
    with output.open("w", encoding="utf-8") as out:
        for paragraphs in documents:
            sentences = [sentence for paragraph in paragraphs for sentence in split(paragraph)]
            out.write("\n".join(sentences) + "\n\n")


def prepare_text(data_dir: Path, workdir: Path) -> list[Path]:
    from data.sentence_split import get_splitter

    wikitext = data_dir / "corpus" / "wikitext-2-raw" / "wiki.test.raw"
    books = [data_dir / "corpus" / "gutenberg" / name for name in BOOKS]
    missing = [str(path) for path in [wikitext, *books] if not path.is_file()]
    if missing:
        raise InputError(f"benchmark text not found: {missing[0]} (pass --data-dir)")
    split = get_splitter("regex")
    files = []
    for name, documents in [("wikitext-2-test", wikitext_documents(wikitext))] + [
            (book.stem, book_documents(book)) for book in books]:
        files.append(workdir / f"{name}.txt")
        write_sentence_file(documents, files[-1], split)
    return files


# --------------------------------------------------------------------------------------------
# Measurements (each in a fresh process)
# --------------------------------------------------------------------------------------------


def measure_reference(input_file: str, vocab_file: str, dupe_factor: int, output_file: str) -> dict:
    import reference_create_pretraining_data as ref

    import tokenization

    tokenizer = tokenization.FullTokenizer(vocab_file, do_lower_case=True, fast=False)
    phases = {}
    cpu = time.process_time()
    start = time.perf_counter()
    documents = ref.read_documents([input_file], tokenizer)
    phases["read + tokenize"] = time.perf_counter() - start
    rng = random.Random(SETTINGS["random_seed"])
    rng.shuffle(documents)
    vocab_words = list(tokenizer.vocab.keys())
    instances = []
    for _ in range(dupe_factor):
        for index in range(len(documents)):
            instances.extend(ref.create_instances_from_document(
                documents, index, SETTINGS["max_seq_length"], SETTINGS["short_seq_prob"], SETTINGS["masked_lm_prob"],
                SETTINGS["max_predictions_per_seq"], vocab_words, rng, False))
    rng.shuffle(instances)
    phases["instances"] = time.perf_counter() - start - sum(phases.values())
    arrays = ref.instances_to_arrays(instances, tokenizer, SETTINGS["max_seq_length"],
                                     SETTINGS["max_predictions_per_seq"])
    phases["arrays"] = time.perf_counter() - start - sum(phases.values())
    ref.write_hdf5(arrays, output_file)
    phases["write"] = time.perf_counter() - start - sum(phases.values())
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "instances": len(instances),
            "phases": phases}


def measure_ours(input_file: str, vocab_file: str, dupe_factor: int, output_file: str, warmup_file: str) -> dict:
    from data import shard_creation as cpd

    # Load the compiled functions and the tokenizer once, as a pool worker or a long run would.
    cpd.create_hdf5_from_text(warmup_file, output_file, vocab_file, dupe_factor=1, **SETTINGS)
    tokenizer = cpd.load_tokenizer(vocab_file, True)
    options = cpd.InstanceOptions(SETTINGS["max_seq_length"], SETTINGS["max_predictions_per_seq"],
                                  SETTINGS["masked_lm_prob"], SETTINGS["short_seq_prob"], dupe_factor)
    phases = {}
    cpu = time.process_time()
    start = time.perf_counter()
    corpus = cpd.read_corpus(cpd.expand_input_files(input_file), tokenizer)
    phases["read + tokenize"] = time.perf_counter() - start
    arrays = cpd.create_instance_arrays(corpus, cpd.VocabIds.from_tokenizer(tokenizer, vocab_file), options,
                                        SETTINGS["random_seed"])
    phases["instances + arrays"] = time.perf_counter() - start - sum(phases.values())
    cpd.write_shard(arrays, output_file)
    phases["write"] = time.perf_counter() - start - sum(phases.values())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # The public entry point end to end on the same text (what bertPrep calls per shard).
    start = time.perf_counter()
    summary = cpd.create_hdf5_from_text(input_file, output_file, vocab_file, dupe_factor=dupe_factor, **SETTINGS)
    return {"seconds": seconds, "cpu": cpu, "instances": summary.instances, "phases": phases,
            "entry_point_seconds": time.perf_counter() - start}


def measure_ours_files(files: list[str], vocab_file: str, dupe_factor: int, outdir: str, processes: int) -> dict:
    """Ours over every file, one shard each: one after another (processes=1) or on bertPrep's pool."""
    from data import shard_creation as cpd
    from data.bertPrep import run_hdf5_jobs

    jobs = [dict(input_files=[name], output_file=str(Path(outdir) / f"{Path(name).stem}_{processes}.hdf5"),
                 vocab_file=vocab_file, dupe_factor=dupe_factor, **SETTINGS) for name in files]
    cpu = time.process_time()
    start = time.perf_counter()
    if processes == 1:
        instances = sum(cpd.create_hdf5_from_text(**job).instances for job in jobs)
    else:
        failures = run_hdf5_jobs(jobs, processes)
        if failures:
            raise RuntimeError(f"pool run failed: {failures}")
        instances = sum(_rows(job["output_file"]) for job in jobs)
    # CPU of this process only: the pool's workers are not counted.
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu if processes == 1 else None,
            "instances": instances}


def repeat_files(files: list[Path], factor: float, outdir: Path) -> list[Path]:
    """Each file's text repeated about `factor` times (whole documents), as a larger corpus of as many files."""
    outdir.mkdir()
    repeats = max(1, round(factor))
    copies = []
    for path in files:
        copy = outdir / path.name
        text = path.read_text(encoding="utf-8").strip("\n")
        copy.write_text("\n\n".join([text] * repeats) + "\n", encoding="utf-8")
        copies.append(copy)
    return copies


def measure_import() -> float:
    """Seconds a new Python process spends importing data.shard_creation:
    what each pool worker pays before its first shard."""
    code = "import time; s = time.perf_counter(); import data.shard_creation; print(time.perf_counter() - s)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(result.stdout.strip())


def _rows(path: str) -> int:
    import h5py

    with h5py.File(path, "r") as shard:
        return int(shard["next_sentence_labels"].shape[0])


def in_fresh_process(function, *args) -> dict:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def pool_against_one_process(files: list[str], vocab: str, args: argparse.Namespace, outdir: str) -> tuple[dict, dict]:
    """The fastest of `args.rounds` runs of the files one after another in one process, and of the same on
    bertPrep's pool, alternating, each run in a new process (so each pays the start-up a real run pays)."""
    one: list[dict] = []
    pool: list[dict] = []
    for _ in range(max(1, args.rounds)):
        for processes, results in ((1, one), (args.processes, pool)):
            results.append(in_fresh_process(measure_ours_files, files, vocab, args.dupe_factor, outdir, processes))
    return min(one, key=lambda run: run["seconds"]), min(pool, key=lambda run: run["seconds"])


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def compare_shards(reference_file: str, ours_file: str) -> tuple[bool, dict, dict]:
    from data.inspect_hdf5 import shard_statistics
    from data.pretraining_dataset import read_shard

    ref, ours = read_shard(reference_file), read_shard(ours_file)
    identical = all(ref[key].shape == ours[key].shape and (ref[key] == ours[key]).all() for key in ref)
    return identical, shard_statistics(ref, mask_id=103), shard_statistics(ours, mask_id=103)


def print_table(rows: list[tuple[str, dict]], baseline: dict) -> None:
    """Wall time and, where one process did all the work, its CPU time (the fairer number on a busy machine)."""
    wall_rate = baseline["instances"] / baseline["seconds"]
    cpu_rate = baseline["instances"] / baseline["cpu"]
    print(f"| {'run':<56} | {'wall s':>7} | {'inst/s':>7} | {'vs ref':>7} | {'CPU s':>6} | {'CPU vs ref':>10} |")
    print(f"|{'-' * 58}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 8}|{'-' * 12}|")
    for name, run in rows:
        rate = run["instances"] / run["seconds"]
        cpu = run.get("cpu")
        cpu_cells = (f"{cpu:>6.2f} | {run['instances'] / cpu / cpu_rate:>9.2f}x" if cpu else f"{'-':>6} | {'-':>10}")
        print(f"| {name:<56} | {run['seconds']:>7.2f} | {rate:>7.0f} | {rate / wall_rate:>6.2f}x | {cpu_cells} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--dupe-factor", type=int, default=5)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="pool size for the all-cores run")
    parser.add_argument("--large-megabytes", type=float, default=50.0,
                        help="also time one process against the pool on this much text (the files repeated); 0: skip")
    parser.add_argument("--rounds", type=int, default=3,
                        help="pool-vs-one-process comparison: rounds of both, alternating, each in a new process; "
                             "the fastest of each is reported (one run of a few seconds moved by 20%% on a quiet "
                             "machine)")
    args = parser.parse_args(argv)
    vocab = args.data_dir / "vocab" / "bert-base-uncased-vocab.txt"
    sample = args.data_dir / "corpus" / "bert_sample_text.txt"
    if not vocab.is_file() or not sample.is_file():
        raise InputError(f"vocab or sample text not found under {args.data_dir} (pass --data-dir)")

    with tempfile.TemporaryDirectory(prefix="bench_cpd_") as tmp:
        workdir = Path(tmp)
        files = prepare_text(args.data_dir, workdir)
        combined = workdir / "combined.txt"
        combined.write_text("".join(path.read_text(encoding="utf-8") for path in files), encoding="utf-8")
        megabytes = combined.stat().st_size / 1e6
        print(f"text: {len(files)} files, {megabytes:.1f} MB, sentence per line; seq 128, 20 predictions, "
              f"dupe_factor {args.dupe_factor}, seed {SETTINGS['random_seed']}; {os.cpu_count()} CPUs")
        print(f"CPU: {describe_cpu()}")

        ref_out, ours_out = str(workdir / "reference.hdf5"), str(workdir / "ours.hdf5")
        reference = in_fresh_process(measure_reference, str(combined), str(vocab), args.dupe_factor, ref_out)
        ours = in_fresh_process(measure_ours, str(combined), str(vocab), args.dupe_factor, ours_out, str(sample))
        sequential, pooled = pool_against_one_process([str(f) for f in files], str(vocab), args, tmp)
        identical, ref_stats, our_stats = compare_shards(ref_out, ours_out)
        startup = measure_import()
        pool_rows = [(megabytes, sequential, pooled)]
        if args.large_megabytes > 0:
            large = repeat_files(files, args.large_megabytes / megabytes, workdir / "large")
            large_mb = sum(path.stat().st_size for path in large) / 1e6
            files = [str(f) for f in large]
            pool_rows.append((large_mb, *pool_against_one_process(files, str(vocab), args, tmp)))

    print()
    print_table([
        ("reference port, 1 process (pure-Python tokenizer)", reference),
        ("ours, 1 process", ours),
        ("ours, 1 process, create_hdf5_from_text end to end",
         {"seconds": ours["entry_point_seconds"], "instances": ours["instances"]}),
        (f"ours, {len(files)} files one after another, 1 process", sequential),
        (f"ours, {len(files)} files on a {args.processes}-process pool (bertPrep)", pooled),
    ], reference)
    print(f"\nbertPrep's pool (sized from the work: {args.processes} processes at most) vs one process:")
    print(f"| {'text':>7} | {'files':>5} | {'1 process s':>11} | {'pool s':>7} | {'pool vs 1 process':>17} |")
    print(f"|{'-' * 9}|{'-' * 7}|{'-' * 13}|{'-' * 9}|{'-' * 19}|")
    for size, one, pool in pool_rows:
        print(f"| {size:>5.1f}MB | {len(files):>5} | {one['seconds']:>11.2f} | {pool['seconds']:>7.2f} | "
              f"{one['seconds'] / pool['seconds']:>16.2f}x |")
    print(f"\nimporting data.shard_creation in a new process (each pool worker pays it once): "
          f"{startup:.1f} s")
    print("\nphases (s):")
    print("  reference: " + ", ".join(f"{k} {v:.2f}" for k, v in reference["phases"].items()))
    print("  ours:      " + ", ".join(f"{k} {v:.2f}" for k, v in ours["phases"].items()))
    print("\nstatistics (reference / ours):")
    for key in ref_stats:
        print(f"  {key:<20} {ref_stats[key]:>12.4f} {our_stats[key]:>12.4f}")
    print(f"\nidentical arrays: {'yes' if identical else 'NO'}")
    if not identical:
        raise SystemExit("ours differs from the reference port on the same text and seed")


if __name__ == "__main__":
    run_main(main)
