"""A fast, parallel Wikipedia extractor: MediaWiki `pages-articles` dump -> WikiExtractor's output.

Output (what `TextFormatting.format_wikipedia` reads): folders `AA/wiki_00`, `AA/wiki_01`, ...
of `<doc id=".." url=".." title="..">` blocks, the title on the first line, then one paragraph
per line, then `</doc>`. Only namespace-0 pages that are not redirects are kept, as WikiExtractor
does.

Cleaning is a fixed set of cheap regex/scan passes over each page's wikitext (docs/data-pipeline.md
lists them next to WikiExtractor's): templates `{{...}}` are DROPPED at any depth, never expanded
(WikiExtractor expands the few it can, e.g. `{{convert}}` and dates, which this extractor loses);
tables, references, comments, galleries, math and other non-prose elements are dropped; links
become their labels; bold/italic markup, magic words and HTML tags go; entities are unescaped.
Where no template is involved the text matches WikiExtractor's default output word for word
(tests/test_wiki_extract.py measures it), except that text is plain (no `&amp;` HTML escaping),
`<math>`/`<code>` do not become `formula_N`/`codice_N`, and a link whose title merely contains a
colon ("Star Wars: ...") keeps its label.

Parallel in every stage: Wikimedia's `*-pages-articles-multistream.xml.bz2` is a concatenation of
independent bz2 streams of ~100 whole pages each (the first holds `<siteinfo>`). The dump is cut
into byte ranges fixed by its size alone; each pool worker decompresses the streams that START in
its range (the first located by its byte-aligned `BZh[1-9]1AY&SY` header, the rest by where the
previous stream ends), parses and cleans their pages and writes one part; the parent renames the
finished parts in order and checks that the ranges' streams tile the file. Output order is dump
order, and the files are the same whatever the number of processes. A dump that is one bz2
stream (or plain `.xml`, or whose streams cut pages in two) is read by one reader that hands
batches of whole pages to the pool, as WikiExtractor does: same text, but reader-bound.
"""
from __future__ import annotations

import bz2
import html
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path

from atomic_io import atomic_path
from data.workers import worker_pool
from input_checks import InputError

# ------------------------------------------------------------------------------------------------
# Cleaning one page's wikitext
# ------------------------------------------------------------------------------------------------

_COMMENT = re.compile(r"<!--.*?-->", re.S)
# <ref name="a/b" /> and friends: a '/' right before '>' closes the tag (attribute values may hold '/').
_SELF_CLOSING = re.compile(r"<(?:ref|references|nowiki|templatestyles|section)\b[^>]*/\s*>", re.I)
# Elements dropped with their content (WikiExtractor's discardElements, plus math-like tags that
# it turns into `formula_N` placeholders). Not nested in practice; `(?<!/)` skips self-closing tags.
_DISCARDED_TAGS = (
    "ref", "references", "gallery", "timeline", "noinclude", "includeonly", "pre", "table", "tr", "td", "th",
    "caption", "form", "input", "select", "option", "textarea", "ul", "li", "ol", "dl", "dt", "dd", "menu", "dir",
    "img", "imagemap", "source", "syntaxhighlight", "small", "inputbox", "categorytree", "math", "chem", "ce",
    "score", "graph", "mapframe", "maplink",
)
# [^<]* runs in C; stops at the next ref
_REF = re.compile(r"<ref\b[^>]*(?<!/)>[^<]*(?:<(?!/?ref\b)[^<]*)*</ref\s*>", re.I)
# Content up to the element's own closing tag, never past another opening of the same element: an element
# left unclosed (HTML allows it for <td>, <li>, ...) then fails at once instead of scanning to the end of the
# page (which made a page with thousands of them quadratic).
_DISCARDED = (r"<(?P<tag>" + "|".join(_DISCARDED_TAGS) + r")\b[^>]*(?<!/)>"
              r"[^<]*(?:<(?!/?(?P=tag)\b)[^<]*)*</(?P=tag)\s*>")
