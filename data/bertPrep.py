"""Data preparation for BERT pretraining and fine-tuning: one command per step.

    python data/bertPrep.py --action download        --dataset wikicorpus_en
    python data/bertPrep.py --action text_formatting --dataset wikicorpus_en
    python data/bertPrep.py --action sharding        --dataset wikicorpus_en
    python data/bertPrep.py --action create_vocab    --dataset wikicorpus_en --vocab_size 30522   (optional)
    python data/bertPrep.py --action create_hdf5_files --dataset wikicorpus_en --vocab_file VOCAB \
        --max_seq_length 128 --max_predictions_per_seq 20

Everything lives under the working directory (--working_dir, else $BERT_PREP_WORKING_DIR, else this
folder), with the original's layout: download/, extracted/, formatted_one_article_per_line/,
sharded_training_shards_<n>_test_shards_<m>_fraction_<f>/<dataset>/,
hdf5_lower_case_<0|1>_seq_len_<S>_max_pred_<M>_masked_lm_prob_<p>_random_seed_<r>_dupe_factor_<d>/<dataset>/.
See data/README.md for every flag.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from atomic_io import atomic_write_text
from data.sentence_split import ALIASES, METHODS
from data.workers import stop_workers_on_sigterm, worker_pool
from input_checks import InputError, run_main

DATA_DIR = Path(__file__).resolve().parent

ACTIONS = ("download", "text_formatting", "sharding", "create_vocab", "create_hdf5_files", "create_tfrecord_files")
DOWNLOADABLE = (
    "wikicorpus_en", "wikicorpus_zh", "bookscorpus", "google_pretrained_weights", "weights",
    "nvidia_pretrained_weights", "squad", "glue", "mrpc", "sst-2", "demo", "all",
)
FORMATTED_NAMES = {
    "bookscorpus": "bookscorpus_one_book_per_line.txt",
    "wikicorpus_en": "wikicorpus_en_one_article_per_line.txt",
    "wikicorpus_zh": "wikicorpus_zh_one_article_per_line.txt",
    "demo": "demo_one_article_per_line.txt",
}
CORPUS_PARTS = {
    "bookscorpus": ("bookscorpus",),
    "wikicorpus_en": ("wikicorpus_en",),
    "wikicorpus_zh": ("wikicorpus_zh",),
    "books_wiki_en_corpus": ("bookscorpus", "wikicorpus_en"),
    "demo": ("demo",),
}
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Layout:
    """The folders of one bertPrep configuration (names as in the original)."""

    working_dir: Path
    download: Path
    extracted: Path
    formatted: Path
    sharded: Path
    hdf5: Path
    vocab: Path


def layout_for(args: argparse.Namespace) -> Layout:
    root = Path(args.working_dir or os.environ.get("BERT_PREP_WORKING_DIR") or DATA_DIR).resolve()
    sharded = (f"sharded_training_shards_{args.n_training_shards}_test_shards_{args.n_test_shards}"
               f"_fraction_{args.fraction_test_set}")
    hdf5 = (f"hdf5_lower_case_{args.do_lower_case}_seq_len_{args.max_seq_length}"
            f"_max_pred_{args.max_predictions_per_seq}_masked_lm_prob_{args.masked_lm_prob}"
            f"_random_seed_{args.random_seed}_dupe_factor_{args.dupe_factor}")
    return Layout(root, root / "download", root / "extracted", root / "formatted_one_article_per_line",
                  root / sharded, root / hdf5, root / "vocab")


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------


def action_download(args: argparse.Namespace, layout: Layout) -> None:
    from data.Downloader import Downloader

    if args.dataset not in DOWNLOADABLE:
        raise InputError(f"--action download: no downloader for {args.dataset!r}; "
                         f"choose from {', '.join(DOWNLOADABLE)}")
    Downloader(args.dataset, layout.download, bookscorpus_dir=args.bookscorpus_dir,
               google_models=args.google_models, glue_tasks=args.glue_tasks).download()


# --------------------------------------------------------------------------------------------
# text_formatting
# --------------------------------------------------------------------------------------------


def _wikipedia_dump(layout: Layout, name: str) -> Path:
    """The original's decompressed `<name>.xml` when present, else the `.xml.bz2` we download."""
    folder = layout.download / name
    for candidate in (folder / f"{name}.xml", folder / f"{name}.xml.bz2"):
        if candidate.exists():
            return candidate
    if (folder / f"{name}.xml.bz2.part").exists():
        raise InputError(f"{folder}/{name}.xml.bz2 is incomplete (only a .part file); "
                         f"re-run --action download --dataset {name} to resume it")
    raise InputError(f"{folder}/{name}.xml[.bz2]: no Wikipedia dump; run --action download --dataset {name}")


