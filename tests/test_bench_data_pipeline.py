"""benchmarks/bench_data_pipeline.py at tiny sizes: every stage runs through bertPrep.py and the table prints."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, script_env, shared_path


@pytest.mark.parametrize("extractor", ["fast", "wikiextractor"])
def test_pipeline_benchmark_runs_every_stage_and_prints_its_table(tmp_path, extractor):
    data_dir = shared_path()
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_data_pipeline.py"), "--data-dir", str(data_dir),
         "--pages", "12", "--shards", "2", "1", "--processes", "1", "--dupe-factors", "1",
         "--wiki_extractor", extractor],
        env=script_env(), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"dump of 12 pages: [\d.]+ MB XML .* MB of article text", out)
    assert re.search(r"dump of 24 pages: ", out)
    for stage in ("extraction", "formatting", "sharding", "hdf5 p1 d1", "hdf5 p2 d1"):
        rows = [line for line in out.splitlines() if line.startswith(f"| {stage} ")]
        assert len(rows) == 2, (stage, out)  # one per input size
        cells = [cell.strip() for cell in rows[1].strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[5]) > 0 and float(cells[7]) > 0  # wall s, MB/s/core, tree MB
    assert f"extraction: {extractor}" in out
    assert re.search(rf"\(extraction \({extractor}\) by XML instead: [\d.]+ MB of XML/s/core -> [\d.]+ min", out), out
    assert re.search(r"=> dupe factor 1: HDF5 phases 1\+2 [\d.]+ min, whole pipeline [\d.]+ min; "
                     r"HDF5 on disk \d+ GB", out), out