# All of them in one pass (the leftmost wins, so a comment's or gallery's content goes with it).
_NON_PROSE = re.compile("|".join((_COMMENT.pattern, _SELF_CLOSING.pattern, _REF.pattern, _DISCARDED)), re.I | re.S)
_INNERMOST_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_URL_PROTOCOLS = ("https?://", "ftps?://", "//", "mailto:", "news:", "irc://", "ircs://", "git://", "sftp://",
                  "ssh://", "svn://", "telnet://", "urn:", "geo:", "tel:", "xmpp:")
_EXTERNAL_LINK = re.compile(r"\[(?=[A-Za-z/])(?:" + "|".join(_URL_PROTOCOLS) + r")[^\][<>\"\s]+\s*([^\]\n]*)\]", re.I)
# An innermost internal link (no brackets inside): [[target]]trail or [[target|...|label]]trail.
_INTERNAL_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\](\w*)")
# Prefixes that make [[prefix:...]] a file, category, project page or interlanguage link (dropped).
_NAMESPACES = frozenset((
    "file", "image", "media", "category", "wikipedia", "wp", "project", "help", "template", "portal", "user",
    "special", "draft", "module", "mediawiki", "book", "timedtext", "topic", "talk", "simple", "commons",
    "meta", "wikisource", "wikiquote", "wikibooks", "wikinews", "wikivoyage", "wikispecies", "wikidata", "d",
    "s", "q", "b", "n", "v", "voy", "species", "c", "m", "mw", "phab",
))  # not w:, wikt:, wiktionary: (links to Wikipedia/Wiktionary words): WikiExtractor keeps those
_KEPT_PREFIXES = frozenset(("w", "wikt", "wiktionary"))
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]+)*")
_MAGIC_WORD = re.compile(r"__[A-Z]{2,}__")
# WikiExtractor's (non-HTML) bold/italic rules: bold loses its quotes, italic becomes "quoted".
_BOLD_ITALIC = re.compile(r"'''''(.*?)'''''")
_QUOTE_QUOTE = re.compile(r'""([^"]*?)""')
_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9]*)\b[^<>]*>")
# The HTML and extension tags MediaWiki knows; any other `<word>` is shown as text (WikiText's `<formula>`).
_KNOWN_TAGS = frozenset((
    "a", "abbr", "b", "bdi", "bdo", "big", "blockquote", "br", "caption", "center", "cite", "code", "data", "dd", "del",
    "dfn", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hiero", "hr", "i", "ins", "kbd", "li",
    "mark", "nowiki", "ol", "onlyinclude", "p", "poem", "q", "rb", "rp", "rt", "rtc", "ruby", "s", "samp", "section",
    "small", "span", "strike", "strong", "sub", "sup", "table", "td", "th", "time", "tr", "tt", "u", "ul", "var",
    "wbr", "includeonly", "noinclude", "templatestyles", "ref", "references", "indicator", "charinsert", "langconvert",
))
_LINE_BREAK_TAGS = frozenset(("br", "hr"))
_BLOCK_TAGS = frozenset(("p", "center", "h1", "h2", "h3", "h4"))
_SPACE_BEFORE_CLOSING = re.compile(r" (?=[,:.)\]»])")
_DOTS = re.compile(r"\.{4,}")
_PUNCTUATION_LINE = re.compile(r"\n\W+?\n")
_HEADING = re.compile(r"(==+)\s*(.*?)\s*\1")


def drop_nested(text: str, opener: str, closer: str) -> str:
    """`text` without each outermost balanced `opener ... closer` span (nested ones go with it).

    A stray closer outside any span stays; an opener never closed keeps the rest of the text, as
    MediaWiki shows unbalanced markup as text (and WikiExtractor keeps it). Scans with str.find:
    several times faster than a regex alternation."""
    kept: list[str] = []
    keep_from, step_open, step_close = 0, len(opener), len(closer)
    next_open = text.find(opener)
    while next_open >= 0:
        span_start, depth, cursor = next_open, 1, next_open + step_open
        next_open = text.find(opener, cursor)
        while depth:
            next_close = text.find(closer, cursor)
            if next_close < 0:
                kept.append(text[keep_from:])
                return "".join(kept)
            if 0 <= next_open < next_close:
                depth, cursor = depth + 1, next_open + step_open
                next_open = text.find(opener, cursor)
            else:
                depth, cursor = depth - 1, next_close + step_close
                if 0 <= next_open < cursor:  # delimiters that overlap ("{|}")
                    next_open = text.find(opener, cursor)
        kept.append(text[keep_from:span_start])
        keep_from = cursor
    kept.append(text[keep_from:])
    return "".join(kept)


