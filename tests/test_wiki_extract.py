"""The fast Wikipedia extractor (data/wiki_extract.py): cleaning construct by construct (checked against
the real WikiExtractor where the two agree by design), article filtering, multistream parallelism,
parity with WikiExtractor on a realistic dump built from WikiText, and damaged dumps."""
from __future__ import annotations

import bz2
import difflib
import html
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, load_benchmark, script_env, shared_path

from data import wiki_extract
from data.TextFormatting import extracted_files, run_wikiextractor
from input_checks import InputError

bench = load_benchmark("bench_data_pipeline")


def wikiextractor_clean(wikitext: str) -> list[str]:
    """The real WikiExtractor's paragraphs for one page's wikitext, its templates dropped (not expanded)."""
    from wikiextractor.extract import _DEFAULT_IGNORED_TAG_PATTERNS, Extractor, ignoreTag

    extractor = Extractor("1", "2", "https://x/wiki", "Page", [],
                          ignored_tag_patterns=[*_DEFAULT_IGNORED_TAG_PATTERNS, ignoreTag("a")])
    return extractor.clean_text(wikitext, expand_templates=False, html_safe=False)


# ---------------------------------------------------------------- cleaning, construct by construct

SAME_AS_WIKIEXTRACTOR = {
    "nested templates, multi-line infobox": (
        "Before {{Infobox person\n| name = {{nowrap|A {{small|b}}}}\n| born = 1900\n}}after.\n"
        "Text {{cite|x}} end. {{a|{{b|{{c|{{d}}}}}}}}Deep.",
        ["Before after.", "Text end. Deep."]),
    "nested tables, templates in cells": (
        'Intro.\n{| class="wikitable"\n|-\n| a || {{x}}\n|-\n|\n{|\n| nested\n|}\n|}\nOutro.',
        ["Intro.", "Outro."]),
    "references": (
        'A fact.<ref name="a/b">{{cite web|url=http://x}}</ref> More.<ref name="c" /> End<ref>plain</ref>.',
        ["A fact. More. End."]),
    "comments": ("Keep <!-- hidden\nmulti-line --> this.", ["Keep this."]),
    "files with links in captions, categories, interlanguage": (
        "[[File:Cat.jpg|thumb|A [[cat]] on a [[Mat (floor)|mat]] [[x|[[y]]]]]]Text [[Image:x.png]] here "
        "[[Category:Cats]] [[de:Katze]].",
        ["Text here."]),
    "internal links": (
        "The [[dog]]s and [[Cat (animal)|cats]] and [[a|b|c]] and [[w:Foo|foo]] and [[Foo| spaced ]].",
        ["The dogs and cats and b|c and foo and spaced."]),
    "external links": (
        "See [http://example.org the site] and [https://x.org] and http://bare.org now.",
        ["See the site and and http://bare.org now."]),
    "bold and italic": (
        "'''Bold''' and ''italic'' and '''''both''''' and ''\"q\"'' and ''unclosed end.",
        ['Bold and "italic" and both and "q" and "unclosed end.']),
    "entities": ("A&nbsp;B &lt;tag&gt; &ndash; &#x41;&#66; &eacute;t&eacute;.", ["A\xa0B <tag> – AB été."]),
    "section headings": (
        "Lead.\n== History ==\nOld.\n=== Early ===\n== Empty ==\n== Late? ==\nNew.\n==Tight==\nText.",
        ["Lead.", "History.", "Old.", "Late?", "New.", "Tight.", "Text."]),
    "lists and indents": ("Para.\n* item\n# num\n: indented\n; term\nEnd.", ["Para.", " indented", "End."]),
    "html tags": (
        'A<br/>B <span style="x">kept</span> <small>gone</small> <div>div</div> <gallery>\nA.jpg\n</gallery> '
        "x<sup>2</sup> <timeline>t</timeline><center>centred</center>.",
        ["A B kept div x2 ", "centred"]),  # a block tag breaks the line; the "." alone on its line goes
    "magic words": ("__NOTOC__Text __TOC__ here.", ["Text here."]),
    "punctuation and spacing": ("A  b , c ( d ) e .... f ,, g ,. h", ["A b, c (d) e... f, g. h"]),
}