def _extract_wikipedia(args: argparse.Namespace, layout: Layout, name: str) -> Path:
    out = layout.extracted / name
    marker = out / ".extraction_complete"
    if args.skip_wikiextractor or marker.exists():
        print(f"using existing extracted articles in {out}", flush=True)
        return out
    if out.exists():
        shutil.rmtree(out)  # an interrupted earlier run: its files cannot be trusted
    extract_articles(_wikipedia_dump(layout, name), out, args.n_processes, args.wiki_extractor)
    marker.write_text("done\n", encoding="utf-8")
    return out


def extract_articles(dump: Path | str, out: Path | str, n_processes: int, extractor: str) -> None:
    """Wikipedia XML -> articles in WikiExtractor's format, with --wiki_extractor's choice."""
    if extractor == "wikiextractor":
        from data.TextFormatting import run_wikiextractor

        run_wikiextractor(dump, out, n_processes)
        return
    from data.wiki_extract import extract_wikipedia

    print(f"extracting articles from {dump} on {n_processes} processes", flush=True)
    count = extract_wikipedia(dump, out, n_processes)
    print(f"{count} articles extracted to {out}", flush=True)


def format_corpus(args: argparse.Namespace, layout: Layout, part: str) -> Path:
    from data import TextFormatting

    output = layout.formatted / FORMATTED_NAMES[part]
    if part.startswith("wikicorpus_"):
        count = TextFormatting.format_wikipedia(_extract_wikipedia(args, layout, part), output, args.n_processes)
    elif part == "bookscorpus":
        count = TextFormatting.format_books(layout.download / "bookscorpus", output)
    else:  # demo: already one sentence per line
        source = layout.download / "demo" / "demo_corpus.txt"
        if not source.exists():
            raise InputError(f"{source}: not found; run --action download --dataset demo")
        count = TextFormatting.format_sentence_file(source, output)
    print(f"{part}: {count} documents -> {output}", flush=True)
    return output


def action_text_formatting(args: argparse.Namespace, layout: Layout) -> None:
    if args.dataset not in CORPUS_PARTS:
        raise InputError(f"--action text_formatting: choose --dataset from {', '.join(CORPUS_PARTS)}")
    for part in CORPUS_PARTS[args.dataset]:
        format_corpus(args, layout, part)


# --------------------------------------------------------------------------------------------
# sharding
# --------------------------------------------------------------------------------------------


def corpus_inputs(args: argparse.Namespace, layout: Layout) -> list[Path]:
    """--input_files, else the formatted files of the dataset."""
    if args.input_files:
        return [Path(p) for p in args.input_files.split(",") if p]
    if args.dataset not in CORPUS_PARTS:
        raise InputError(f"--dataset {args.dataset}: pass --input_files (one document per line) for a custom corpus")
    return [layout.formatted / FORMATTED_NAMES[part] for part in CORPUS_PARTS[args.dataset]]


def shard_prefix(args: argparse.Namespace, layout: Layout) -> Path:
    return layout.sharded / args.dataset / args.dataset


def action_sharding(args: argparse.Namespace, layout: Layout) -> None:
    from data.TextSharding import Sharding

    inputs = corpus_inputs(args, layout)
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        raise InputError(f"sharding: input not found: {', '.join(missing)} (run --action text_formatting first)")
    folder = shard_prefix(args, layout).parent
    clear_stage_done(folder, "sharding")  # shards rewritten from here on are a new, unfinished set
    Sharding(inputs, shard_prefix(args, layout), args.n_training_shards, args.n_test_shards,
             args.fraction_test_set, args.segmentation_method, args.n_processes, args.random_seed).run()
    mark_stage_done(folder, "sharding")


# A stage that finishes writes `.<stage>_complete` into its output folder (atomically, last); the next
# stage refuses a folder without it, so an interrupted stage is never taken for a finished one.