def drop_templates(text: str) -> str:
    """Every {{template}}, nested or not: innermost ones by a regex pass per nesting level (C speed), then
    whatever a stray brace kept from that (`{{a|{b}}}`) by the balanced scan."""
    while "{{" in text:
        text, count = _INNERMOST_TEMPLATE.subn("", text)
        if not count:
            return drop_nested(text, "{{", "}}")
    return text


def _is_namespaced(target: str) -> bool:
    colon = target.find(":", 1 if target.startswith(":") else 0)
    if colon < 0:
        return False
    prefix = target[:colon].lstrip(":").strip()
    if prefix in _KEPT_PREFIXES:
        return False
    return prefix.lower() in _NAMESPACES or prefix.lower().endswith(" talk") or bool(_LANGUAGE_CODE.fullmatch(prefix))


def _internal_link(match: re.Match) -> str:
    target, label, trail = match.group(1, 2, 3)
    if ":" in target and _is_namespaced(target):
        return trail  # files (with their captions), categories, interlanguage links
    if label is None:
        return target + trail
    return label.strip() + trail  # all after the first '|', as WikiExtractor


def replace_internal_links(text: str) -> str:
    """[[target|label]] -> label, [[target]] -> target, + the word trail ([[dog]]s -> dogs); innermost first,
    so a file caption's own links are resolved before the file link (and its caption) is dropped."""
    while "[[" in text:
        text, count = _INTERNAL_LINK.subn(_internal_link, text)
        if not count:
            break
    return text


def _tag(match: re.Match) -> str:
    name = match.group(1).lower()
    if name not in _KNOWN_TAGS:
        return match.group()
    if name in _LINE_BREAK_TAGS:
        return " "
    return "\n" if name in _BLOCK_TAGS else ""


_XML_CHARACTER_REFERENCE = re.compile(r"&#(?:([0-9]{1,7})|[xX]([0-9a-fA-F]{1,6}));")


def _character(match: re.Match) -> str:
    code = int(match.group(1)) if match.group(1) else int(match.group(2), 16)
    return chr(code) if 0 < code < 0x110000 else match.group()


def _xml_unescape_tags(text: str) -> str:
    """The dump's `&lt;`/`&gt;` -> `<`/`>` (the markup passes need them); the rest of its XML escaping is undone by
    `_xml_unescape_rest` once templates, references and tables are gone (less text to rewrite)."""
    return text.replace("&lt;", "<").replace("&gt;", ">") if "&" in text else text


def _xml_unescape_rest(text: str) -> str:
    """The dump's other XML escapes; `&amp;` last, so `&amp;lt;` becomes the wikitext's own `&lt;` (decoded with
    the other entities of the wikitext, after the tags are gone)."""
    if "&" not in text:
        return text
    text = text.replace("&quot;", '"').replace("&apos;", "'")
    if "&#" in text:  # apostrophes first: some exporters escape every one
        text = text.replace("&#039;", "'").replace("&#39;", "'").replace("&#x27;", "'")
    if "&#" in text:
        text = _XML_CHARACTER_REFERENCE.sub(_character, text)
    return text.replace("&amp;", "&")


def _drop_markup(text: str) -> str:
    """Comments, references and other non-prose elements, templates, tables: gone with their content."""
    if "<" in text:
        text = _NON_PROSE.sub("", text)
    text = drop_templates(text)
    if "{|" in text:
        text = drop_nested(text, "{|", "|}")
    return text


def _bold_italic_removed(text: str) -> str:
    """WikiExtractor's bold/italic rules in str.replace passes: bold-italic and bold lose their quotes (a stray
    triple quote goes too); every double quote pair of apostrophes becomes '"' (its italic -> "x" rule and its
    stray-quote rule give the same); then ""x"" -> "x"."""
    if "'''''" in text:
        text = _BOLD_ITALIC.sub(r"\1", text)
    text = text.replace("'''", "").replace("''", '"')
    if '""' in text:
        text = _QUOTE_QUOTE.sub(r'"\1"', text)
    return text


