"""Wikipedia dump download (English or Chinese), verified against Wikimedia's published sha1 list."""
from __future__ import annotations

import os
from pathlib import Path

from data.download_utils import Checksum, DownloadError, download, fetch_bytes

DUMP_ROOT = "https://dumps.wikimedia.org"
LANGUAGES = ("en", "zh")


def dump_url(language: str) -> str:
    """The multistream dump: the same articles as `pages-articles.xml.bz2`, as independent bz2 streams of ~100
    pages each, so data/wiki_extract.py can decompress and extract it on every core."""
    return f"{DUMP_ROOT}/{language}wiki/latest/{language}wiki-latest-pages-articles-multistream.xml.bz2"


def sha1sums_url(language: str) -> str:
    return f"{DUMP_ROOT}/{language}wiki/latest/{language}wiki-latest-sha1sums.txt"


def find_sha1(sums_text: str, file_name: str) -> str | None:
    """The digest for `file_name` in a `sha1sum`-style listing ("<hex>  <name>" per line)."""
    for line in sums_text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1] == file_name:
            return fields[0]
    return None


class WikiDownloader:
    """Saves `<save_path>/wikicorpus_<lang>.xml.bz2`.

    Unlike the original (wget, then `bzip2 -dk`), the dump stays compressed: both extractors read
    .bz2 directly, which saves ~90 GB of disk for English. It is the `-multistream` dump (same
    pages), which the fast extractor reads in parallel; the local name is the one it always had. A
    partial download is never mistaken for a complete one (see download_utils) and is resumed on the
    next run.
    """

    def __init__(self, language: str, save_path: str | os.PathLike):
        if language not in LANGUAGES:
            raise DownloadError(f"wikicorpus: language {language!r} not supported; choose from {LANGUAGES}")
        self.language = language
        self.save_path = Path(save_path)

    @property
    def archive(self) -> Path:
        return self.save_path / f"wikicorpus_{self.language}.xml.bz2"

    def _expected_sha1(self) -> Checksum | None:
        remote_name = dump_url(self.language).rsplit("/", 1)[1]
        try:
            sums = fetch_bytes(sha1sums_url(self.language)).decode("utf-8", "replace")
        except DownloadError as exc:
            print(f"warning: no checksum list ({exc}); checking the size only", flush=True)
            return None
        digest = find_sha1(sums, remote_name)
        return Checksum("sha1", digest) if digest else None

    def download(self) -> Path:
        if self.archive.exists():
            print(f"{self.archive} is complete, skipping download", flush=True)
            return self.archive
        print(f"downloading {dump_url(self.language)} (tens of GB; re-run to resume if interrupted)", flush=True)
        return download(dump_url(self.language), self.archive, checksum=self._expected_sha1(), retries=10)
