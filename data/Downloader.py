"""Dispatch a bertPrep dataset name to its downloader."""
from __future__ import annotations

import os
from pathlib import Path

from data.BooksDownloader import BooksDownloader
from data.download_utils import DownloadError
from data.GLUEDownloader import GLUEDownloader
from data.GooglePretrainedWeightDownloader import GooglePretrainedWeightDownloader
from data.SquadDownloader import SquadDownloader
from data.WikiDownloader import WikiDownloader

# What `--dataset all` fetches (the original's list, with all of GLUE instead of two tasks).
ALL_DATASETS = ("wikicorpus_en", "bookscorpus", "google_pretrained_weights", "squad", "glue")
GLUE_SINGLE_TASKS = {"mrpc": "MRPC", "sst-2": "SST"}


class Downloader:
    """`Downloader(dataset_name, save_path).download()`; files land in `<save_path>/<folder>/`."""

    def __init__(
        self,
        dataset_name: str,
        save_path: str | os.PathLike,
        bookscorpus_dir: str | None = None,
        google_models: str | None = None,
        glue_tasks: str = "all",
    ):
        self.dataset_name = dataset_name
        self.save_path = Path(save_path)
        self.bookscorpus_dir = bookscorpus_dir
        self.google_models = google_models
        self.glue_tasks = glue_tasks

    def download(self) -> None:
        name = self.dataset_name
        if name == "all":
            self._download_all()
        elif name in ("wikicorpus_en", "wikicorpus_zh"):
            WikiDownloader(name.rsplit("_", 1)[1], self.save_path / name).download()
        elif name == "bookscorpus":
            BooksDownloader(self.save_path / "bookscorpus", self.bookscorpus_dir).download()
        elif name in ("google_pretrained_weights", "weights"):
            GooglePretrainedWeightDownloader(self.save_path / "google_pretrained_weights").download(self.google_models)
        elif name == "nvidia_pretrained_weights":
            raise DownloadError("nvidia_pretrained_weights: fetch the checkpoints from NGC (ngc registry model "
                                "download-version)")
        elif name == "squad":
            SquadDownloader(self.save_path / "squad").download()
        elif name == "glue":
            GLUEDownloader(self.save_path / "glue").download(self.glue_tasks)
        elif name in GLUE_SINGLE_TASKS:
            GLUEDownloader(self.save_path / "glue").download([GLUE_SINGLE_TASKS[name]])
        elif name == "demo":
            from data.demo_corpus import write_demo_corpus

            write_demo_corpus(self.save_path / "demo" / "demo_corpus.txt")
        else:
            raise DownloadError(f"download: nothing to download for dataset {name!r}")

    def _download_all(self) -> None:
        failures = []
        for name in ALL_DATASETS:
            downloader = Downloader(name, self.save_path, self.bookscorpus_dir, self.google_models, self.glue_tasks)
            try:
                downloader.download()
            except DownloadError as exc:
                print(f"error: {exc}", flush=True)
                failures.append(name)
        if failures:
            raise DownloadError(f"download --dataset all: failed for {', '.join(failures)} (see messages above)")
