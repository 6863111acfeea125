"""The data/ preparation pipeline on real text: formatting, sentence splitting, sharding, vocab, HDF5.

Real inputs from ../shared/data/corpus: WikiText-2 articles, Gutenberg books (the Latin-1 Julius
Caesar and the CRLF Moby Dick included), plus a MediaWiki export written here and run through the
real WikiExtractor and through our fast extractor (data/wiki_extract.py, tested on its own in
tests/test_wiki_extract.py). Scripts run as users run them (`python data/bertPrep.py ...`).
"""
from __future__ import annotations

import bz2
import hashlib
import re
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import ROOT, load_benchmark, script_env, shared_path

from data import TextSharding, demo_corpus, sentence_split
from data.create_vocab import build_vocab, google_layout_head
from input_checks import InputError

BERTPREP = ROOT / "data" / "bertPrep.py"
SMALL_SHARDS = ["--n_training_shards", "4", "--n_test_shards", "2"]


def run_prep(working_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BERTPREP), "--working_dir", str(working_dir), *args],
        capture_output=True, text=True, env=script_env(), timeout=600,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def wikitext_articles(limit: int | None = None) -> list[str]:
    """WikiText-2 test split cut at its ` = Title = ` headings; each article's lines joined."""
    raw = shared_path("corpus", "wikitext-2-raw", "wiki.test.raw").read_text(encoding="utf-8")
    articles, current = [], None
    for line in raw.splitlines():
        if re.fullmatch(r" = [^=].* = ", line):
            if current:
                articles.append(" ".join(current))
            current = []
        elif current is not None and line.strip() and not line.startswith(" = "):
            current.append(line.strip())
    if current:
        articles.append(" ".join(current))
    return articles[:limit] if limit else articles


def documents_of(path: Path) -> list[list[str]]:
    """A sentence-per-line file with blank lines between documents -> list of documents."""
    documents = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        sentences = [line for line in block.split("\n") if line]
        if sentences:
            documents.append(sentences)
    return documents


# ---------------------------------------------------------------- sentence splitting


@pytest.mark.parametrize("method", ["punkt", "nltk", "pysbd", "regex"])
def test_sentence_splitters_keep_abbreviations_together(method):
    text = "Dr. Watson met Mr. Holmes in London. It was 5 p.m. on a Monday! Did they talk? Yes."
    sentences = sentence_split.split_sentences(text, method)
    assert sentences[0] == "Dr. Watson met Mr. Holmes in London."
    assert sentences[-2:] == ["Did they talk?", "Yes."]


def test_punkt_matches_nltk_reference_splits_on_real_text():
    article = wikitext_articles(1)[0]
    sentences = sentence_split.split_sentences(article, "punkt")
    assert len(sentences) > 20
    assert " ".join(sentences) == " ".join(article.split())
    assert sentences[0] == "Robert Boulter is an English film , television and theatre actor ."


def test_regex_splitter_handles_chinese_punctuation():
    assert sentence_split.split_sentences("今天天气很好。我们去公园吧！好吗？", "regex") == [
        "今天天气很好。", "我们去公园吧！", "好吗？"]


def test_unknown_segmentation_method_is_a_clear_error():
    with pytest.raises(InputError, match="--segmentation_method 'spacy' unknown"):
        sentence_split.split_sentences("A b c.", "spacy")


# ---------------------------------------------------------------- Wikipedia through both extractors

# Real article text (its markup included) in a file of its own: its lines are as long as Wikipedia's.
WIKI_DUMP = (load_benchmark("bench_data_pipeline").SITEINFO
             + (ROOT / "tests" / "assets" / "wiki_pages.xml").read_text(encoding="utf-8"))

EXPECTED_ARTICLES = [
    "Albedo (; from Latin \"albedo\" 'whiteness') is the fraction of sunlight that is diffusely reflected by a "
    "body. It is measured on a scale from 0 to 1. Terrestrial albedo. Fresh snow reflects most of the light that "
    "reaches it. Dark forests absorb most of it.",
    "Alan Mathison Turing (23 June 1912 – 7 June 1954) was an English mathematician and logician. He was highly "
    "influential in the development of theoretical computer science. Early life. Turing was born in Maida Vale, "
    "London, while his father was on leave from the Indian Civil Service.",
    "Anarchism is a political philosophy and movement that is skeptical of all justifications for authority. "
    "Humans lived in societies without formal hierarchies long before the establishment of states. Etymology. "
    "The etymological origin of \"anarchism\" is from the Ancient Greek \"anarkhia\", meaning \"without a ruler\".",
]


