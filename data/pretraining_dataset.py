"""Reading HDF5 pretraining shards (the format `create_pretraining_data.py` writes, the original's).

`PretrainingShardDataset` loads a whole shard into memory when it is opened (random row access
into gzip chunks is very slow) and returns, per instance, what the original's `pretraining_dataset`
returned: `[input_ids, segment_ids, input_mask, masked_lm_labels, next_sentence_labels]` as int64
tensors, where `masked_lm_labels` is -1 (the loss's ignore index) everywhere except at the masked
positions, which hold the original token ids.

Dynamic masking (masking chosen at load time instead of in the shard) plugs in as `transform`: it
receives the five tensors of an item and returns them re-masked; `unmasked_input_ids` gives it the
original sequence back. None is applied by default, so items equal the original's. `tensors()`
returns the whole shard at once (int64, same five parts) for loops that batch by index.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from utils import InputError

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
IGNORE_INDEX = -1
ItemTransform = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def list_shards(folder: str | os.PathLike, split: str = "training") -> list[str]:
    """Shard files in `folder` whose names contain `split`, sorted: the original's rule ('training'; 'test'
    for evaluation). Hidden files, such as the temp file of a shard still being written, are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: shard folder not found")
    return [str(folder / name) for name in sorted(entry.name for entry in os.scandir(folder)
                                                  if entry.is_file() and split in entry.name
                                                  and not entry.name.startswith("."))]


def read_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All six arrays of a shard, checked for presence and consistent shapes (InputError names file and key)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: shard file not found")
    try:
        shard = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    with shard:
        missing = [key for key in SHARD_DTYPES if key not in shard]
        if missing:
            raise InputError(f"{path}: missing dataset '{missing[0]}' (a pretraining shard has {', '.join(SHARD_DTYPES)})")
        arrays = {key: shard[key][()] for key in SHARD_DTYPES}
    _check_shapes(path, arrays)
    return arrays


def _check_shapes(path: Path, arrays: dict[str, np.ndarray]) -> None:
    count = len(arrays["next_sentence_labels"])
    expected_ndim = {key: 2 for key in (*SEQUENCE_KEYS, *PREDICTION_KEYS)} | {"next_sentence_labels": 1}
    for key, ndim in expected_ndim.items():
        array = arrays[key]
        if array.ndim != ndim or len(array) != count or not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{path}: dataset '{key}' has shape {array.shape} and dtype {array.dtype}; expected "
                             f"{ndim}-D integers with {count} rows like 'next_sentence_labels'")
    for group in (SEQUENCE_KEYS, PREDICTION_KEYS):
        widths = {key: arrays[key].shape[1] for key in group}
        if len(set(widths.values())) != 1:
            raise InputError(f"{path}: datasets {', '.join(group)} must have the same width, got {widths}")


def masked_lm_labels(positions: np.ndarray, ids: np.ndarray, seq_length: int, max_pred_length: int) -> np.ndarray:
    """Label rows [N, seq_length] for position/id rows [N, M]: -1 everywhere except labels[positions[j]] = ids[j]
    for the predictions before the row's first 0 position.

    Position 0 is [CLS], never predicted, so the first 0 ends the list (zero padding); a row with no
    0 uses its first `max_pred_length` entries, as the original loader does.
    """
    rows, width = positions.shape
    is_padding = positions == 0
    count = np.where(is_padding.any(axis=1), is_padding.argmax(axis=1), max_pred_length)
    used = np.arange(width) < count[:, None]
    labels = np.full((rows, seq_length), IGNORE_INDEX, dtype=np.int64)
    row_index = np.broadcast_to(np.arange(rows)[:, None], positions.shape)
    labels[row_index[used], positions[used]] = ids[used]
    return labels


def unmasked_input_ids(input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The sequence before masking: the label wherever there is one (for dynamic-masking transforms)."""
    return torch.where(labels != IGNORE_INDEX, labels, input_ids)


class PretrainingShardDataset(Dataset):
    """One shard in memory; item i is [input_ids, segment_ids, input_mask, masked_lm_labels, next_sentence_labels]."""

    def __init__(self, path: str | os.PathLike, max_pred_length: int, transform: ItemTransform | None = None):
        self.path = str(path)
        self.max_pred_length = max_pred_length
        self.transform = transform
        arrays = read_shard(path)
        width = arrays["masked_lm_positions"].shape[1]
        if width > max_pred_length:
            # The original would silently drop the predictions past max_pred_length of full rows.
            raise InputError(f"{path}: dataset 'masked_lm_positions' has {width} columns, more than "
                             f"max_predictions_per_seq={max_pred_length} (phase 2 shard used for phase 1?)")
        # Kept in their stored (narrow) dtypes; widened per item.
        self.input_ids = arrays["input_ids"]
        self.segment_ids = arrays["segment_ids"]
        self.input_mask = arrays["input_mask"]
        self.masked_lm_positions = arrays["masked_lm_positions"]
        self.masked_lm_ids = arrays["masked_lm_ids"]
        self.next_sentence_labels = arrays["next_sentence_labels"]

    def __len__(self) -> int:
        return len(self.next_sentence_labels)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        labels = masked_lm_labels(self.masked_lm_positions[index:index + 1], self.masked_lm_ids[index:index + 1],
                                  self.input_ids.shape[1], self.max_pred_length)[0]
        item = [
            torch.from_numpy(self.input_ids[index].astype(np.int64)),
            torch.from_numpy(self.segment_ids[index].astype(np.int64)),
            torch.from_numpy(self.input_mask[index].astype(np.int64)),
            torch.from_numpy(labels),
            torch.tensor(int(self.next_sentence_labels[index]), dtype=torch.int64),
        ]
        return self.transform(item) if self.transform is not None else item

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole shard as int64 tensors keyed like an item's parts (for batching by index); the stored
        masking, without `transform`."""
        labels = masked_lm_labels(self.masked_lm_positions, self.masked_lm_ids, self.input_ids.shape[1],
                                  self.max_pred_length)
        return {
            "input_ids": torch.from_numpy(self.input_ids.astype(np.int64)),
            "segment_ids": torch.from_numpy(self.segment_ids.astype(np.int64)),
            "input_mask": torch.from_numpy(self.input_mask.astype(np.int64)),
            "masked_lm_labels": torch.from_numpy(labels),
            "next_sentence_labels": torch.from_numpy(self.next_sentence_labels.astype(np.int64)),
        }