def _stage_marker(folder: Path, stage: str) -> Path:
    return folder / f".{stage}_complete"


def mark_stage_done(folder: Path, stage: str) -> None:
    atomic_write_text(_stage_marker(folder, stage), "done\n")


def clear_stage_done(folder: Path, stage: str) -> None:
    _stage_marker(folder, stage).unlink(missing_ok=True)


def require_stage_done(folder: Path, stage: str, rerun: str) -> None:
    if not _stage_marker(folder, stage).exists():
        raise InputError(f"{folder}: the {stage} stage did not finish there (no {_stage_marker(folder, stage).name}); "
                         f"run {rerun} first")


def text_shards(args: argparse.Namespace, layout: Layout, splits: tuple[str, ...] = ("training", "test")) -> list[Path]:
    """The dataset's shard files, training then test, each in numeric order."""
    prefix = shard_prefix(args, layout)
    if prefix.parent.is_dir():
        require_stage_done(prefix.parent, "sharding", "--action sharding with the same "
                           "--n_training_shards/--n_test_shards/--fraction_test_set")
    shards = []
    for split in splits:
        pattern = re.compile(rf"^{re.escape(prefix.name)}_{split}_(\d+)\.txt$")
        found = [(int(m.group(1)), p) for p in prefix.parent.glob(f"{prefix.name}_{split}_*.txt")
                 if (m := pattern.match(p.name))]
        shards += [p for _, p in sorted(found)]
    if not shards:
        raise InputError(f"{prefix.parent}: no text shards; run --action sharding with the same "
                         "--n_training_shards/--n_test_shards/--fraction_test_set first")
    return shards


# --------------------------------------------------------------------------------------------
# create_vocab
# --------------------------------------------------------------------------------------------


def action_create_vocab(args: argparse.Namespace, layout: Layout) -> None:
    from data.create_vocab import create_vocab

    inputs = [Path(p) for p in args.input_files.split(",") if p] if args.input_files else \
        text_shards(args, layout, splits=("training",))
    output = Path(args.vocab_file) if args.vocab_file else layout.vocab / args.dataset / "vocab.txt"
    create_vocab(inputs, output, vocab_size=args.vocab_size, lowercase=args.do_lower_case > 0)


# --------------------------------------------------------------------------------------------
# create_hdf5_files
# --------------------------------------------------------------------------------------------


def _make_hdf5(job: dict) -> str:
    """Worker: one text shard -> one HDF5 file (create_pretraining_data renames it into place when done)."""
    from data.shard_creation import create_hdf5_from_text

    create_hdf5_from_text(**job)
    return job["output_file"]


def hdf5_jobs(args: argparse.Namespace, layout: Layout, vocab_file: Path) -> tuple[list[dict], int]:
    """Jobs for the shards whose HDF5 file does not exist yet, and how many were already done.

    A shard already there is kept only when it records the settings this run would make it with
    (text, vocab, casing, masking, lengths, probabilities, dupe factor, seed); otherwise InputError.
    """
    from data import shard_creation as cpd

    jobs, done = [], 0
    for shard in text_shards(args, layout):
        output = layout.hdf5 / args.dataset / (shard.stem + ".hdf5")
        job = dict(
            input_files=[str(shard)], output_file=str(output), vocab_file=str(vocab_file),
            do_lower_case=args.do_lower_case > 0, max_seq_length=args.max_seq_length,
            max_predictions_per_seq=args.max_predictions_per_seq, masked_lm_prob=args.masked_lm_prob,
            short_seq_prob=args.short_seq_prob, dupe_factor=args.dupe_factor, random_seed=args.random_seed,
            do_whole_word_mask=args.do_whole_word_mask > 0,
        )
        if output.exists():
            options = cpd.InstanceOptions(args.max_seq_length, args.max_predictions_per_seq, args.masked_lm_prob,
                                          args.short_seq_prob, args.dupe_factor, args.do_whole_word_mask > 0)
            cpd.check_shard_settings(output, cpd.shard_settings([shard], vocab_file, args.do_lower_case > 0,
                                                                options, args.random_seed))
            done += 1
            continue
        jobs.append(job)
    return jobs, done


# Each process beyond the first must be given at least this much work (bytes of text × dupe factor, about
# 10 MB of text at dupe factor 5): a spawned worker spends 1-2 s starting (Python, the tokenizer, the
# compiled instance code) before its first shard, and one process turns 50 MB·dupe into instances in
# 5-10 s on the CPUs measured, so below this a second process costs about what it saves.
MIN_WORK_PER_PROCESS = 50_000_000