@pytest.mark.parametrize("case", sorted(SAME_AS_WIKIEXTRACTOR))
def test_each_construct_is_cleaned_as_wikiextractor_does(case):
    wikitext, expected = SAME_AS_WIKIEXTRACTOR[case]
    assert wiki_extract.clean_wikitext(wikitext) == expected
    assert wikiextractor_clean(wikitext) == expected  # the reference agrees, so the expectation is its behaviour


def test_deliberate_differences_from_wikiextractor():
    """Math is dropped (WikiExtractor writes `formula_1`), a title that merely holds a colon keeps its label
    (WikiExtractor drops the link), entities are decoded once more only when the wikitext wrote them (MediaWiki's
    rendering), and a word in angle brackets that is no HTML tag stays text, as MediaWiki shows it."""
    wikitext = ("Energy <math>E=mc^2</math> is [[Star Wars: A New Hope|a film]] and [[Batman: Year One]]. "
                "Write &amp;lt;b&amp;gt; or <formula> here.")
    assert wiki_extract.clean_wikitext(wikitext) == [
        "Energy is a film and Batman: Year One. Write &lt;b&gt; or <formula> here."]
    assert wikiextractor_clean(wikitext) == ["Energy formula_1 is and. Write <b> or <formula> here."]


def test_an_element_left_unclosed_keeps_its_text_and_does_not_swallow_the_page():
    """HTML allows <td>, <li>, ... unclosed; each such one fails at the next opening of its kind (linear time on
    a page of thousands of them), its tag goes and its text stays; a closed one is dropped with its content."""
    assert wiki_extract.clean_wikitext("A <td>x <td>y</td> B <li>one <li>two</li> C") == ["A x B one C"]
    assert wiki_extract.clean_wikitext("A<ref>x B<ref>y</ref> C") == ["Ax B C"]
    assert wiki_extract.clean_wikitext("A" + "<ref>cite " * 3000 + "B") == ["A" + "cite " * 3000 + "B"]
    page = "Intro. " + "".join(f"<tr><td>cell{i} " for i in range(3000)) + "end."
    assert wiki_extract.clean_wikitext(page) == [
        "Intro. " + " ".join(f"cell{i}" for i in range(3000)) + " end."]


def test_templates_are_dropped_whatever_their_nesting_or_stray_braces():
    assert wiki_extract.drop_templates("a{{x|{1}|{{y}}}}b") == "ab"  # a single brace inside: the balanced scan
    assert wiki_extract.drop_templates("a{{x|{{y}} }}b {{p|{{q|}} c") == "ab {{p| c"  # never closed: stays text
    assert wiki_extract.drop_templates("}}a{{b}}c") == "}}ac"
    assert wiki_extract.drop_nested("x{|a{|b|}c|}y{|z", "{|", "|}") == "xy{|z"


# ---------------------------------------------------------------- articles of a dump

def page_xml(title: str, namespace: int, page_id: int, wikitext: str, redirect: bool = False) -> str:
    return bench._page_xml(title, namespace, page_id, wikitext, redirect=title if redirect else None)


def test_only_namespace_0_pages_that_are_not_redirects_are_articles(tmp_path):
    dump = tmp_path / "dump.xml"
    dump.write_text(bench.SITEINFO
                    + page_xml("Alpha & Omega", 0, 7, "'''Alpha''' is [[first]].<ref>x</ref>\n\n== Use ==\nOften.")
                    + page_xml("Old name", 0, 8, "#REDIRECT [[Alpha]]", redirect=True)
                    + page_xml("Talk:Alpha", 1, 9, "Talk text.")
                    + page_xml("Template:Box", 10, 10, "Template text.")
                    + page_xml("Empty", 0, 11, "")
                    + "</mediawiki>\n", encoding="utf-8")
    assert wiki_extract.extract_wikipedia(dump, tmp_path / "out") == 2
    assert (tmp_path / "out" / "AA" / "wiki_00").read_text(encoding="utf-8") == (
        '<doc id="7" url="https://en.wikipedia.org/wiki?curid=7" title="Alpha &amp; Omega">\n'
        "Alpha &amp; Omega\n\nAlpha is first.\nUse.\nOften.\n\n</doc>\n"
        '<doc id="11" url="https://en.wikipedia.org/wiki?curid=11" title="Empty">\nEmpty\n\n\n\n</doc>\n')


