"""The whole data pipeline, stage by stage, through `data/bertPrep.py`: throughput per core, peak memory,
and what that means for English Wikipedia on a 16-core node.

    python benchmarks/bench_data_pipeline.py [--data-dir ../shared/data] [--pages 3000] [--processes N]
                                             [--wiki_extractor {fast,wikiextractor}]

Input: a MediaWiki export (`pages-articles-multistream` XML as Wikipedia ships it: bz2 streams of 100
pages each, `<siteinfo>` alone in the first) built from the shared WikiText-2 articles: each page
takes paragraphs of one article and wraps them in what real pages carry (an infobox and other
templates, a wikitable, `<ref>` citations, links, bold/italic markup, section headings,
categories), plus redirects and Talk pages that the extractor must drop. Two dumps are measured,
`--pages` and twice as many, to show that memory stays flat as input grows.

Stages, each in its own process with N worker processes (`python data/bertPrep.py --action ...
--n_processes N`, and for extraction the functions that action calls first):

  extraction    XML -> plain-text articles with --wiki_extractor (default fast: data/wiki_extract.py;
                wikiextractor: the original's tool)
  formatting    text_formatting with --skip_wikiextractor: articles -> one article per line
  sharding      sentence splitting (punkt) + balanced train/test text shards
  hdf5 p1/p2    create_hdf5_files at 128/20 (phase 1) and 512/80 (phase 2), dupe factor 5 and 1

Throughput is MB of formatted article text per CPU-second (user + system over all the stage's
processes; every stage is measured on the same text, so the numbers add up): MB/s per core for a
stage that keeps its cores busy, and unlike wall time not changed by other work on the machine.
Peak RSS is the largest single process and the whole process tree (sampled from /proc every 50 ms).
The extrapolation divides English Wikipedia's ~20 GB of extracted text by each stage's marginal
rate (the larger dump's extra text over its extra CPU time, so start-up costs cancel) times 16
cores, i.e. it assumes each stage keeps all 16 busy (each runs on a pool of --n_processes workers;
the fast extractor decompresses the multistream dump's streams on every worker, but WikiExtractor
reads the dump in one process, so its wall time is capped by that reader, which this hides); HDF5
disk size scales with the measured output bytes per text byte. Extraction's cost follows the XML
more than the text, and real Wikipedia has more XML per text byte (~95 GB of XML for ~20 GB of
text) than this dump, so its extrapolation is also printed from MB of XML per CPU-second.
"""
from __future__ import annotations

import argparse
import bz2
import html
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cpu_info import describe_cpu

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATA = ROOT.parent / "shared" / "data"
WIKIPEDIA_TEXT_MB = 20_000  # English Wikipedia after extraction, about 20 GB
WIKIPEDIA_XML_MB = 95_000  # its pages-articles XML, decompressed
NODE_CORES = 16
DATASET = "wikicorpus_en"
PHASES = (("hdf5 p1", 128, 20), ("hdf5 p2", 512, 80))


# --------------------------------------------------------------------------------------------
# A realistic dump from WikiText articles
# --------------------------------------------------------------------------------------------