@pytest.mark.parametrize("extractor", ["fast", "wikiextractor"])
@pytest.mark.parametrize("compressed", [False, True], ids=["xml", "xml.bz2"])
def test_wikipedia_dump_to_one_article_per_line(tmp_path, compressed, extractor):
    """Both extractors give the same articles on this dump (its templates expand to nothing in WikiExtractor)."""
    download = tmp_path / "download" / "wikicorpus_en"
    download.mkdir(parents=True)
    data = WIKI_DUMP.encode("utf-8")
    if compressed:
        (download / "wikicorpus_en.xml.bz2").write_bytes(bz2.compress(data))
    else:
        (download / "wikicorpus_en.xml").write_bytes(data)
    ok(run_prep(tmp_path, "--action", "text_formatting", "--dataset", "wikicorpus_en", "--n_processes", "1",
                "--wiki_extractor", extractor))
    formatted = tmp_path / "formatted_one_article_per_line" / "wikicorpus_en_one_article_per_line.txt"
    # The redirect and the Talk: page are left out; markup and titles are gone; a blank line follows each.
    assert formatted.read_text(encoding="utf-8") == "".join(a + "\n\n" for a in EXPECTED_ARTICLES)
    assert (tmp_path / "extracted" / "wikicorpus_en" / ".extraction_complete").exists()


