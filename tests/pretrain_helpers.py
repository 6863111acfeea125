"""Real-text HDF5 shards and tiny configs for the pretraining tests (built once per session)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
from conftest import ROOT, script_env, shared_path

TINY_MODEL = {
    "vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 128, "max_position_embeddings": 128, "type_vocab_size": 2,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
}
SHARD_DATASETS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
                  "next_sentence_labels")


def write_config(path: Path, **overrides) -> Path:
    path.write_text(json.dumps({**TINY_MODEL, **overrides}, indent=2))
    return path


def wikitext_documents(max_articles: int) -> str:
    """WikiText-2 articles → one sentence per line, blank line between articles."""
    raw = shared_path("corpus", "wikitext-2-raw", "wiki.test.raw").read_text(encoding="utf-8")
    articles = re.split(r"\n = [^=\n]+ = \n", raw)
    docs = []
    for article in articles[1 : max_articles + 1]:
        sentences = []
        for para in article.splitlines():
            para = para.strip()
            if not para or para.startswith("="):
                continue
            sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para) if len(s.strip()) > 1]
        if len(sentences) >= 2:
            docs.append("\n".join(sentences))
    return "\n\n".join(docs) + "\n"


def make_shard(out: Path, text_file: Path, seq_len: int, max_pred: int, dupe: int = 1, seed: int = 12345) -> Path:
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    cmd = [sys.executable, str(ROOT / "create_pretraining_data.py"), f"--input_file={text_file}",
           f"--output_file={out}", f"--vocab_file={vocab}", "--do_lower_case", f"--max_seq_length={seq_len}",
           f"--max_predictions_per_seq={max_pred}", f"--dupe_factor={dupe}", f"--random_seed={seed}"]
    subprocess.run(cmd, check=True, env=script_env(), capture_output=True, text=True)
    return out


def copy_rows(src: Path, dst: Path, start: int, stop: int) -> Path:
    """A shard holding rows [start, stop) of another, in the same layout."""
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        for name in SHARD_DATASETS:
            fout.create_dataset(name, data=fin[name][start:stop], compression="gzip")
    return dst


def shard_rows(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["input_ids"].shape[0])