def wikitext_articles(path: Path) -> list[tuple[str, list[str]]]:
    """(title, paragraphs) of each WikiText article (' = Title = ' starts one; ' = = Heading = = ' lines dropped)."""
    articles: list[tuple[str, list[str]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("= ") and not line.startswith("= ="):
            articles.append((line.strip("= ").strip(), []))
        elif line and not line.startswith("=") and articles:
            articles[-1][1].append(line)
    return [(title, paragraphs) for title, paragraphs in articles if paragraphs]


def _linked(paragraph: str, rng: random.Random) -> str:
    """Wiki markup on real words: [[links]], [[target|piped links]], '''bold''', ''italic''."""
    words = paragraph.split(" ")
    for _ in range(max(1, len(words) // 25)):
        index = rng.randrange(len(words))
        word = words[index]
        if not word.isalpha():
            continue
        words[index] = rng.choice([f"[[{word}]]", f"[[{word.capitalize()} (topic)|{word}]]", f"'''{word}'''",
                                   f"''{word}''"])
    return " ".join(words)


def _cited(paragraph: str, rng: random.Random, page: int) -> str:
    """Sentences followed by <ref> citations (named, reused, with cite templates), as articles have them."""
    sentences = paragraph.split(" . ")
    out = []
    for index, sentence in enumerate(sentences):
        if rng.random() < 0.3:
            sentence += (f'<ref name="src{page}_{index}">{{{{cite web |url=https://example.org/{page}/{index} '
                         f'|title=Source {index} |publisher=Example Press |date=2019-05-{1 + index % 28:02d} '
                         f'|access-date=2024-01-01}}}}</ref>')
        elif rng.random() < 0.1:
            sentence += (f"<ref>{{{{cite book |last=Author |first=A. |year={1900 + index} |title=Book {page} "
                         f"|p={index}}}}}</ref>")
        out.append(sentence)
    return " . ".join(out)


def page_wikitext(title: str, paragraphs: list[str], page: int, rng: random.Random) -> str:
    infobox = (f"{{{{Infobox topic\n| name = {title}\n| image = {title.replace(' ', '_')}.jpg\n"
               f"| caption = {title} in {1900 + page % 120}\n| established = {{{{start "
               f"date|{1900 + page % 120}|5|1}}}}\n"
               f"| website = {{{{URL|example.org/{page}}}}}\n}}}}\n")
    table = ("{| class=\"wikitable sortable\"\n|+ Figures\n! Year !! Value !! Note\n" +
             "".join(f"|-\n| {1990 + row} || {rng.randint(1, 999)} || {{{{small|row {row}}}}}\n" for row in range(5)) +
             "|}\n")
    body = []
    for index, paragraph in enumerate(paragraphs):
        if index and index % 3 == 0:
            body.append(f"== Section {index // 3} ==")
        body.append(_cited(_linked(paragraph, rng), rng, page))
        if index == 1:
            body.append(table)
    return (f"{{{{Short description|{title}}}}}\n{{{{Use dmy dates|date=January 2024}}}}\n{infobox}"
            + "\n\n".join(body)
            + "\n\n== References ==\n{{Reflist}}\n\n== External links ==\n* [https://example.org/" + str(page)
            + " Official site]\n\n{{Authority control}}\n"
            + f"[[Category:Topic {page % 50}]]\n[[Category:Articles with example sources]]\n")


def xml_escape(text: str) -> str:
    """As MediaWiki's dumps escape text: & < > and double quotes (apostrophes stay as they are)."""
    return html.escape(text, quote=False).replace('"', "&quot;")


def _page_xml(title: str, namespace: int, page_id: int, text: str, redirect: str | None = None) -> str:
    redirect_tag = f'    <redirect title="{xml_escape(redirect)}" />\n' if redirect else ""
    return (f"  <page>\n    <title>{xml_escape(title)}</title>\n    <ns>{namespace}</ns>\n    <id>{page_id}</id>\n"
            f"{redirect_tag}    <revision>\n      <id>{10_000_000 + page_id}</id>\n"
            f"      <timestamp>2024-01-01T00:00:00Z</timestamp>\n"
            f"      <contributor><username>Editor{page_id % 97}</username><id>{page_id % 97}</id></contributor>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text.encode())}" xml:space="preserve">{xml_escape(text)}</text>\n'
            f"    </revision>\n  </page>\n")


SITEINFO = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <generator>MediaWiki 1.42.0-wmf.5</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="10" case="first-letter">Template</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
    </namespaces>
  </siteinfo>
"""


PAGES_PER_STREAM = 100  # as Wikimedia's multistream dumps


def dump_pages(articles: list[tuple[str, list[str]]], pages: int,
               seed: int = 0) -> Iterator[tuple[str, list[str], str]]:
    """(title, WikiText paragraphs, XML) of each article page: `pages` of them, the XML of every 20th followed by
    a redirect to it and its Talk page."""
    rng = random.Random(seed)
    for page in range(pages):
        title, paragraphs = articles[page % len(articles)]
        start = rng.randrange(len(paragraphs))
        chosen = (paragraphs[start:] + paragraphs[:start])[:rng.randint(3, 8)]
        name = f"{title} ({page})"
        xml = _page_xml(name, 0, 3 * page + 1, page_wikitext(name, chosen, page, rng))
        if page % 20 == 0:
            xml += _page_xml(f"{name} redirect", 0, 3 * page + 2, f"#REDIRECT [[{name}]]", redirect=name)
            xml += _page_xml(f"Talk:{name}", 1, 3 * page + 3, "Discussion that must not reach the corpus.")
        yield name, chosen, xml


def write_dump(articles: list[tuple[str, list[str]]], pages: int, output: Path, seed: int = 0,
               pages_per_stream: int | None = PAGES_PER_STREAM) -> int:
    """A bz2 MediaWiki export of `pages` articles; returns its XML bytes. Multistream as Wikimedia ships
    `pages-articles-multistream.xml.bz2` (`<siteinfo>` alone in the first bz2 stream, then one stream per
    `pages_per_stream` pages, `</mediawiki>` in the last); `pages_per_stream=None`: one stream; a name
    ending in `.xml`: not compressed."""
    pieces = [SITEINFO]
    chunk: list[str] = []
    for _, _, xml in dump_pages(articles, pages, seed):
        chunk.append(xml)
        if pages_per_stream and len(chunk) == pages_per_stream:
            pieces.append("".join(chunk))
            chunk = []
    pieces += ["".join(chunk)] if chunk else []
    pieces.append("</mediawiki>\n")
    data = [piece.encode() for piece in pieces]
    with open(output, "wb") as dump:
        if output.suffix != ".bz2":
            dump.writelines(data)
        elif pages_per_stream:
            dump.writelines(bz2.compress(piece, 9) for piece in data)
        else:
            dump.write(bz2.compress(b"".join(data), 9))
    return sum(map(len, data))


# --------------------------------------------------------------------------------------------
# Running a stage and measuring it
# --------------------------------------------------------------------------------------------


@dataclass
class StageRun:
    seconds: float
    cpu_seconds: float
    peak_process_mb: float  # the largest single process
    peak_tree_mb: float  # all processes of the stage together, sampled


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _tree_rss_bytes(pid: int) -> tuple[int, int]:
    """(RSS of the largest process, RSS of all processes) of the tree under `pid`."""
    children, total, largest, stack = _children_map(), 0, 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/statm", "rb") as statm:
                rss = int(statm.read().split()[1]) * page
        except OSError:
            continue
        total += rss
        largest = max(largest, rss)
    return largest, total


def run_stage(args: list[str], env: dict[str, str]) -> StageRun:
    """Run `bertPrep.py ARGS`; wall and CPU time of it and its workers, peak RSS per process and in total."""
    return run_command([sys.executable, str(ROOT / "data" / "bertPrep.py"), *args], env)


# The extraction stage on its own, in a process of its own: what `bertPrep.py --action text_formatting`
# runs before formatting (argv: dump, output folder, processes, extractor); run in the project root.
EXTRACT_ONLY = """
import sys
from data.bertPrep import extract_articles
extract_articles(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
"""


def run_extraction(dump: Path, output: Path, processes: int, extractor: str, env: dict[str, str]) -> StageRun:
    return run_command([sys.executable, "-c", EXTRACT_ONLY, str(dump), str(output), str(processes), extractor],
                       env, cwd=ROOT)


def run_command(command: list[str], env: dict[str, str], cwd: Path | None = None) -> StageRun:
    """Wall and CPU time of a command and its workers, peak RSS per process and in total."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = [0, 0]

    def sample() -> None:
        while process.poll() is None:
            largest, total = _tree_rss_bytes(process.pid)
            peaks[0], peaks[1] = max(peaks[0], largest), max(peaks[1], total)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:4])} ... failed (exit {process.returncode}):\n{output[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return StageRun(seconds, cpu, peaks[0] / 1e6, peaks[1] / 1e6)


def folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


def hdf5_folder(working_dir: Path, seq: int, preds: int, dupe: int) -> Path:
    return working_dir / (f"hdf5_lower_case_1_seq_len_{seq}_max_pred_{preds}_masked_lm_prob_0.15"
                          f"_random_seed_12345_dupe_factor_{dupe}") / DATASET


def run_pipeline(working_dir: Path, dump: Path, vocab: Path, processes: int, shards: tuple[int, int],
                 dupe_factors: tuple[int, ...], wiki_extractor: str = "fast",
                 ) -> tuple[dict[str, StageRun], float, dict[str, float]]:
    """Every stage on one dump: {stage: run}, MB of formatted text, {hdf5 stage: output MB}."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    download = working_dir / "download" / DATASET
    download.mkdir(parents=True)
    shutil.copy(dump, download / f"{DATASET}.xml.bz2")
    common = ["--working_dir", str(working_dir), "--dataset", DATASET, "--n_processes", str(processes)]
    runs: dict[str, StageRun] = {}
    runs["extraction"] = run_extraction(download / f"{DATASET}.xml.bz2", working_dir / "extracted" / DATASET,
                                        processes, wiki_extractor, env)
    runs["formatting"] = run_stage(["--action", "text_formatting", "--skip_wikiextractor", "1", *common], env)
    formatted = working_dir / "formatted_one_article_per_line" / f"{DATASET}_one_article_per_line.txt"
    text_mb = formatted.stat().st_size / 1e6
    shard_args = ["--n_training_shards", str(shards[0]), "--n_test_shards", str(shards[1])]
    runs["sharding"] = run_stage(["--action", "sharding", *shard_args, *common], env)
    sizes = {}
    for dupe in dupe_factors:
        for name, seq, preds in PHASES:
            stage = f"{name} d{dupe}"
            runs[stage] = run_stage(["--action", "create_hdf5_files", *shard_args, *common, "--vocab_file", str(vocab),
                                     "--max_seq_length", str(seq), "--max_predictions_per_seq", str(preds),
                                     "--dupe_factor", str(dupe)], env)
            sizes[stage] = folder_mb(hdf5_folder(working_dir, seq, preds, dupe))
    return {stage: runs[stage] for stage in ORDER if stage in runs}, text_mb, sizes


ORDER = ("extraction", "formatting", "sharding", *(f"{name} d{dupe}" for dupe in (5, 1) for name, _, _ in PHASES))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def per_core_rate(run: StageRun, text_mb: float) -> float:
    """MB of text per CPU-second: what one core does when the stage keeps every core busy. CPU time,
    unlike wall time, does not change when other work shares the machine."""
    return text_mb / max(run.cpu_seconds, 1e-9)


Result = tuple[int, float, dict[str, StageRun], dict[str, float], float]  # pages, text MB, runs, HDF5 MB, XML MB


def print_stage_table(results: list[Result]) -> None:
    print(f"| {'stage':<12} | {'pages':>6} | {'text MB':>7} | {'wall s':>7} | {'CPU s':>7} | {'MB/s/core':>9} "
          f"| {'peak proc MB':>12} | {'peak tree MB':>12} |")
    print(f"|{'-' * 14}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 14}|{'-' * 14}|")
    for stage in ORDER:
        for pages, text_mb, runs, *_ in results:
            if stage not in runs:
                continue
            run = runs[stage]
            print(f"| {stage:<12} | {pages:>6} | {text_mb:>7.1f} | {run.seconds:>7.2f} | {run.cpu_seconds:>7.2f} "
                  f"| {per_core_rate(run, text_mb):>9.2f} | {run.peak_process_mb:>12.0f} "
                  f"| {run.peak_tree_mb:>12.0f} |")


def marginal_rate(small: tuple[float, StageRun], large: tuple[float, StageRun]) -> float:
    """MB per CPU-second of the larger input's extra text: fixed costs (process start-up, imports, loading
    compiled code) cancel out, as they nearly do at Wikipedia's size."""
    (small_mb, small_run), (large_mb, large_run) = small, large
    extra_cpu = large_run.cpu_seconds - small_run.cpu_seconds
    if extra_cpu <= 0:  # too small an input to see the difference: fall back to the plain rate
        return per_core_rate(large_run, large_mb)
    return (large_mb - small_mb) / extra_cpu


def print_extrapolation(results: list[Result], wiki_extractor: str) -> None:
    (_, small_mb, small_runs, _, small_xml), (_, text_mb, runs, sizes, xml_mb) = results[0], results[-1]
    print(f"\nEnglish Wikipedia (~{WIKIPEDIA_TEXT_MB / 1000:.0f} GB of extracted text) on a {NODE_CORES}-core node, "
          f"from each stage's marginal rate (the larger input's extra text over its extra CPU time):")

    def minutes(stage: str) -> float:
        rate = marginal_rate((small_mb, small_runs[stage]), (text_mb, runs[stage]))
        print(f"  {stage:<12} {rate:8.2f} MB/s/core -> {WIKIPEDIA_TEXT_MB / (rate * NODE_CORES) / 60:7.1f} min")
        return WIKIPEDIA_TEXT_MB / (rate * NODE_CORES) / 60

    shared_minutes = sum(minutes(stage) for stage in ("extraction", "formatting", "sharding"))
    xml_rate = marginal_rate((small_xml, small_runs["extraction"]), (xml_mb, runs["extraction"]))
    print(f"  (extraction ({wiki_extractor}) by XML instead: {xml_rate:.2f} MB of XML/s/core -> "
          f"{WIKIPEDIA_XML_MB / (xml_rate * NODE_CORES) / 60:.1f} min for Wikipedia's "
          f"~{WIKIPEDIA_XML_MB / 1000:.0f} GB of XML; this dump has {xml_mb / text_mb:.1f} bytes of XML per text "
          f"byte, Wikipedia {WIKIPEDIA_XML_MB / WIKIPEDIA_TEXT_MB:.1f})")
    for dupe in (5, 1):
        stages = [f"{name} d{dupe}" for name, _, _ in PHASES]
        if not all(stage in runs for stage in stages):
            continue
        hdf5_minutes = sum(minutes(stage) for stage in stages)
        disk = {stage: sizes[stage] / text_mb * WIKIPEDIA_TEXT_MB / 1000 for stage in stages}
        print(f"  => dupe factor {dupe}: HDF5 phases 1+2 {hdf5_minutes:.1f} min, whole pipeline "
              f"{shared_minutes + hdf5_minutes:.1f} min; HDF5 on disk {sum(disk.values()):.0f} GB ("
              + ", ".join(f"{stage.split()[1]} {gb:.0f} GB" for stage, gb in disk.items()) + ")")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pages", type=int, default=3000,
                        help="pages of the smaller dump (the larger has twice as many)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="--n_processes of every stage")
    parser.add_argument("--shards", type=int, nargs=2, default=(16, 4), metavar=("TRAINING", "TEST"),
                        help="text shards of the smaller dump (the larger has twice as many)")
    parser.add_argument("--dupe-factors", type=int, nargs="+", default=(5, 1), choices=(5, 1))
    parser.add_argument("--wiki_extractor", default="fast", choices=("fast", "wikiextractor"),
                        help="the extraction stage's extractor (bertPrep.py --wiki_extractor)")
    args = parser.parse_args(argv)
    wikitext = args.data_dir / "corpus" / "wikitext-2-raw" / "wiki.test.raw"
    vocab = args.data_dir / "vocab" / "bert-base-uncased-vocab.txt"
    for path in (wikitext, vocab):
        if not path.is_file():
            raise SystemExit(f"error: {path}: not found (pass --data-dir)")
    articles = wikitext_articles(wikitext)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        for scale in (1, 2):
            pages = args.pages * scale
            dump = Path(tmp) / f"dump_{pages}.xml.bz2"
            xml_bytes = write_dump(articles, pages, dump)
            runs, text_mb, sizes = run_pipeline(Path(tmp) / f"run_{pages}", dump, vocab, args.processes,
                                                (args.shards[0] * scale, args.shards[1] * scale),
                                                tuple(args.dupe_factors), args.wiki_extractor)
            print(f"dump of {pages} pages: {xml_bytes / 1e6:.1f} MB XML ({dump.stat().st_size / 1e6:.1f} MB bz2) "
                  f"-> {text_mb:.1f} MB of article text ({xml_bytes / 1e6 / text_mb:.1f} bytes of XML per byte)",
                  flush=True)
            results.append((pages, text_mb, runs, sizes, xml_bytes / 1e6))
            shutil.rmtree(Path(tmp) / f"run_{pages}")
    print(f"\n{args.processes} worker processes per stage, {os.cpu_count()} CPUs, extraction: {args.wiki_extractor}")
    print(f"CPU: {describe_cpu()}\n")
    print_stage_table(results)
    print_extrapolation(results, args.wiki_extractor)


if __name__ == "__main__":
    main()
