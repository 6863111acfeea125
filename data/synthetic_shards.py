"""Synthetic pretraining shards (the real HDF5 format) whose rows have realistic real-token counts.

For machines without the corpus (the lent GPU machines): BERT-large throughput depends on the token
ids only through the padding, so rows of random ids with the length distribution of real shards
time the same work as real shards. Rows look like `create_pretraining_data.py`'s: [CLS] A [SEP] B
[SEP], segment ids 0/1, 15% of the real tokens masked (80% [MASK]), capped at max_pred.

Length profiles are histograms of real tokens per row, measured on shards that our
`create_pretraining_data.py` wrote from WikiText-2 (all 62 articles of the raw test split, dupe
factor 1, seed 12345): `python data/synthetic_shards.py --measure SHARD.hdf5` prints one.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLS, SEP, MASK = 101, 102, 103
FIRST_WORD_ID, LAST_WORD_ID = 1996, 29611  # plain word pieces of the uncased vocab

# Real tokens per row as a fraction of the sequence length: (upper edge of the bin, share of rows).
# The last bin (0.9375, 1.0] holds rows filled to within one bin of full length.
# wikitext_512: 65% of the tokens of a batch are real (35% padding); Wikipedia itself pads more at
# seq 512 (about half, Krell et al. 2021), so the unpadded path's gain measured with it is a lower bound.
LENGTH_PROFILES: dict[str, list[tuple[float, float]]] = {
    "wikitext_512": [(0.0625, 0.0019), (0.125, 0.0103), (0.1875, 0.2507), (0.25, 0.0851), (0.3125, 0.0084),
                     (0.375, 0.0103), (0.4375, 0.0037), (0.5, 0.0187), (0.5625, 0.0281), (0.625, 0.0131),
                     (0.6875, 0.0159), (0.75, 0.0075), (0.8125, 0.0112), (0.875, 0.0131), (0.9375, 0.0065),
                     (1.0, 0.5154)],
    "wikitext_128": [(0.0625, 0.0), (0.125, 0.0004), (0.1875, 0.0026), (0.25, 0.004), (0.3125, 0.0088),
                     (0.375, 0.0143), (0.4375, 0.0128), (0.5, 0.0124), (0.5625, 0.0124), (0.625, 0.0102),
                     (0.6875, 0.0077), (0.75, 0.0084), (0.8125, 0.0062), (0.875, 0.0106), (0.9375, 0.0168),
                     (1.0, 0.8724)],
}


def sample_lengths(profile: str, rows: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Real-token counts per row drawn from a profile (uniform within a bin), at least 8; 'full' = all seq_len."""
    if profile == "full":
        return np.full(rows, seq_len, dtype=np.int64)
    edges, shares = zip(*LENGTH_PROFILES[profile], strict=True)
    bins = rng.choice(len(edges), size=rows, p=np.asarray(shares) / sum(shares))
    lower = np.asarray((0.0, *edges[:-1]))[bins]
    fraction = lower + rng.random(rows) * (np.asarray(edges)[bins] - lower)
    return np.clip(np.ceil(fraction * seq_len).astype(np.int64), 8, seq_len)


def synthetic_rows(lengths: np.ndarray, seq_len: int, max_pred: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The six shard arrays for rows with these real-token counts."""
    rows = len(lengths)
    input_ids = np.zeros((rows, seq_len), dtype=np.int64)
    segment_ids = np.zeros((rows, seq_len), dtype=np.int64)
    input_mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int64)
    positions = np.zeros((rows, max_pred), dtype=np.int64)
    masked_ids = np.zeros((rows, max_pred), dtype=np.int64)
    for r, length in enumerate(lengths):
        split = max(2, int(length) // 2)  # [CLS] A [SEP] | B [SEP]
        tokens = rng.integers(FIRST_WORD_ID, LAST_WORD_ID, size=int(length))
        tokens[0], tokens[split - 1], tokens[length - 1] = CLS, SEP, SEP
        segment_ids[r, split:length] = 1
        candidates = np.setdiff1d(np.arange(1, length - 1), [split - 1])
        count = min(max_pred, max(1, round(0.15 * len(candidates))), len(candidates))
        chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        positions[r, :count], masked_ids[r, :count] = chosen, tokens[chosen]
        replace = rng.random(count) < 0.8
        tokens[chosen[replace]] = MASK
        input_ids[r, :length] = tokens
    return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids,
            "masked_lm_positions": positions, "masked_lm_ids": masked_ids,
            "next_sentence_labels": rng.integers(0, 2, size=rows)}


def write_synthetic_shard(path: str | Path, rows: int, seq_len: int, max_pred: int, profile: str = "wikitext",
                          seed: int = 0) -> Path:
    """A shard of `rows` synthetic rows at `path` (atomic write, the real format)."""
    from data.shard_creation import write_shard

    rng = np.random.default_rng(seed)
    lengths = sample_lengths(profile_for(profile, seq_len), rows, seq_len, rng)
    write_shard(synthetic_rows(lengths, seq_len, max_pred, rng), path)
    return Path(path)


def profile_for(profile: str, seq_len: int) -> str:
    """'wikitext' picks the measured profile of the nearest sequence length (128 or 512)."""
    if profile != "wikitext":
        return profile
    return "wikitext_512" if seq_len > 256 else "wikitext_128"


def measure_profile(shard: str, bins: int = 16) -> list[tuple[float, float]]:
    """Histogram of real tokens per row / sequence length of a real shard, in `bins` equal bins."""
    import h5py

    with h5py.File(shard, "r") as f:
        mask = f["input_mask"][()]
    fraction = mask.sum(axis=1) / mask.shape[1]
    counts, edges = np.histogram(fraction, bins=bins, range=(0.0, 1.0))
    return [(round(float(e), 4), round(float(c) / len(fraction), 4)) for e, c in zip(edges[1:], counts, strict=True)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measure", metavar="SHARD", help="print the length profile of a real shard")
    p.add_argument("--write", metavar="PATH", help="write a synthetic shard here")
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--max_pred", type=int, default=80)
    p.add_argument("--profile", default="wikitext",
                   help="wikitext (by --seq), " + ", ".join(LENGTH_PROFILES) + " or full")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.measure:
        profile = measure_profile(args.measure)
        mean = sum((edge - 1 / 32) * share for edge, share in profile)
        print(profile)
        print(f"mean real-token share ≈ {mean:.3f}")
    if args.write:
        write_synthetic_shard(args.write, args.rows, args.seq, args.max_pred, args.profile, args.seed)


if __name__ == "__main__":
    main()