def _resolve_inline(text: str) -> str:
    """Links -> their text, magic words and bold/italic markup removed, remaining tags dropped, entities decoded."""
    if "[" in text:
        text = _EXTERNAL_LINK.sub(r"\1", text)
        text = replace_internal_links(text)
    if "__" in text:
        text = _MAGIC_WORD.sub("", text)
    if "''" in text:
        text = _bold_italic_removed(text)
    if "<" in text:
        text = _TAG.sub(_tag, text)
    if "&" in text:
        text = html.unescape(text)  # entities written in the wikitext itself (&nbsp;, &ndash;, &amp;lt;)
    if "<<" in text or ">>" in text:
        text = text.replace("<<", "«").replace(">>", "»")
    return text


def _tidy(text: str) -> str:
    """WikiExtractor's final clean-up of spacing and punctuation (its space runs -> one space, no space before
    `,:.)]»` or after `[(«`), in passes that call no Python code per match."""
    text = text.replace("\t", " ")
    while "  " in text:
        text = text.replace("  ", " ")
    if "...." in text:
        text = _DOTS.sub("...", text)
    text = _SPACE_BEFORE_CLOSING.sub("", text)
    for opening in "[(«":
        if opening + " " in text:
            text = text.replace(opening + " ", opening)
    text = _PUNCTUATION_LINE.sub("\n", text)
    return text.replace(",,", ",").replace(",.", ".")


def paragraphs(text: str) -> list[str]:
    """Lines -> paragraphs, as WikiExtractor's `compact` (default options) does: list items, table residues and
    lines in parentheses are dropped; a section heading becomes "Heading." and is kept only when text follows it
    (the pending headings of all levels, outermost first, before that text)."""
    page: list[str] = []
    headings: dict[int, str] = {}
    for line in text.split("\n"):
        if not line or line.isspace():
            continue
        first = line[0]
        if first == "=":
            heading = _HEADING.match(line)
            if heading:
                title, level = heading.group(2), len(heading.group(1))
                if title and title[-1] not in "!?":
                    title += "."
                headings = {lev: value for lev, value in headings.items() if lev < level}
                headings[level] = title
                continue
        if first == ":":
            page.append(line.lstrip(":"))
        elif first == "<" and (line.startswith("<doc") or line.startswith("</doc>")):
            continue  # would be read as a document boundary
        elif first in "*#;{|" or line[-1] == "}" or (first == "(" and line[-1] == ")") or not line.strip(".-"):
            continue
        else:
            if headings:
                page.extend(headings[level] for level in sorted(headings))
                headings = {}
            page.append(line)
    return page


def clean_wikitext(wikitext: str) -> list[str]:
    """One page's wikitext -> its paragraphs of plain text."""
    return clean_xml_text(html.escape(wikitext, quote=False))


def clean_xml_text(text: str) -> list[str]:
    """The content of a dump's <text> element (XML-escaped wikitext) -> its paragraphs of plain text."""
    return paragraphs(_tidy(_resolve_inline(_xml_unescape_rest(_drop_markup(_xml_unescape_tags(text))))))


# ------------------------------------------------------------------------------------------------
# Pages of the XML
# ------------------------------------------------------------------------------------------------


class NotPageAligned(Exception):
    """A bz2 stream that does not hold whole pages (not a Wikimedia multistream dump): read it serially."""


def _between(text: str, opening: str, closing: str, start: int = 0, end: int | None = None) -> str:
    """The text between the first `opening` in text[start:end] and the `closing` after it ('' if none)."""
    end = len(text) if end is None else end
    begin = text.find(opening, start, end)
    if begin < 0:
        return ""
    begin += len(opening)
    stop = text.find(closing, begin, end)
    return text[begin:stop if stop >= 0 else end]


def url_base(xml_head: str) -> str:
    """What WikiExtractor puts before `?curid=`: siteinfo's <base> up to its last '/'."""
    base = _between(xml_head, "<base>", "</base>")
    return base[:base.rfind("/")]


