"""GLUE tasks, laid out as `download_glue_data.py` (the script the original fetched from a gist) lays them out.

Zips come from the same dl.fbaipublicfiles.com URLs that script uses; MRPC is built from Microsoft's
`msr_paraphrase_{train,test}.txt` plus GLUE's dev ids into `train.tsv` / `dev.tsv` / `test.tsv`,
byte-for-byte as that script writes them. The original ran the gist with `exec`; here nothing
downloaded is executed.
"""
from __future__ import annotations

import os
from pathlib import Path

from atomic_io import atomic_path
from data.download_utils import Checksum, DownloadError, download, extract_zip
from input_checks import InputError

GLUE_ROOT = "https://dl.fbaipublicfiles.com/glue/data"
SENTEVAL_ROOT = "https://dl.fbaipublicfiles.com/senteval/senteval_data"

# task -> (zip URL, folder the zip unpacks to, md5 where published by torchtext's dataset tables)
ZIP_TASKS: dict[str, tuple[str, str, Checksum | None]] = {
    "CoLA": (f"{GLUE_ROOT}/CoLA.zip", "CoLA", None),
    "SST": (f"{GLUE_ROOT}/SST-2.zip", "SST-2", Checksum("md5", "9f81648d4199384278b86e315dac217c")),
    "QQP": (f"{GLUE_ROOT}/QQP-clean.zip", "QQP", None),
    "STS": (f"{GLUE_ROOT}/STS-B.zip", "STS-B", None),
    "MNLI": (f"{GLUE_ROOT}/MNLI.zip", "MNLI", None),
    "QNLI": (f"{GLUE_ROOT}/QNLIv2.zip", "QNLI", Checksum("md5", "b4efd6554440de1712e9b54e14760e82")),
    "RTE": (f"{GLUE_ROOT}/RTE.zip", "RTE", Checksum("md5", "bef554d0cafd4ab6743488101c638539")),
    "WNLI": (f"{GLUE_ROOT}/WNLI.zip", "WNLI", Checksum("md5", "a1b4bd2861017d302d29e42139657a42")),
}
DIAGNOSTIC_URL = f"{GLUE_ROOT}/AX.tsv"
MRPC_FILES = {
    "msr_paraphrase_train.txt": (f"{SENTEVAL_ROOT}/msr_paraphrase_train.txt",
                                 Checksum("md5", "793daf7b6224281e75fe61c1f80afe35")),
    "msr_paraphrase_test.txt": (f"{SENTEVAL_ROOT}/msr_paraphrase_test.txt",
                                Checksum("md5", "e437fdddb92535b820fe8852e2df8a49")),
    "dev_ids.tsv": (f"{GLUE_ROOT}/mrpc_dev_ids.tsv", None),
}
ALL_TASKS = ("CoLA", "SST", "MRPC", "QQP", "STS", "MNLI", "QNLI", "RTE", "WNLI", "diagnostic")
# The names users type (the original's bertPrep datasets `mrpc`, `sst-2`; GLUE folder names) -> task.
TASK_ALIASES = {"sst-2": "SST", "sst2": "SST", "sts-b": "STS", "stsb": "STS", "ax": "diagnostic"}


def resolve_tasks(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """'all', a comma-separated string or a list of task names (case-insensitive) -> canonical names."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    by_lower = {t.lower(): t for t in ALL_TASKS}
    tasks: list[str] = []
    for name in names:
        key = name.lower()
        if key == "all":
            return list(ALL_TASKS)
        task = by_lower.get(TASK_ALIASES.get(key, key).lower())
        if task is None:
            raise InputError(f"GLUE task {name!r} unknown; choose from {', '.join(ALL_TASKS)} or 'all'")
        tasks.append(task)
    return tasks


def _read_dev_ids(path: Path) -> set[tuple[str, str]]:
    pairs = set()
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, 1):
            fields = line.strip().split("\t")
            if fields == [""]:
                continue
            if len(fields) != 2:
                raise InputError(f"{path}:{number}: expected two tab-separated ids, got {line.strip()!r}")
            pairs.add((fields[0], fields[1]))
    return pairs


def _mrpc_rows(path: Path):
    """(header, rows) of an MSR paraphrase file; each row is (label, id1, id2, s1, s2)."""
    with open(path, encoding="utf-8") as fh:  # not utf-8-sig: GLUE's files keep the BOM in the header
        header = fh.readline()
        rows = []
        for number, line in enumerate(fh, 2):
            fields = line.strip().split("\t")
            if len(fields) != 5:
                raise InputError(f"{path}:{number}: expected 5 tab-separated fields, got {len(fields)}")
            rows.append(tuple(fields))
    return header, rows


def format_mrpc(mrpc_dir: str | os.PathLike) -> None:
    """msr_paraphrase_{train,test}.txt + dev_ids.tsv -> train.tsv, dev.tsv, test.tsv (GLUE's layout)."""
    mrpc_dir = Path(mrpc_dir)
    dev_ids = _read_dev_ids(mrpc_dir / "dev_ids.tsv")
    header, rows = _mrpc_rows(mrpc_dir / "msr_paraphrase_train.txt")
    with (
        atomic_path(mrpc_dir / "train.tsv") as train_tmp,
        atomic_path(mrpc_dir / "dev.tsv") as dev_tmp,
        open(train_tmp, "w", encoding="utf-8") as train,
        open(dev_tmp, "w", encoding="utf-8") as dev,
    ):
        train.write(header)
        dev.write(header)
        for row in rows:
            (dev if (row[1], row[2]) in dev_ids else train).write("\t".join(row) + "\n")
    _, test_rows = _mrpc_rows(mrpc_dir / "msr_paraphrase_test.txt")
    with atomic_path(mrpc_dir / "test.tsv") as test_tmp, open(test_tmp, "w", encoding="utf-8") as test:
        test.write("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
        for index, (_label, id1, id2, s1, s2) in enumerate(test_rows):
            test.write(f"{index}\t{id1}\t{id2}\t{s1}\t{s2}\n")


class GLUEDownloader:
    """Saves `<save_path>/<Task>/{train,dev,test}.tsv` for each requested task."""

    def __init__(self, save_path: str | os.PathLike):
        self.save_path = Path(save_path)

    def download(self, tasks: str | list[str] = "all") -> Path:
        failures = []
        for task in resolve_tasks(tasks):
            try:
                self._download_task(task)
            except DownloadError as exc:
                failures.append(f"{task}: {exc}")
        if failures:
            raise DownloadError("GLUE tasks failed: " + " | ".join(failures))
        return self.save_path

    def _download_task(self, task: str) -> None:
        if task == "MRPC":
            self._download_mrpc()
        elif task == "diagnostic":
            download(DIAGNOSTIC_URL, self.save_path / "diagnostic" / "diagnostic.tsv")
        else:
            url, folder, checksum = ZIP_TASKS[task]
            if (self.save_path / folder).is_dir():
                print(f"GLUE {task}: {self.save_path / folder} exists, skipping", flush=True)
                return
            archive = download(url, self.save_path / Path(url).name, checksum=checksum)
            extract_zip(archive, self.save_path)
            archive.unlink()
        print(f"GLUE {task}: done", flush=True)

    def _download_mrpc(self) -> None:
        mrpc_dir = self.save_path / "MRPC"
        for name, (url, checksum) in MRPC_FILES.items():
            download(url, mrpc_dir / name, checksum=checksum)
        format_mrpc(mrpc_dir)