def job_work(job: dict) -> int:
    """How much instance creation a job is: its text's bytes times its dupe factor."""
    text_bytes = sum(Path(name).stat().st_size for name in job["input_files"])
    return text_bytes * max(1, int(job.get("dupe_factor", 1)))


def processes_for(works: list[int], n_processes: int) -> int:
    """How many processes (this one included) are worth running: no more than asked, than jobs, or than
    the total work can keep busy at `MIN_WORK_PER_PROCESS` each."""
    return max(1, min(n_processes, len(works), sum(works) // MIN_WORK_PER_PROCESS))


def run_hdf5_jobs(jobs: list[dict], n_processes: int) -> list[str]:
    """Run every job; return 'shard: reason' for each failure (the others still complete).

    The pool is sized from the work (`processes_for`), largest jobs first. This process runs jobs too:
    with n processes, n − 1 spawned workers and this one take the next job as each becomes free, so a
    worker's start-up overlaps work already under way here.
    """
    from tqdm import tqdm

    works = [job_work(job) for job in jobs]
    processes = processes_for(works, n_processes)
    queue = [job for _, job in sorted(zip(works, jobs, strict=True), key=lambda pair: -pair[0])]
    lock = threading.Lock()
    failures: list[str] = []

    def take() -> dict | None:
        with lock:
            return queue.pop(0) if queue else None

    def give_back(job: dict) -> None:
        with lock:
            queue.insert(0, job)

    def finish(failure: str | None) -> None:
        with lock:
            failures.extend([failure] if failure else [])
            progress.update()

    def run_here() -> None:
        while (job := take()) is not None:
            finish(_failure_of(_shard_name(job), lambda job=job: _make_hdf5(job)))

    with tqdm(total=len(jobs), desc="hdf5 shards", unit="shard") as progress:
        if processes > 1:
            feeder = threading.Thread(target=_feed_pool, args=(processes - 1, take, give_back, finish), daemon=True)
            feeder.start()
            run_here()
            feeder.join()
        run_here()  # everything, or what a broken pool handed back
    return sorted(failures)


def _shard_name(job: dict) -> str:
    return Path(job["input_files"][0]).name


def _feed_pool(workers: int, take, give_back, finish) -> None:
    """Keep `workers` spawned processes busy with jobs from `take` until none is left (or the pool broke)."""
    with worker_pool(workers, "spawn") as pool:
        running: dict = {}
        while True:
            while len(running) < workers and (job := take()) is not None:
                try:
                    running[pool.submit(_make_hdf5, job)] = _shard_name(job)
                except BrokenProcessPool:  # a worker died: hand the job back, this process runs the rest
                    give_back(job)
                    workers = 0
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                finish(_failure_of(running.pop(future), future.result))


def _failure_of(name: str, run) -> str | None:
    try:
        run()
    except BrokenProcessPool:
        return f"{name}: worker process died (out of memory?)"
    except Exception as exc:  # noqa: BLE001 - report every shard's failure, keep the others
        return f"{name}: {type(exc).__name__}: {exc}"
    return None


def remove_killed_writes(folder: Path) -> None:
    """The temp files (`.tmp-<shard>.hdf5.<random>`, atomic_io.atomic_path's) of shards whose writer was killed: no
    reader trusts them, but nothing else would ever remove them (one shard's worth of disk each)."""
    for leftover in folder.glob(".tmp-*.hdf5.*"):
        leftover.unlink(missing_ok=True)


def action_create_hdf5_files(args: argparse.Namespace, layout: Layout) -> None:
    if not args.vocab_file:
        raise InputError("--action create_hdf5_files needs --vocab_file (e.g. "
                         "download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt)")
    vocab_file = Path(args.vocab_file)
    if not vocab_file.is_file():
        raise InputError(f"--vocab_file {vocab_file}: not found")
    jobs, done = hdf5_jobs(args, layout, vocab_file)
    print(f"{len(jobs)} shard(s) to convert, {done} already complete -> {layout.hdf5 / args.dataset}", flush=True)
    (layout.hdf5 / args.dataset).mkdir(parents=True, exist_ok=True)
    clear_stage_done(layout.hdf5 / args.dataset, "create_hdf5_files")
    remove_killed_writes(layout.hdf5 / args.dataset)
    failures = run_hdf5_jobs(jobs, args.n_processes) if jobs else []
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr, flush=True)
    if failures:
        names = ", ".join(f.split(":", 1)[0] for f in failures)
        raise InputError(f"{len(failures)} of {len(jobs)} shard(s) failed: {names}; fix and re-run (done shards are "
                         "skipped)")
    mark_stage_done(layout.hdf5 / args.dataset, "create_hdf5_files")


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--action", required=True, choices=ACTIONS)
    p.add_argument("--dataset", required=True,
                   help="wikicorpus_en, wikicorpus_zh, bookscorpus, books_wiki_en_corpus, demo, squad, glue, mrpc, "
                        "sst-2, google_pretrained_weights (weights), all; or any name with --input_files")
    p.add_argument("--input_files", default=None, help="comma-separated inputs; default derived from --dataset")
    p.add_argument("--working_dir", default=None, help="default: $BERT_PREP_WORKING_DIR, else the data/ folder")
    p.add_argument("--n_training_shards", type=int, default=256)
    p.add_argument("--n_test_shards", type=int, default=256)
    p.add_argument("--fraction_test_set", type=float, default=0.1, help="share of sentences in the test shards")
    p.add_argument("--segmentation_method", default="punkt", choices=METHODS + tuple(ALIASES),
                   help="sentence splitter (offline); 'nltk' = 'punkt'")
    p.add_argument("--n_processes", type=int, default=4,
                   help="extraction, formatting, sentence splitting and HDF5 workers")
    p.add_argument("--random_seed", type=int, default=12345)
    p.add_argument("--dupe_factor", type=int, default=5)
    p.add_argument("--masked_lm_prob", type=float, default=0.15)
    p.add_argument("--short_seq_prob", type=float, default=0.1)
    p.add_argument("--max_seq_length", type=int, default=512)
    p.add_argument("--max_predictions_per_seq", type=int, default=20)
    p.add_argument("--do_lower_case", type=int, default=1, help=">0: uncased")
    p.add_argument("--do_whole_word_mask", type=int, default=0, help=">0: mask whole words")
    p.add_argument("--vocab_file", default=None, help="input of create_hdf5_files; output of create_vocab")
    p.add_argument("--vocab_size", type=int, default=30522, help="create_vocab: rows in the new vocab")
    p.add_argument("--skip_wikiextractor", type=int, default=0, help=">0: reuse extracted/<dataset>")
    p.add_argument("--wiki_extractor", default="fast", choices=("fast", "wikiextractor"),
                   help="Wikipedia XML -> articles: 'fast' (data/wiki_extract.py: parallel over the bz2 streams of a "
                        "multistream dump, templates dropped) or 'wikiextractor' (the original's third-party tool, "
                        "expands templates, one reader process)")
    p.add_argument("--interactive_json_config_generator", type=str, default=None,
                   help="accepted, unused (as the original)")
    p.add_argument("--bookscorpus_dir", default=None, help="folder of *.txt books used as BookCorpus")
    p.add_argument("--google_models", default=None,
                   help="comma-separated subset of Google's checkpoints (default all 7)")
    p.add_argument("--glue_tasks", default="all", help="comma-separated GLUE tasks for --dataset glue (default all)")
    args = p.parse_args(argv)
    if not _DATASET_NAME.match(args.dataset):
        p.error(f"--dataset {args.dataset!r}: use letters, digits, '_', '.', '-'")
    return args


ACTION_FUNCTIONS = {
    "download": action_download,
    "text_formatting": action_text_formatting,
    "sharding": action_sharding,
    "create_vocab": action_create_vocab,
    "create_hdf5_files": action_create_hdf5_files,
}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if __name__ == "__main__":  # the command, not a caller importing main: a SIGTERM stops its workers too
        stop_workers_on_sigterm()
    if args.action == "create_tfrecord_files":
        raise InputError("create_tfrecord_files is not supported (TensorFlow format); use create_hdf5_files")
    layout = layout_for(args)
    layout.working_dir.mkdir(parents=True, exist_ok=True)
    ACTION_FUNCTIONS[args.action](args, layout)


if __name__ == "__main__":
    run_main(main)