def format_doc(page_id: str, title: str, body: list[str], urlbase: str) -> str:
    """One article in WikiExtractor's format (the title as the dump spells it, XML-escaped)."""
    return (f'<doc id="{page_id}" url="{urlbase}?curid={page_id}" title="{title}">\n{title}\n\n'
            + "\n".join(body) + "\n\n</doc>\n")


def article_docs(xml: str, urlbase: str) -> Iterator[str]:
    """Each namespace-0, non-redirect `<page>` of `xml` as a formatted doc. `xml` must hold whole pages
    (NotPageAligned otherwise): a bz2 stream of a multistream dump does, one cut anywhere does not.

    Works on offsets into `xml`: only each page's short header and its text are scanned or copied."""
    find, position = xml.find, 0
    while True:
        start = find("<page>", position)
        if find("</page>", position, start if start >= 0 else len(xml)) >= 0:
            raise NotPageAligned("a </page> without its <page>")
        if start < 0:
            return
        end = find("</page>", start)
        if end < 0:
            raise NotPageAligned("a <page> without its </page>")
        position = end + 7
        text_tag = find("<text", start, end)
        header_end = text_tag if text_tag >= 0 else end
        if _between(xml, "<ns>", "</ns>", start, header_end) != "0" or find("<redirect", start, header_end) >= 0:
            continue
        wikitext = ""
        if text_tag >= 0:
            text_open = find(">", text_tag, end)
            if xml[text_open - 1] != "/":
                wikitext = xml[text_open + 1:xml.rfind("</text>", text_open, end)]
        yield format_doc(_between(xml, "<id>", "</id>", start, header_end),
                         _between(xml, "<title>", "</title>", start, header_end), clean_xml_text(wikitext), urlbase)


def _write_docs(docs: Iterable[str], part: Path) -> int:
    count = 0
    with atomic_path(part) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for doc in docs:
            out.write(doc)
            count += 1
    return count


# ------------------------------------------------------------------------------------------------
# bz2 streams
# ------------------------------------------------------------------------------------------------

_STREAM_MAGIC = re.compile(rb"BZh[1-9]1AY&SY")
_READ_BYTES = 1 << 18
RANGE_BYTES_MIN = 256 << 10
RANGE_BYTES_MAX = 32 << 20


