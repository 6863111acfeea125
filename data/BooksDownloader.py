"""BookCorpus: a folder of plain-text books.

The original runs soskek/bookcorpus's `download_files.py`, which scrapes smashwords.com; Smashwords
has refused those requests for years (HTTP 403, NVIDIA/DeepLearningExamples#536). We still run that
scraper when it is installed (`BOOKSCORPUS_REPO`, default /workspace/bookcorpus), but the dependable
path is a folder of `*.txt` books you already have, given with `--bookscorpus_dir` (or the
BOOKSCORPUS_DIR environment variable): its books are copied into the download folder.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from atomic_io import atomic_path
from data.download_utils import DownloadError

DEFAULT_SCRAPER_REPO = "/workspace/bookcorpus"


class BooksDownloader:
    def __init__(self, save_path: str | os.PathLike, source_dir: str | os.PathLike | None = None):
        self.save_path = Path(save_path)
        source = source_dir or os.environ.get("BOOKSCORPUS_DIR")
        self.source_dir = Path(source) if source else None

    def download(self) -> Path:
        self.save_path.mkdir(parents=True, exist_ok=True)
        if self.source_dir is not None:
            return self._copy_books()
        repo = Path(os.environ.get("BOOKSCORPUS_REPO", DEFAULT_SCRAPER_REPO))
        if (repo / "download_files.py").exists():
            return self._run_scraper(repo)
        raise DownloadError(
            "bookscorpus: no source. Smashwords no longer serves BookCorpus to scrapers; pass "
            "--bookscorpus_dir DIR (a folder of .txt books) or set BOOKSCORPUS_DIR "
            f"(or install soskek/bookcorpus in {repo} to try the original scraper)"
        )

    def _copy_books(self) -> Path:
        books = sorted(self.source_dir.glob("*.txt")) if self.source_dir.is_dir() else []
        if not books:
            raise DownloadError(f"bookscorpus: {self.source_dir} holds no *.txt books")
        for book in books:
            target = self.save_path / book.name
            if target.exists() and target.stat().st_size == book.stat().st_size:
                continue
            with atomic_path(target) as tmp:
                shutil.copyfile(book, tmp)
        print(f"bookscorpus: {len(books)} books from {self.source_dir} in {self.save_path}", flush=True)
        return self.save_path

    def _run_scraper(self, repo: Path) -> Path:
        command = [
            sys.executable, str(repo / "download_files.py"),
            "--list", str(repo / "url_list.jsonl"),
            "--out", str(self.save_path),
            "--trash-bad-count",
        ]
        print("running the BookCorpus scraper: " + " ".join(command), flush=True)
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            raise DownloadError(
                f"bookscorpus: scraper exited with {result.returncode}; pass --bookscorpus_dir with your own books"
            )
        return self.save_path
