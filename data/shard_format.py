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
