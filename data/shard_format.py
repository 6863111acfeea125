"""The HDF5 pretraining shard format (the original's), shared by the writer (`create_pretraining_data.py`)
and the reader (`data/pretraining_dataset.py`, which re-exports it). Importing it costs no torch, so the
HDF5 workers of the preparation pipeline stay small."""
from __future__ import annotations

import numpy as np

# The shard format (the original's; `create_pretraining_data.py` writes it). Dataset name -> stored
# dtype, in the original's order. Shapes: [N, S] for the first three,
# [N, M] for the two masked-LM arrays, [N] for the labels.
SHARD_DTYPES: dict[str, type[np.integer]] = {
    "input_ids": np.int32,
    "input_mask": np.int8,
    "segment_ids": np.int8,
    "masked_lm_positions": np.int32,
    "masked_lm_ids": np.int32,
    "next_sentence_labels": np.int8,
}
SEQUENCE_KEYS = ("input_ids", "input_mask", "segment_ids")
PREDICTION_KEYS = ("masked_lm_positions", "masked_lm_ids")


def predictions_per_length(max_seq_length: int, max_predictions_per_seq: int, masked_lm_prob: float) -> np.ndarray:
    """Masked positions per real sequence length, with Python's rounding as in the original (one rule for the
    masks written into shards and the masks drawn at training time)."""
    return np.array([min(max_predictions_per_seq, max(1, int(round(length * masked_lm_prob))))
                     for length in range(max_seq_length + 1)], dtype=np.int64)