def range_bytes(file_size: int) -> int:
    """Bytes of compressed dump per worker task: fixed by the file's size alone, so the output files are the
    same whatever the number of processes; ~256 tasks for a small dump, 32 MiB each for a large one."""
    return max(RANGE_BYTES_MIN, min(RANGE_BYTES_MAX, -(-file_size // 256)))


def _first_stream_start(dump, start: int, end: int) -> int | None:
    """Offset of the first bz2 stream header at or after `start` and before `end` (None: none there)."""
    position = start
    while position < end:
        dump.seek(position)
        window = dump.read(min(_READ_BYTES, end - position) + 9)  # a header may straddle the window's end
        found = _STREAM_MAGIC.search(window)
        if found:
            return position + found.start() if position + found.start() < end else None
        if len(window) < 10:
            return None
        position += len(window) - 9
    return None


def bz2_streams(dump, path: Path, start: int, end: int) -> Iterator[tuple[int, bytes, int]]:
    """(offset, decompressed bytes, offset after it) of each bz2 stream that starts at `start` and the
    streams that follow it, as long as they start before `end`."""
    position, pending = start, b""
    dump.seek(start)
    while position < end:
        pending = pending or dump.read(_READ_BYTES)
        if not pending:
            return
        if len(pending) < 10:
            pending += dump.read(_READ_BYTES)
        if not _STREAM_MAGIC.match(pending):
            raise InputError(f"{path}: damaged bz2 data: no stream header at byte {position}; "
                             f"delete it and download again")
        decompressor, chunks, stream_start = bz2.BZ2Decompressor(), [], position
        while True:
            try:
                chunks.append(decompressor.decompress(pending))
            except OSError as exc:
                raise InputError(f"{path}: damaged bz2 data in the stream at byte {stream_start} ({exc}); "
                                 f"delete it and download again") from None
            if decompressor.eof:
                position += len(pending) - len(decompressor.unused_data)
                pending = decompressor.unused_data
                break
            position += len(pending)
            pending = dump.read(_READ_BYTES)
            if not pending:
                raise InputError(f"{path}: truncated: the bz2 stream at byte {stream_start} has no end; "
                                 f"delete it and download again")
        yield stream_start, b"".join(chunks), position


def _extract_range(job: tuple[Path, int, int, str, Path]) -> tuple[int, int | None, int | None]:
    """A worker: the docs of the streams starting in [start, end) -> `part`; (docs, first stream, end offset)."""
    path, start, end, urlbase, part = job
    with open(path, "rb") as dump:
        first = _first_stream_start(dump, start, end)
        if first is None:
            return 0, None, None
        last_end = [first]

        def docs() -> Iterator[str]:
            for _, data, after in bz2_streams(dump, path, first, end):
                xml = data.decode("utf-8", errors="replace")
                yield from article_docs(xml, urlbase)
                last_end[0] = after

        count = _write_docs(docs(), part)
    return count, first, last_end[0]


def _probe_bz2(path: Path) -> tuple[str, bool]:
    """(url base, multistream?): decompress the first stream; Wikimedia's multistream dumps hold only
    <siteinfo> there and another stream follows it. Anything else (one stream) is read serially."""
    decompressor, head = bz2.BZ2Decompressor(), b""
    with open(path, "rb") as dump:
        while not decompressor.eof and len(head) < (4 << 20):
            block = dump.read(_READ_BYTES)
            if not block:
                break  # truncated: the serial reader reports it
            try:
                head += decompressor.decompress(block)
            except OSError as exc:
                raise InputError(f"{path}: damaged bz2 data at its start ({exc}); "
                                 "delete it and download again") from None
        following = (decompressor.unused_data + dump.read(10))[:10] if decompressor.eof else b""
    return url_base(head.decode("utf-8", errors="replace")), bool(_STREAM_MAGIC.match(following))


# ------------------------------------------------------------------------------------------------
# The serial reader (one stream, plain XML)
# ------------------------------------------------------------------------------------------------

READER_BATCH_BYTES = 4 << 20


def _open_xml(path: Path):
    return bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")


def page_batches(path: Path, batch_bytes: int = READER_BATCH_BYTES) -> Iterator[bytes]:
    """The decompressed dump in pieces of about `batch_bytes`, each cut after a `</page>`."""
    tail = b""
    try:
        with _open_xml(path) as xml:
            while block := xml.read(batch_bytes):
                data = tail + block
                cut = data.rfind(b"</page>")
                if cut < 0:
                    tail = data
                    continue
                yield data[:cut + 7]
                tail = data[cut + 7:]
    except (EOFError, OSError) as exc:
        raise InputError(f"{path}: truncated or damaged ({exc}); delete it and download again") from None
    if b"<page>" in tail:
        raise InputError(f"{path}: ends inside a <page> (truncated?); delete it and download again")


def _extract_batch(job: tuple[bytes, str, Path]) -> tuple[int, None, None]:
    """A worker: the docs of one batch of whole pages -> `part`."""
    xml, urlbase, part = job
    return _write_docs(article_docs(xml.decode("utf-8", errors="replace"), urlbase), part), None, None


# ------------------------------------------------------------------------------------------------
# The whole dump
# ------------------------------------------------------------------------------------------------


def output_name(index: int) -> str:
    """WikiExtractor's file names: AA/wiki_00 ... AA/wiki_99, AB/wiki_00, ..."""
    folder = index // 100
    return f"{chr(65 + folder // 26 % 26)}{chr(65 + folder % 26)}/wiki_{index % 100:02d}"


class _InOrder:
    """Renames finished parts to the next output names in task order (empty parts are dropped)."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir, self.files, self.docs = output_dir, 0, 0
        self.results: list[tuple[int, int | None, int | None]] = []

    def commit(self, part: Path, result: tuple[int, int | None, int | None]) -> None:
        self.results.append(result)
        count = result[0]
        if not count:
            part.unlink(missing_ok=True)
            return
        final = self.output_dir / output_name(self.files)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        self.files += 1
        self.docs += count


def _run_in_order(pool, worker: Callable, jobs: Iterable[tuple], committer: _InOrder, in_flight: int) -> None:
    """Submit `worker(job)` with at most `in_flight` pending; commit each part in submission order."""
    pending: list[tuple[Future, Path]] = []
    try:
        for job in jobs:
            pending.append((pool.submit(worker, job), job[-1]))
            while len(pending) >= in_flight or (pending and pending[0][0].done()):
                future, part = pending.pop(0)
                committer.commit(part, future.result())
        for future, part in pending:
            committer.commit(part, future.result())
    except BaseException:
        for future, _ in pending:
            future.cancel()
        raise


def _check_streams_tile_the_file(path: Path, results: list[tuple[int, int | None, int | None]], size: int) -> None:
    """Every byte of the dump was decompressed: each range's first stream starts where the previous range's
    last one ended, the first at byte 0, the last ending at the end of the file."""
    expected = 0
    for _, first, after in results:
        if first is None:
            continue
        if first != expected:
            raise InputError(f"{path}: damaged bz2 data between bytes {expected} and {first}; "
                             f"delete it and download again")
        expected = after
    if expected != size:
        raise InputError(f"{path}: damaged or truncated bz2 data after byte {expected}; delete it and download again")


def _extract_multistream(path: Path, output_dir: Path, urlbase: str, pool, n_processes: int,
                         task_bytes: int | None) -> int:
    size = path.stat().st_size
    step = task_bytes or range_bytes(size)
    parts = output_dir / ".parts"
    parts.mkdir()
    jobs = ((path, start, min(start + step, size), urlbase, parts / f"{index:06d}")
            for index, start in enumerate(range(0, size, step)))
    committer = _InOrder(output_dir)
    _run_in_order(pool, _extract_range, jobs, committer, 4 * n_processes)
    _check_streams_tile_the_file(path, committer.results, size)
    shutil.rmtree(parts)
    return committer.docs


def _extract_serially_read(path: Path, output_dir: Path, urlbase: str, pool, n_processes: int) -> int:
    parts = output_dir / ".parts"
    parts.mkdir()
    batches = page_batches(path)
    first = next(batches, b"")
    urlbase = urlbase or url_base(first.decode("utf-8", errors="replace"))
    jobs = ((batch, urlbase, parts / f"{index:06d}")
            for index, batch in enumerate(_chain_first(first, batches)))
    committer = _InOrder(output_dir)
    _run_in_order(pool, _extract_batch, jobs, committer, 2 * n_processes)  # bounded memory
    shutil.rmtree(parts)
    return committer.docs


def _chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def extract_wikipedia(dump: str | os.PathLike, output_dir: str | os.PathLike, n_processes: int = 1,
                      task_bytes: int | None = None) -> int:
    """Extract `dump` (`.xml` or `.xml.bz2`) into `output_dir` (created; must not exist) on `n_processes`
    workers; returns the number of articles. On any error `output_dir` is removed: nothing half-written stays.
    `task_bytes`: compressed bytes per worker task of a multistream dump (default `range_bytes(size)`)."""
    dump, output_dir = Path(dump), Path(output_dir)
    if not dump.is_file():
        raise InputError(f"{dump}: Wikipedia dump not found; run --action download first")
    n_processes = max(1, n_processes)
    output_dir.mkdir(parents=True)
    try:
        count = _extract(dump, output_dir, n_processes, task_bytes)
        if count == 0:
            raise InputError(f"{dump}: no articles (namespace-0 pages that are not redirects) found; "
                             f"is it a MediaWiki pages-articles dump?")
        return count
    except BaseException:
        shutil.rmtree(output_dir, ignore_errors=True)
        raise


def _extract(dump: Path, output_dir: Path, n_processes: int, task_bytes: int | None) -> int:
    urlbase, multistream = _probe_bz2(dump) if dump.suffix == ".bz2" else ("", False)
    with worker_pool(n_processes) as pool:
        if multistream:
            try:
                return _extract_multistream(dump, output_dir, urlbase, pool, n_processes, task_bytes)
            except NotPageAligned:
                print(f"{dump}: its bz2 streams cut pages in two; reading it in one process", flush=True)
                shutil.rmtree(output_dir)
                output_dir.mkdir()
        return _extract_serially_read(dump, output_dir, urlbase, pool, n_processes)