def test_a_dump_without_articles_is_a_clear_error(tmp_path):
    dump = tmp_path / "talk.xml"
    dump.write_text(bench.SITEINFO + page_xml("Talk:Alpha", 1, 9, "Talk text.") + "</mediawiki>\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"talk.xml: no articles .* is it a MediaWiki pages-articles dump\?"):
        wiki_extract.extract_wikipedia(dump, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def synthetic_articles(count: int) -> list[tuple[str, list[str]]]:
    """Articles of made-up prose (no shared data needed): varied words, several paragraphs each."""
    words = ["river", "valley", "north", "ancient", "city", "built", "stone", "bridge", "church", "market", "railway",
             "station", "school", "population", "century", "war", "king", "museum", "harbour", "island", "mountain",
             "forest", "village"]
    return [(f"Place {index}", [" ".join(words[(index * 7 + k * 3 + j) % len(words)] for j in range(40)) + " ."
                                for k in range(6)]) for index in range(count)]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def concatenated(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in extracted_files(folder))


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[str, Path]:
    """The same 600 articles as a multistream dump (10 pages per stream), one bz2 stream, plain XML, and
    bz2 streams cut every 20 kB of XML (pages cut in two, as a parallel bzip2 writes them)."""
    folder = tmp_path_factory.mktemp("dumps")
    articles = synthetic_articles(600)
    paths = {"multistream": folder / "multi.xml.bz2", "single": folder / "single.xml.bz2", "xml": folder / "plain.xml"}
    bench.write_dump(articles, 600, paths["multistream"], pages_per_stream=10)
    bench.write_dump(articles, 600, paths["single"], pages_per_stream=None)
    bench.write_dump(articles, 600, paths["xml"])
    xml = paths["xml"].read_bytes()
    paths["cut"] = folder / "cut.xml.bz2"
    paths["cut"].write_bytes(b"".join(bz2.compress(xml[i:i + 20_000]) for i in range(0, len(xml), 20_000)))
    return paths


def test_multistream_dump_gives_the_same_files_on_one_and_two_processes_in_dump_order(dumps, tmp_path):
    size = dumps["multistream"].stat().st_size
    task_bytes = size // 7  # several tasks, each a range of whole streams
    one = wiki_extract.extract_wikipedia(dumps["multistream"], tmp_path / "one", 1, task_bytes=task_bytes)
    two = wiki_extract.extract_wikipedia(dumps["multistream"], tmp_path / "two", 2, task_bytes=task_bytes)
    assert one == two == 600
    files = tree(tmp_path / "one")
    assert files == tree(tmp_path / "two") and len(files) >= 6  # byte for byte, file for file
    assert [name.split("/")[0] for name in files] == ["AA"] * len(files)
    ids = [int(i) for i in re.findall(rb'<doc id="(\d+)"', concatenated(tmp_path / "one"))]
    assert ids == [3 * page + 1 for page in range(600)]  # dump order; redirects and Talk pages left out


@pytest.mark.parametrize("kind", ["single", "xml", "cut"])
def test_one_stream_plain_xml_and_page_cutting_streams_give_the_multistream_output(dumps, tmp_path, kind):
    """Read by one reader feeding the pool (a cut page falls back to that too): the same articles, same bytes."""
    wiki_extract.extract_wikipedia(dumps["multistream"], tmp_path / "multi", 2)
    assert wiki_extract.extract_wikipedia(dumps[kind], tmp_path / kind, 2) == 600
    assert concatenated(tmp_path / kind) == concatenated(tmp_path / "multi")
    assert not list((tmp_path / kind).rglob(".*"))  # no parts or temp files left


def test_serial_reader_batches_end_on_whole_pages(dumps):
    batches = list(wiki_extract.page_batches(dumps["single"], batch_bytes=50_000))
    assert len(batches) > 5
    assert all(batch.rstrip().endswith(b"</page>") for batch in batches)
    assert sum(batch.count(b"<page>") for batch in batches) == 600 + 2 * 30


# ---------------------------------------------------------------- damaged dumps

def run_prep(working_dir: Path, dump_bytes: bytes) -> subprocess.CompletedProcess:
    download = working_dir / "download" / "wikicorpus_en"
    download.mkdir(parents=True, exist_ok=True)
    (download / "wikicorpus_en.xml.bz2").write_bytes(dump_bytes)
    return subprocess.run([sys.executable, str(ROOT / "data" / "bertPrep.py"), "--working_dir", str(working_dir),
                           "--action", "text_formatting", "--dataset", "wikicorpus_en", "--n_processes", "2"],
                          capture_output=True, text=True, env=script_env(), timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_truncated_or_damaged_multistream_dump_is_one_error_and_leaves_nothing_trusted(dumps, tmp_path):
    good = dumps["multistream"].read_bytes()
    damaged = bytearray(good)
    middle = len(good) // 2
    damaged[middle:middle + 64] = bytes(64)  # inside some stream in the middle
    for name, data in (("truncated", good[: len(good) * 3 // 4]), ("damaged", bytes(damaged))):
        error = one_line_error(run_prep(tmp_path, data))
        assert "wikicorpus_en.xml.bz2" in error and "download again" in error, (name, error)
        assert not (tmp_path / "extracted" / "wikicorpus_en").exists(), name
        assert not (tmp_path / "formatted_one_article_per_line" / "wikicorpus_en_one_article_per_line.txt").exists()
    result = run_prep(tmp_path, good)  # the good dump afterwards: a full run, nothing reused
    assert result.returncode == 0, result.stderr
    formatted = tmp_path / "formatted_one_article_per_line" / "wikicorpus_en_one_article_per_line.txt"
    assert formatted.read_text(encoding="utf-8").count("\n\n") == 600


def test_damage_between_streams_is_found(dumps, tmp_path):
    """Garbage between two whole streams is not skipped by the worker whose range starts after it."""
    good = dumps["multistream"].read_bytes()
    cut = [m.start() for m in re.finditer(rb"BZh91AY&SY", good)][30]
    dump = tmp_path / "gap.xml.bz2"
    dump.write_bytes(good[:cut] + b"junk" * 10 + good[cut:])
    with pytest.raises(InputError, match=r"gap.xml.bz2: damaged bz2 data"):
        wiki_extract.extract_wikipedia(dump, tmp_path / "out", 2, task_bytes=len(good) // 7)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- parity with WikiExtractor on a realistic dump

def articles_of(folder: Path) -> list[tuple[str, str, list[str]]]:
    """(id, title, body lines) of each <doc> in the extractor's files, in order."""
    docs = []
    for path in extracted_files(folder):
        for match in re.finditer(r'<doc id="(\d+)" url="[^"]*" title="([^"]*)">\n[^\n]*\n(.*?)\n</doc>\n',
                                 path.read_text(encoding="utf-8"), re.S):
            docs.append((match.group(1), match.group(2), [line for line in match.group(3).split("\n") if line]))
    return docs


def test_parity_with_wikiextractor_on_a_realistic_dump(tmp_path):
    """400 pages built from WikiText articles with infoboxes, tables, citations, links, bold/italic, headings,
    categories, redirects and Talk pages: the same articles and titles as WikiExtractor's, >= 99.9% of the
    words in the same order (WikiExtractor's text is HTML-escaped; unescaped here), and every source paragraph
    of every page found whole in ours."""
    articles = bench.wikitext_articles(shared_path("corpus", "wikitext-2-raw", "wiki.test.raw"))
    dump = tmp_path / "dump.xml.bz2"
    bench.write_dump(articles, 400, dump)
    run_wikiextractor(dump, tmp_path / "wikiextractor", 2)
    assert wiki_extract.extract_wikipedia(dump, tmp_path / "fast", 2) == 400
    reference, ours = articles_of(tmp_path / "wikiextractor"), articles_of(tmp_path / "fast")
    assert [(i, t) for i, t, _ in ours] == [(i, t) for i, t, _ in reference] and len(ours) == 400

    matched = total = 0
    for (_, _, theirs), (_, _, mine) in zip(reference, ours, strict=True):
        their_words, my_words = html.unescape(" ".join(theirs)).split(), " ".join(mine).split()
        blocks = difflib.SequenceMatcher(None, their_words, my_words, autojunk=False).get_matching_blocks()
        matched += sum(block.size for block in blocks)
        total += max(len(their_words), len(my_words))
    assert matched / total >= 0.999, matched / total

    words = re.compile(r"\w+")
    for (_, _, mine), (_, paragraphs, _) in zip(ours, bench.dump_pages(articles, 400), strict=True):
        text = " " + " ".join(words.findall(" ".join(mine))) + " "
        for paragraph in paragraphs:
            assert " " + " ".join(words.findall(paragraph)) + " " in text
