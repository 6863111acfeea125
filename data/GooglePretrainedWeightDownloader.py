"""Google's original BERT checkpoints (TensorFlow), including the vocab files the pipeline needs."""
from __future__ import annotations

import os
from pathlib import Path

from data.download_utils import download, extract_zip, file_digest
from input_checks import InputError

STORAGE = "https://storage.googleapis.com/bert_models"
MODELS = {
    "uncased_L-12_H-768_A-12": f"{STORAGE}/2018_10_18/uncased_L-12_H-768_A-12.zip",
    "uncased_L-24_H-1024_A-16": f"{STORAGE}/2018_10_18/uncased_L-24_H-1024_A-16.zip",
    "cased_L-12_H-768_A-12": f"{STORAGE}/2018_10_18/cased_L-12_H-768_A-12.zip",
    "cased_L-24_H-1024_A-16": f"{STORAGE}/2018_10_18/cased_L-24_H-1024_A-16.zip",
    "multi_cased_L-12_H-768_A-12": f"{STORAGE}/2018_11_23/multi_cased_L-12_H-768_A-12.zip",
    "multilingual_L-12_H-768_A-12": f"{STORAGE}/2018_11_03/multilingual_L-12_H-768_A-12.zip",
    "chinese_L-12_H-768_A-12": f"{STORAGE}/2018_11_03/chinese_L-12_H-768_A-12.zip",
}


def resolve_models(names: str | None) -> list[str]:
    if not names or names == "all":
        return list(MODELS)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in MODELS]
    if unknown:
        raise InputError(f"unknown Google model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return chosen


class GooglePretrainedWeightDownloader:
    """Saves `<save_path>/<model>/{bert_config.json, bert_model.ckpt.*, vocab.txt}`.

    Each zip's size is checked against Content-Length and every member against the zip's CRC-32;
    the SHA-256 of each extracted file is printed so it can be compared with a known-good copy.
    """

    def __init__(self, save_path: str | os.PathLike):
        self.save_path = Path(save_path)

    def download(self, models: str | None = None) -> Path:
        for name in resolve_models(models):
            self._download_model(name)
        return self.save_path

    def _download_model(self, name: str) -> None:
        folder = self.save_path / name
        if not (folder / "vocab.txt").exists():
            archive = download(MODELS[name], self.save_path / f"{name}.zip")
            extract_zip(archive, self.save_path)
            archive.unlink()
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            print(f"{name}/{path.name} sha256 {file_digest(path)}", flush=True)
