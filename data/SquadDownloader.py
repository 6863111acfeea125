"""SQuAD v1.1 and v2.0 train/dev sets and the official evaluation scripts, md5-checked."""
from __future__ import annotations

import os
from pathlib import Path

from data.download_utils import Checksum, DownloadError, download

SQUAD_ROOT = "https://rajpurkar.github.io/SQuAD-explorer/dataset"
CODALAB = "https://worksheets.codalab.org/rest/bundles"

# (version, file name, URL, md5) — the md5 values are the ones the original's squad_download.sh checks.
DATA_FILES = (
    ("v1.1", "train-v1.1.json", f"{SQUAD_ROOT}/train-v1.1.json", "981b29407e0affa3b1b156f72073b945"),
    ("v1.1", "dev-v1.1.json", f"{SQUAD_ROOT}/dev-v1.1.json", "3e85deb501d4e538b6bc56f786231552"),
    ("v2.0", "train-v2.0.json", f"{SQUAD_ROOT}/train-v2.0.json", "62108c273c268d70893182d5cf8df740"),
    ("v2.0", "dev-v2.0.json", f"{SQUAD_ROOT}/dev-v2.0.json", "246adae8b7002f8679c027697b0b7cf8"),
)
EVAL_SCRIPTS = (
    ("v1.1", "evaluate-v1.1.py", f"{CODALAB}/0xbcd57bee090b421c982906709c8c27e1/contents/blob/",
     "afb04912d18ff20696f7f88eed49bea9"),
    ("v2.0", "evaluate-v2.0.py", f"{CODALAB}/0x6b567e1cf2e041ec80d7098f031c5c9e/contents/blob/",
     "ff23213bed5516ea4a6d9edb6cd7d627"),
)


class SquadDownloader:
    """Saves `<save_path>/v1.1/{train,dev}-v1.1.json`, `evaluate-v1.1.py` and the same for v2.0."""

    def __init__(self, save_path: str | os.PathLike):
        self.save_path = Path(save_path)

    def download(self) -> Path:
        for version, name, url, md5 in DATA_FILES:
            download(url, self.save_path / version / name, checksum=Checksum("md5", md5))
        for version, name, url, md5 in EVAL_SCRIPTS:
            # Optional: `python -m processors.squad_metrics` implements both official metrics, and
            # CodaLab is often unavailable.
            try:
                download(url, self.save_path / version / name, checksum=Checksum("md5", md5))
            except DownloadError as exc:
                print(f"warning: {exc} (use python -m processors.squad_metrics instead)", flush=True)
        return self.save_path
