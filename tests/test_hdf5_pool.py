"""bertPrep's HDF5 pool is sized from the work, never slower than one process on a small corpus: the
rule, and the pool path (spawned workers plus this process) giving the same shards as one process."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import shared_path
from pretrain_helpers import SHARD_DATASETS, wikitext_documents

from data import bertPrep

MB = 1_000_000


@pytest.mark.parametrize(("works", "asked", "expected"), [
    ([5 * MB * 5], 2, 1),                    # the 5 MB benchmark corpus, dupe 5, one file: one process
    ([MB * 5] * 7, 2, 1),                    # 7 files, 35 MB·dupe: a worker would cost what it saves
    ([50 * MB * 5 // 7] * 7, 2, 2),          # 50 MB at dupe 5 over 7 files: both cores
    ([50 * MB * 5 // 7] * 7, 16, 4),         # ... but no more processes than the work keeps busy
    ([400 * MB] * 3, 8, 3),                  # never more processes than jobs
    ([400 * MB] * 3, 1, 1),                  # nor than asked
    ([], 4, 1),
])
def test_pool_size_follows_the_amount_of_work(works, asked, expected):
    assert bertPrep.processes_for(works, asked) == expected


def test_work_is_text_bytes_times_dupe_factor(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"x" * 1000)
    b.write_bytes(b"y" * 500)
    assert bertPrep.job_work({"input_files": [str(a), str(b)], "dupe_factor": 3}) == 4500


def shard_jobs(tmp_path: Path, out: str) -> list[dict]:
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    docs = wikitext_documents(24).split("\n\n")
    jobs = []
    for index in range(3):
        text = tmp_path / f"part_{index}.txt"
        if not text.exists():
            text.write_text("\n\n".join(docs[index::3]) + "\n", encoding="utf-8")
        jobs.append(dict(input_files=[str(text)], output_file=str(tmp_path / out / f"part_{index}.hdf5"),
                         vocab_file=str(vocab), do_lower_case=True, max_seq_length=64, max_predictions_per_seq=10,
                         masked_lm_prob=0.15, short_seq_prob=0.1, dupe_factor=1, random_seed=7,
                         do_whole_word_mask=False))
    (tmp_path / out).mkdir()
    return jobs


def test_workers_and_this_process_make_the_shards_one_process_makes(tmp_path, monkeypatch):
    alone = shard_jobs(tmp_path, "alone")
    assert bertPrep.run_hdf5_jobs(alone, 4) == []  # a tiny corpus: all in this process
    monkeypatch.setattr(bertPrep, "MIN_WORK_PER_PROCESS", 1)  # as if the corpus were large
    pooled = shard_jobs(tmp_path, "pooled")
    broken = dict(pooled[1], input_files=[str(tmp_path / "missing.txt")], output_file=str(tmp_path / "x.hdf5"))
    with pytest.raises(FileNotFoundError):
        bertPrep.job_work(broken)  # a missing input is found before any process starts
    assert bertPrep.run_hdf5_jobs(pooled, 3) == []
    for a, b in zip(alone, pooled, strict=True):
        with h5py.File(a["output_file"]) as fa, h5py.File(b["output_file"]) as fb:
            for name in SHARD_DATASETS:
                np.testing.assert_array_equal(fa[name][:], fb[name][:], err_msg=f"{b['output_file']}: {name}")


def test_a_failing_shard_is_reported_and_the_others_complete_on_the_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(bertPrep, "MIN_WORK_PER_PROCESS", 1)
    jobs = shard_jobs(tmp_path, "out")
    jobs[0]["vocab_file"] = str(tmp_path / "part_1.txt")  # not a vocab: that shard fails, in a worker or here
    failures = bertPrep.run_hdf5_jobs(jobs, 2)
    assert len(failures) == 1 and failures[0].startswith("part_0.txt: "), failures
    assert all(Path(job["output_file"]).is_file() for job in jobs[1:])