@pytest.mark.parametrize("extractor", ["fast", "wikiextractor"])
def test_incomplete_or_damaged_wikipedia_download_is_reported(tmp_path, extractor):
    download = tmp_path / "download" / "wikicorpus_en"
    download.mkdir(parents=True)
    packed = bz2.compress(WIKI_DUMP.encode("utf-8") * 50)
    (download / "wikicorpus_en.xml.bz2.part").write_bytes(packed[:1000])
    error = one_line_error(run_prep(tmp_path, "--action", "text_formatting", "--dataset", "wikicorpus_en"))
    assert "wikicorpus_en.xml.bz2 is incomplete (only a .part file)" in error and "to resume" in error

    (download / "wikicorpus_en.xml.bz2").write_bytes(packed[: len(packed) // 2])  # truncated under the final name
    error = one_line_error(run_prep(tmp_path, "--action", "text_formatting", "--dataset", "wikicorpus_en",
                                    "--n_processes", "1", "--wiki_extractor", extractor))
    if extractor == "wikiextractor":
        assert "WikiExtractor failed on" in error and "truncated or damaged dump" in error
    else:
        assert "wikicorpus_en.xml.bz2: truncated or damaged" in error and "download again" in error
        assert not (tmp_path / "extracted" / "wikicorpus_en").exists()
    assert not (tmp_path / "extracted" / "wikicorpus_en" / ".extraction_complete").exists()
    assert not (tmp_path / "formatted_one_article_per_line").exists()


# ---------------------------------------------------------------- books


def make_books(folder: Path) -> Path:
    """Three real books: Latin-1 Julius Caesar, CRLF Moby Dick (first ~80 kB), Blake's poems."""
    gutenberg = shared_path("corpus", "gutenberg")
    folder.mkdir(parents=True)
    (folder / "shakespeare-caesar.txt").write_bytes((gutenberg / "shakespeare-caesar.txt").read_bytes())
    moby = (gutenberg / "melville-moby_dick.txt").read_bytes()
    assert b"\r\n" in moby
    (folder / "melville-moby_dick.txt").write_bytes(moby[: moby.index(b"\r\n", 80_000) + 2])
    (folder / "blake-poems.txt").write_bytes((gutenberg / "blake-poems.txt").read_bytes())
    return folder


def test_books_become_one_line_each_whatever_their_encoding(tmp_path):
    books = make_books(tmp_path / "books")
    ok(run_prep(tmp_path, "--action", "download", "--dataset", "bookscorpus", "--bookscorpus_dir", str(books)))
    result = ok(run_prep(tmp_path, "--action", "text_formatting", "--dataset", "bookscorpus"))
    assert "shakespeare-caesar.txt is not UTF-8" in result.stderr
    formatted = tmp_path / "formatted_one_article_per_line" / "bookscorpus_one_book_per_line.txt"
    text = formatted.read_text(encoding="utf-8")
    assert "\r" not in text
    blake, moby, caesar, end = text.split("\n\n")  # one line per book, sorted by file name
    assert end == "" and "\n" not in blake + caesar + moby
    assert blake.startswith("[Poems by William Blake 1789]")
    assert "Ant. Cæsar, my Lord" in caesar
    assert moby.startswith("[Moby Dick by Herman Melville 1851]")


def test_empty_inputs_are_clear_errors(tmp_path):
    (tmp_path / "download" / "bookscorpus").mkdir(parents=True)
    error = one_line_error(run_prep(tmp_path, "--action", "text_formatting", "--dataset", "bookscorpus"))
    assert "bookscorpus: no *.txt books found" in error

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n", encoding="utf-8")
    error = one_line_error(run_prep(tmp_path, "--action", "sharding", "--dataset", "mine", "--input_files", str(empty)))
    assert "the input holds no documents" in error
    error = one_line_error(run_prep(tmp_path, "--action", "sharding", "--dataset", "mine",
                                    "--input_files", str(tmp_path / "absent.txt")))
    assert "absent.txt" in error and "not found" in error


# ---------------------------------------------------------------- sharding


def test_sharding_balances_sentences_and_keeps_every_article_whole(tmp_path):
    articles = wikitext_articles()
    source = tmp_path / "wiki.txt"
    source.write_text("".join(a + "\n\n" for a in articles), encoding="utf-8")
    plan = TextSharding.Sharding([source], tmp_path / "out" / "wiki", 8, 2, 0.1, "punkt", 1, seed=7).run()

    # Sentences as Punkt splits them, whitespace runs (WikiText has some odd ones) collapsed to one space.
    expected = sorted([" ".join(s.split()) for s in sentence_split.split_sentences(a)] for a in articles)
    shards = {p.name: documents_of(p) for p in sorted((tmp_path / "out").glob("wiki_*.txt"))}
    assert sorted(shards) == [f"wiki_test_{i}.txt" for i in range(2)] + [f"wiki_training_{i}.txt" for i in range(8)]
    assert sorted(d for docs in shards.values() for d in docs) == expected  # nothing lost, split or duplicated

    counts = [len(d) for d in expected]
    biggest, total = max(counts), sum(counts)
    train = [sum(map(len, shards[f"wiki_training_{i}.txt"])) for i in range(8)]
    test = [sum(map(len, shards[f"wiki_test_{i}.txt"])) for i in range(2)]
    assert max(train) - min(train) <= biggest and max(test) - min(test) <= biggest
    assert abs(sum(test) - 0.1 * total) <= biggest
    assert len(plan.training) == 8 and all(plan.training) and all(plan.test)


def test_sharding_terminates_on_awkward_inputs(tmp_path):
    moby = " ".join(shared_path("corpus", "gutenberg", "melville-moby_dick.txt").read_text(encoding="utf-8").split())
    huge = tmp_path / "huge.txt"
    huge.write_text(moby + "\n", encoding="utf-8")
    TextSharding.Sharding([huge], tmp_path / "one" / "x", 1, 0, 0.1, "punkt", 1).run()
    [shard] = documents_of(tmp_path / "one" / "x_training_0.txt")
    assert len(shard) > 5000

    mixed = tmp_path / "mixed.txt"
    mixed.write_text(moby + "\n" + "".join(f"Short article number {i} here.\n" for i in range(40)), encoding="utf-8")
    plan = TextSharding.Sharding([mixed], tmp_path / "mixed" / "x", 5, 2, 0.1, "punkt", 1).run()
    assert sorted(i for shard in plan.training + plan.test for i in shard) == list(range(41))
    assert all(plan.training) and all(plan.test)

    error = one_line_error(run_prep(tmp_path, "--action", "sharding", "--dataset", "few",
                                    "--input_files", str(mixed), "--n_training_shards", "60", "--n_test_shards", "2"))
    assert "41 document(s) cannot fill 60 training + 2 test shards" in error


def test_plan_is_deterministic_for_a_seed_and_always_fills_every_shard():
    counts = [1] * 50 + [3] * 20 + [100]
    a = TextSharding.plan_shards(counts, 6, 3, 0.2, seed=1)
    assert a == TextSharding.plan_shards(counts, 6, 3, 0.2, seed=1)
    assert a != TextSharding.plan_shards(counts, 6, 3, 0.2, seed=2)  # ties broken by the seed
    assert all(a.training) and all(a.test)
    with pytest.raises(InputError, match="--fraction_test_set must be in"):
        TextSharding.plan_shards(counts, 6, 3, 0.0)


# ---------------------------------------------------------------- vocab


def test_created_vocab_has_googles_layout_and_is_deterministic(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(wikitext_articles(15)), encoding="utf-8")
    google = shared_path("vocab", "bert-base-uncased-vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab = build_vocab([corpus], vocab_size=3000, lowercase=True)
    assert len(vocab) == 3000 and len(set(vocab)) == 3000
    assert vocab[:104] == google[:104]  # [PAD] 0, [unused0..98], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103
    assert sum(t.startswith("##") for t in vocab) > 200
    assert "the" in vocab and "The" not in vocab
    assert build_vocab([corpus], vocab_size=3000, lowercase=True) == vocab
    assert google_layout_head(994) == google[:999]  # the full-size layout is Google's row for row


# ---------------------------------------------------------------- demo corpus


def test_demo_corpus_builds_and_is_real_prose(tmp_path):
    ok(run_prep(tmp_path, "--action", "download", "--dataset", "demo"))
    text = (tmp_path / "download" / "demo" / "demo_corpus.txt").read_text(encoding="utf-8")
    documents = [d for d in text.split("\n\n") if d]
    sentences = text.split()
    assert len(documents) > 300 and 500_000 < len(text.encode("utf-8")) < 4_000_000
    lines = [line for line in text.split("\n") if line]
    assert all(len(line.split()) >= 3 and ">>>" not in line for line in lines)
    assert any(line.startswith("Assert statements are a convenient way") for line in lines)
    assert len(sentences) > 100_000
    assert text.startswith(demo_corpus.build_demo_corpus(max_bytes=200_000))  # deterministic, sorted sources


# ---------------------------------------------------------------- HDF5


def hdf5_digest(folder: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(folder.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            digest = hashlib.sha256()
            for key in sorted(f):
                digest.update(key.encode() + np.ascontiguousarray(f[key][()]).tobytes())
            digests[path.name] = digest.hexdigest()
    return digests


def check_shard_format(path: Path, seq: int, preds: int, vocab_size: int) -> None:
    with h5py.File(path, "r") as f:
        assert sorted(f) == sorted(["input_ids", "input_mask", "segment_ids", "masked_lm_positions",
                                    "masked_lm_ids", "next_sentence_labels"])
        n = f["input_ids"].shape[0]
        assert n > 0 and f["input_ids"].shape == (n, seq) and f["masked_lm_positions"].shape == (n, preds)
        assert f["input_ids"].dtype == np.int32 and f["input_mask"].dtype == np.int8
        ids = f["input_ids"][()]
        assert ids.max() < vocab_size and (ids[:, 0] == 101).all()  # [CLS] of our Google-layout vocab
        assert set(np.unique(f["next_sentence_labels"][()])) <= {0, 1}


def run_pipeline(working_dir: Path, books: Path, articles: list[str], prep, n_processes: str) -> dict[str, object]:
    """download (a books folder) -> text_formatting -> sharding -> create_vocab -> HDF5 128/20 and 512/80."""
    prep(working_dir, "--action", "download", "--dataset", "bookscorpus", "--bookscorpus_dir", str(books))
    prep(working_dir, "--action", "text_formatting", "--dataset", "bookscorpus")
    formatted = working_dir / "formatted_one_article_per_line"
    (formatted / "wikicorpus_en_one_article_per_line.txt").write_text("".join(a + "\n\n" for a in articles),
                                                                      encoding="utf-8")
    common = ["--dataset", "books_wiki_en_corpus", *SMALL_SHARDS, "--n_processes", n_processes]
    prep(working_dir, "--action", "sharding", *common)
    prep(working_dir, "--action", "create_vocab", *common, "--vocab_size", "2000")
    vocab = working_dir / "vocab" / "books_wiki_en_corpus" / "vocab.txt"
    outputs: dict[str, object] = {"vocab": hashlib.sha256(vocab.read_bytes()).hexdigest()}
    sharded = working_dir / "sharded_training_shards_4_test_shards_2_fraction_0.1" / "books_wiki_en_corpus"
    outputs["shards"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(sharded.glob("*.txt"))}
    for seq, preds in ((128, 20), (512, 80)):
        prep(working_dir, "--action", "create_hdf5_files", *common, "--vocab_file", str(vocab),
             "--max_seq_length", str(seq), "--max_predictions_per_seq", str(preds), "--dupe_factor", "1")
        folder = working_dir / (f"hdf5_lower_case_1_seq_len_{seq}_max_pred_{preds}_masked_lm_prob_0.15"
                                "_random_seed_12345_dupe_factor_1") / "books_wiki_en_corpus"
        outputs[f"hdf5_{seq}"] = hdf5_digest(folder)
        for path in folder.glob("*.hdf5"):
            check_shard_format(path, seq, preds, 2000)
    return outputs


def prep_cli(working_dir: Path, *args: str) -> None:
    ok(run_prep(working_dir, *args))


def prep_in_process(working_dir: Path, *args: str) -> None:
    from data import bertPrep

    bertPrep.main(["--working_dir", str(working_dir), *args])


@pytest.mark.slow
def test_end_to_end_books_and_wiki_to_hdf5_is_deterministic(tmp_path):
    """The real scripts with 2 worker processes, then the same steps in one process: identical outputs."""
    books = make_books(tmp_path / "books")
    articles = wikitext_articles(8)
    first = run_pipeline(tmp_path / "run1", books, articles, prep_cli, "2")
    names = [f"books_wiki_en_corpus_{s}_{i}.hdf5" for s, n in (("test", 2), ("training", 4)) for i in range(n)]
    assert sorted(first["hdf5_128"]) == names and sorted(first["hdf5_512"]) == names
    assert len(first["shards"]) == 6
    second = run_pipeline(tmp_path / "run2", books, articles, prep_in_process, "1")
    assert second == first


def test_hdf5_failure_is_reported_by_shard_and_rerun_skips_done_shards(tmp_path):
    source = tmp_path / "wiki.txt"
    source.write_text("".join(a + "\n\n" for a in wikitext_articles(8)), encoding="utf-8")
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    common = ["--dataset", "mini", *SMALL_SHARDS, "--n_processes", "2", "--vocab_file", str(vocab),
              "--max_seq_length", "64", "--max_predictions_per_seq", "10", "--dupe_factor", "1"]
    ok(run_prep(tmp_path, "--action", "sharding", "--input_files", str(source), *common))
    shard_dir = tmp_path / "sharded_training_shards_4_test_shards_2_fraction_0.1" / "mini"
    good_text = (shard_dir / "mini_training_2.txt").read_text(encoding="utf-8")
    (shard_dir / "mini_training_2.txt").write_text("\n\n", encoding="utf-8")  # a broken shard

    error = one_line_error(run_prep(tmp_path, "--action", "create_hdf5_files", *common))
    assert "1 of 6 shard(s) failed: mini_training_2.txt" in error
    out = tmp_path / ("hdf5_lower_case_1_seq_len_64_max_pred_10_masked_lm_prob_0.15_random_seed_12345"
                      "_dupe_factor_1") / "mini"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"mini_training_{i}.hdf5" for i in (0, 1, 3)] + ["mini_test_0.hdf5", "mini_test_1.hdf5"])

    (shard_dir / "mini_training_2.txt").write_text(good_text, encoding="utf-8")
    result = ok(run_prep(tmp_path, "--action", "create_hdf5_files", *common))
    assert "1 shard(s) to convert, 5 already complete" in result.stdout
    assert (out / "mini_training_2.hdf5").exists()


# ---------------------------------------------------------------- create_datasets_from_start.sh


def run_from_start(tmp_path: Path, mode: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = script_env()
    env.update(BERT_PREP_WORKING_DIR=str(tmp_path), PYTHON=sys.executable, **extra_env)
    env.pop("BOOKSCORPUS_DIR", None)
    return subprocess.run(["bash", str(ROOT / "data" / "create_datasets_from_start.sh"), mode],
                          capture_output=True, text=True, env=env, timeout=300)


def test_create_datasets_from_start_stops_at_the_first_failing_step(tmp_path):
    """wiki_books starts with BookCorpus: without a books folder it stops there, before any network use."""
    result = run_from_start(tmp_path, "wiki_books", BOOKSCORPUS_REPO=str(tmp_path / "no-scraper"))
    assert result.returncode == 2
    assert "error: bookscorpus: no source" in result.stderr and "--bookscorpus_dir" in result.stderr
    assert not (tmp_path / "download" / "wikicorpus_en").exists()

    bad = run_from_start(tmp_path, "everything")
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_create_datasets_from_start_offline_reports_the_wikipedia_host(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on, used as the proxy: no traffic leaves the host
        sock.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
    result = run_from_start(tmp_path, "wiki_only", http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy,
                            HTTPS_PROXY=proxy, no_proxy="", NO_PROXY="")
    assert result.returncode == 2
    assert "error: cannot reach dumps.wikimedia.org" in result.stderr
    assert not list((tmp_path / "download").rglob("*.bz2"))


def test_data_modules_import_without_touching_sys_path_or_scripts():
    """Importing any data/ module leaves sys.path alone and pulls in no top-level script (issue 11)."""
    code = (
        "import sys, pkgutil, importlib\n"
        "before = list(sys.path)\n"
        "names = [m.name for m in pkgutil.iter_modules(['data'])]\n"
        "for name in names: importlib.import_module('data.' + name)\n"
        "assert sys.path == before, 'sys.path changed'\n"
        "scripts = {'create_pretraining_data', 'run_pretraining', 'run_squad', 'run_glue', 'run_swag', 'inference'}\n"
        "assert not scripts & set(sys.modules), scripts & set(sys.modules)\n"
        "print(len(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=script_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 15


def test_wikipedia_formatting_on_several_workers_equals_one(tmp_path):
    """Each WikiExtractor file is formatted on a worker; the output equals a one-process run's, in file order."""
    from data import TextFormatting

    articles = wikitext_articles(12)
    extracted = tmp_path / "extracted"
    for index in range(5):
        folder = extracted / ("AA" if index < 3 else "AB")
        folder.mkdir(parents=True, exist_ok=True)
        docs = [f'<doc id="{index}{k}" url="x" title="T{k}">\nTitle {k}\n\n{article}\n</doc>\n'
                for k, article in enumerate(articles[index::5])]
        (folder / f"wiki_{index:02d}").write_text("".join(docs), encoding="utf-8")
    one = TextFormatting.format_wikipedia(extracted, tmp_path / "one.txt", n_processes=1)
    many = TextFormatting.format_wikipedia(extracted, tmp_path / "many.txt", n_processes=3)
    assert one == many == 12
    text = (tmp_path / "many.txt").read_text(encoding="utf-8")
    assert text == (tmp_path / "one.txt").read_text(encoding="utf-8")
    assert text.split("\n\n")[0] == " ".join(articles[0].split())  # AA/wiki_00's first article comes first
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".tmp*"))


# ---------------------------------------------------------------- workers die with bertPrep


def _descendants(pid: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")  # a zombie waiting for a reaper holds no memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("stage", ["sharding", "create_hdf5_files"])
@pytest.mark.parametrize("signum", [15, 9], ids=["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_a_killed_bertprep(tmp_path, stage, signum):
    """Kill bertPrep.py while its worker pool runs a real parallel stage: every worker is gone within seconds."""
    import os
    import time

    source = tmp_path / "wiki.txt"
    # Sharding is fast: give it enough text that it is still running when the signal comes, on a quiet machine too.
    copies = 40 if stage == "sharding" else 4
    source.write_text("".join(a + "\n\n" for a in wikitext_articles()) * copies, encoding="utf-8")
    common = ["--dataset", "mini", *SMALL_SHARDS, "--input_files", str(source), "--n_processes", "2"]
    if stage == "create_hdf5_files":
        ok(run_prep(tmp_path, "--action", "sharding", "--segmentation_method", "regex", *common))
        # Dupe factor 50: enough work (text bytes × dupe factor, bertPrep.processes_for) that bertPrep starts a
        # worker beside itself; it is killed long before the work is done.
        common += ["--vocab_file", str(shared_path("vocab", "bert-base-uncased-vocab.txt")),
                   "--max_seq_length", "128", "--max_predictions_per_seq", "20", "--dupe_factor", "50"]
    process = subprocess.Popen([sys.executable, str(BERTPREP), "--working_dir", str(tmp_path), "--action", stage,
                                *common], env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (workers := _descendants(process.pid)) and process.poll() is None:
            assert time.monotonic() < deadline, "the pool never started"
            time.sleep(0.05)
        assert process.poll() is None, "the stage finished before it could be killed"
        time.sleep(0.3)  # let the workers get to work
        workers = _descendants(process.pid)
        assert process.poll() is None, "the stage finished before it could be killed: give it more input"
        os.kill(process.pid, signum)
        assert process.wait(timeout=10) == (-signum if signum == 9 else 128 + signum)
        deadline = time.monotonic() + 5
        while (alive := {pid for pid in workers if _alive(pid)}) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive, f"workers still running after the parent died: {alive}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- settings recorded in shards, finished stages


HDF5_COMMON = ["--max_seq_length", "64", "--max_predictions_per_seq", "10", "--dupe_factor", "1"]
HDF5_FOLDER = "hdf5_lower_case_1_seq_len_64_max_pred_10_masked_lm_prob_0.15_random_seed_12345_dupe_factor_1"


def _sharded_mini(tmp_path: Path) -> list[str]:
    source = tmp_path / "wiki.txt"
    source.write_text("".join(a + "\n\n" for a in wikitext_articles(8)), encoding="utf-8")
    common = ["--dataset", "mini", *SMALL_SHARDS, "--n_processes", "1", "--input_files", str(source)]
    ok(run_prep(tmp_path, "--action", "sharding", "--segmentation_method", "regex", *common))
    return common


KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
from atomic_io import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half a shard")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_rerun_of_create_hdf5_files_removes_the_temp_files_of_a_killed_one(tmp_path):
    """A shard writer killed mid-write (a real SIGKILL inside atomic_io.atomic_path, which write_shard uses) leaves
    `.tmp-<shard>.hdf5.<random>`; the next create_hdf5_files run removes it and makes the shard."""
    common = [*_sharded_mini(tmp_path), *HDF5_COMMON, "--vocab_file",
              str(shared_path("vocab", "bert-base-uncased-vocab.txt"))]
    out = tmp_path / HDF5_FOLDER / "mini"
    out.mkdir(parents=True)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(out / "mini_training_0.hdf5")], env=script_env(),
                            cwd=ROOT, capture_output=True)
    assert killed.returncode == -9
    (leftover,) = out.glob(".tmp-mini_training_0.hdf5.*")
    ok(run_prep(tmp_path, "--action", "create_hdf5_files", *common))
    assert not leftover.exists() and not list(out.glob(".tmp-*"))
    assert (out / "mini_training_0.hdf5").is_file() and (out / ".create_hdf5_files_complete").exists()


def test_shards_record_their_settings_and_a_rerun_with_other_settings_is_a_one_line_error(tmp_path):
    from data import shard_creation as cpd

    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    common = [*_sharded_mini(tmp_path), *HDF5_COMMON]
    ok(run_prep(tmp_path, "--action", "create_hdf5_files", *common, "--vocab_file", str(vocab)))
    out = tmp_path / HDF5_FOLDER / "mini"
    assert (out / ".create_hdf5_files_complete").exists()
    text_shard = tmp_path / "sharded_training_shards_4_test_shards_2_fraction_0.1" / "mini" / "mini_training_0.txt"
    with h5py.File(out / "mini_training_0.hdf5", "r") as shard:
        recorded = {key: value.item() if hasattr(value, "item") else value for key, value in shard.attrs.items()}
    assert recorded == {
        "input_sha256": hashlib.sha256(text_shard.read_bytes()).hexdigest(),
        "vocab_sha256": hashlib.sha256(vocab.read_bytes()).hexdigest(), "do_lower_case": True,
        "do_whole_word_mask": False, "max_seq_length": 64, "max_predictions_per_seq": 10, "masked_lm_prob": 0.15,
        "short_seq_prob": 0.1, "dupe_factor": 1, "random_seed": 12345}

    # The same settings: every shard is kept. Settings the folder name does not show: a clear error.
    assert "0 shard(s) to convert, 6 already complete" in ok(
        run_prep(tmp_path, "--action", "create_hdf5_files", *common, "--vocab_file", str(vocab))).stdout
    error = one_line_error(run_prep(tmp_path, "--action", "create_hdf5_files", *common, "--vocab_file", str(vocab),
                                    "--do_whole_word_mask", "1"))
    assert ("mini_training_0.hdf5: made with do_whole_word_mask=False, "
            "this run asks for do_whole_word_mask=True") in error
    error = one_line_error(run_prep(tmp_path, "--action", "create_hdf5_files", *common, "--vocab_file", str(vocab),
                                    "--short_seq_prob", "0.2"))
    assert "short_seq_prob=0.1, this run asks for short_seq_prob=0.2" in error
    other_vocab = tmp_path / "vocab.txt"
    other_vocab.write_text(vocab.read_text(encoding="utf-8") + "extra\n", encoding="utf-8")
    error = one_line_error(run_prep(tmp_path, "--action", "create_hdf5_files", *common, "--vocab_file",
                                    str(other_vocab)))
    assert "made with vocab_sha256=" in error
    # A shard made by another tool (no attributes) is not taken for one of ours.
    arrays = cpd.create_instance_arrays(cpd.read_corpus([text_shard], cpd.load_tokenizer(str(vocab), True)),
                                        cpd.VocabIds.from_tokenizer(cpd.load_tokenizer(str(vocab), True), vocab),
                                        cpd.InstanceOptions(64, 10, 0.15, 0.1, 1), 12345)
    cpd.write_shard(arrays, out / "mini_training_0.hdf5")
    error = one_line_error(run_prep(tmp_path, "--action", "create_hdf5_files", *common, "--vocab_file", str(vocab)))
    assert "mini_training_0.hdf5: records no 'input_sha256' setting" in error


def test_hdf5_stage_refuses_an_interrupted_sharding(tmp_path):
    """Sharding killed part-way leaves no completion marker; create_hdf5_files and create_vocab then refuse."""
    import os
    import time

    common = _sharded_mini(tmp_path)
    folder = tmp_path / "sharded_training_shards_4_test_shards_2_fraction_0.1" / "mini"
    assert (folder / ".sharding_complete").exists()
    big = tmp_path / "big.txt"
    big.write_text("".join(a + "\n\n" for a in wikitext_articles()) * 4, encoding="utf-8")
    rerun = [arg if arg != str(tmp_path / "wiki.txt") else str(big) for arg in common]
    process = subprocess.Popen([sys.executable, str(BERTPREP), "--working_dir", str(tmp_path), "--action", "sharding",
                                *rerun], env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while (folder / ".sharding_complete").exists() and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert process.poll() is None, "sharding finished before it could be interrupted"
        os.kill(process.pid, 9)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    error = one_line_error(run_prep(tmp_path, "--action", "create_hdf5_files", *common, *HDF5_COMMON,
                                    "--vocab_file", str(vocab)))
    assert "mini: the sharding stage did not finish there (no .sharding_complete); run --action sharding" in error
    assert not (tmp_path / HDF5_FOLDER).exists()
