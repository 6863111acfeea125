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

import hashlib
import math
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from create_pretraining_data import PREDICTION_KEYS, SEQUENCE_KEYS, SHARD_DTYPES
from utils import InputError

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
        arrays = {key: _read_dataset(path, shard, key) for key in SHARD_DTYPES}
    _check_shapes(path, arrays)
    _check_values(path, arrays)
    return arrays


def _read_dataset(path: Path, shard, key: str) -> np.ndarray:
    # A damaged compressed chunk fails inside h5py with an OSError ("inflate() failed", "Can't read data").
    try:
        return shard[key][()]
    except OSError as exc:
        raise InputError(f"{path}: dataset '{key}' cannot be read, the file is damaged ({exc})") from None


def first_row_outside(array: np.ndarray, low: int, high: int) -> tuple[int, int] | None:
    """(row, value) of the first value outside [low, high) in a 1-D or 2-D array, or None.

    The common case (all in range) costs one min and one max over the array."""
    if array.size == 0 or (array.min() >= low and array.max() < high):
        return None
    bad = ((array < low) | (array >= high)).reshape(len(array), -1)
    row = int(bad.any(axis=1).argmax())
    return row, int(array[row].reshape(-1)[bad[row]][0])


def _raise_if_outside(path: str | Path, key: str, array: np.ndarray, low: int, high: int, why: str) -> None:
    found = first_row_outside(array, low, high)
    if found is not None:
        row, value = found
        raise InputError(f"{path}: dataset '{key}' row {row} holds {value}, outside [{low}, {high}) ({why})")


def _check_values(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Values the shard format itself bounds: a negative masked position would wrap around silently and a
    label or mask outside its range would only fail deep in the model."""
    seq_len = arrays["input_ids"].shape[1]
    _raise_if_outside(path, "masked_lm_positions", arrays["masked_lm_positions"], 0, seq_len,
                      f"positions in a sequence of {seq_len} tokens")
    _raise_if_outside(path, "next_sentence_labels", arrays["next_sentence_labels"], 0, 2, "a next-sentence label")
    _raise_if_outside(path, "input_mask", arrays["input_mask"], 0, 2, "an attention mask")
    for key in ("input_ids", "masked_lm_ids", "segment_ids"):
        _raise_if_outside(path, key, arrays[key], 0, np.iinfo(np.int64).max, "ids are not negative")


@dataclass(frozen=True)
class TokenLimits:
    """The model's id ranges a shard's values must fit (from its config)."""

    vocab_size: int
    type_vocab_size: int

    def check(self, path: str, arrays: dict[str, np.ndarray]) -> None:
        """InputError naming shard, dataset and row of the first id the model's embeddings do not have."""
        for key in ("input_ids", "masked_lm_ids"):
            _raise_if_outside(path, key, arrays[key], 0, self.vocab_size, "the config's vocab_size")
        _raise_if_outside(path, "segment_ids", arrays["segment_ids"], 0, self.type_vocab_size,
                          "the config's type_vocab_size")


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


# --------------------------------------------------------------------------------------------
# The training stream: one rank's micro-batches, in an order fixed by (seed, epoch, slot), with a
# position that is plain data (what a checkpoint stores to resume at the exact next sample)
# --------------------------------------------------------------------------------------------

BATCH_KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_labels", "next_sentence_labels")


@dataclass
class DataPosition:
    epoch: int = 0
    slot: int = 0  # index into this epoch's file loop
    offset: int = 0  # samples of the current shard already consumed


def slots_per_epoch(num_files: int, world: int) -> int:
    """Shards each rank reads per epoch, so that an epoch is one pass over the data.

    (The original looped over all N slots on every rank, reading each shard W times per "epoch".)
    """
    return max(1, math.ceil(num_files / world))


def epoch_file_order(files: list[str], epoch: int, seed: int) -> list[str]:
    """The shard order of an epoch: the files shuffled with seed + epoch (the original's rule)."""
    order = list(files)
    random.Random(seed + epoch).shuffle(order)
    return order


def shard_for_slot(files: list[str], epoch: int, slot: int, rank: int, world: int, seed: int) -> str:
    """The original's assignment: shuffle with seed + epoch, rank r reads (slot·W + r) mod N."""
    order = epoch_file_order(files, epoch, seed)
    n = len(order)
    index = (slot * world + rank + ((world % n) * slot if world > n else 0)) % n
    return order[index]


def load_shard(path: str, max_pred: int, limits: TokenLimits | None = None) -> dict[str, torch.Tensor]:
    dataset = PretrainingShardDataset(path, max_pred)
    if limits is not None:  # here, in the loader thread: vectorised, once per shard, not per step
        limits.check(path, {"input_ids": dataset.input_ids, "masked_lm_ids": dataset.masked_lm_ids,
                            "segment_ids": dataset.segment_ids})
    return dataset.tensors()


class ShardStream:
    """Micro-batches of one rank, in a deterministic order given (seed, epoch, slot).

    The next shard is read in a background thread while the current one trains. `position` names the
    next sample to be read, so a checkpoint taken between micro-batches resumes at the exact next one.
    """

    def __init__(self, files: list[str], rank: int, world_size: int, micro_batch: int, max_pred: int, seed: int,
                 position: DataPosition | None = None, limits: TokenLimits | None = None):
        self.files, self.rank, self.world_size = files, rank, world_size
        self.micro_batch, self.max_pred, self.seed, self.limits = micro_batch, max_pred, seed, limits
        self.position = position or DataPosition()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch")
        self._prefetched: tuple[tuple[int, int], Future] | None = None

    def _path(self, epoch: int, slot: int) -> str:
        return shard_for_slot(self.files, epoch, slot, self.rank, self.world_size, self.seed)

    def _next_slot(self, epoch: int, slot: int) -> tuple[int, int]:
        return (epoch, slot + 1) if slot + 1 < slots_per_epoch(len(self.files), self.world_size) else (epoch + 1, 0)

    def _fetch(self, epoch: int, slot: int) -> dict[str, torch.Tensor]:
        if self._prefetched and self._prefetched[0] == (epoch, slot):
            shard = self._prefetched[1].result()
        else:
            shard = load_shard(self._path(epoch, slot), self.max_pred, self.limits)
        nxt = self._next_slot(epoch, slot)
        self._prefetched = (nxt, self._pool.submit(load_shard, self._path(*nxt), self.max_pred, self.limits))
        return shard

    def _order(self, n: int, epoch: int, path: str) -> torch.Tensor:
        """Sample order within a shard: a function of (seed, epoch, shard name) only, so the same shard
        is batched identically whichever rank or slot reads it."""
        key = f"{self.seed}:{epoch}:{os.path.basename(path)}".encode()
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)
        return torch.randperm(n, generator=g)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        empty_slots = 0  # shards in a row that gave no batch: a whole epoch of them would loop forever
        while True:
            pos = self.position
            shard = self._fetch(pos.epoch, pos.slot)
            n = shard["input_ids"].size(0)
            order = self._order(n, pos.epoch, self._path(pos.epoch, pos.slot))
            if pos.offset + self.micro_batch > n:
                empty_slots += 1
                self._raise_if_epoch_gave_nothing(empty_slots)
            while pos.offset + self.micro_batch <= n:  # the last partial batch is dropped: shapes stay static
                idx = order[pos.offset : pos.offset + self.micro_batch]
                pos.offset += self.micro_batch
                empty_slots = 0
                yield [shard[k].index_select(0, idx) for k in BATCH_KEYS]
            pos.epoch, pos.slot = self._next_slot(pos.epoch, pos.slot)
            pos.offset = 0

    def _raise_if_epoch_gave_nothing(self, empty_slots: int) -> None:
        # One slot more than an epoch: a resume can start at the end of a shard that did give batches.
        if empty_slots > slots_per_epoch(len(self.files), self.world_size):
            folder = os.path.dirname(self.files[0]) or "."
            raise InputError(f"{folder}: rank {self.rank} read a whole epoch of shards without one micro-batch "
                             f"of {self.micro_batch} rows; its shards hold fewer rows")

    def close(self) -> None:
        # Wait for a shard load still running: a thread inside h5py at interpreter exit can abort the process.
        self._pool.shutdown(wait=True, cancel_futures=True)


def shard_header(path: str) -> tuple[int, int, int]:
    """(rows, sequence length, masked positions per row) of a shard, from its header only (no data read)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return int(f["input_ids"].shape[0]), int(f["input_ids"].shape[1]), int(f["masked_lm_positions"].shape[1])
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file, truncated or damaged ({exc})") from None
    except (KeyError, IndexError, ValueError):
        raise InputError(f"{path}: not a pretraining shard (needs 2-D 'input_ids' and 'masked_lm_positions')") from None


def check_shard_shapes(files: list[str], max_seq_length: int, max_predictions_per_seq: int,
                       max_position_embeddings: int, micro_batch: int = 0) -> tuple[int, int]:
    """(sequence length, masked positions per row) of the shards; error early when a header is unreadable, the
    shards mix lengths, they cannot fit the model (`max_position_embeddings`) or the limits given on the
    command line, or (`micro_batch` > 0) no shard holds one micro-batch (training would find no batch)."""
    headers = {path: shard_header(path) for path in files}  # headers only: about a millisecond per shard
    _, seq_len, max_pred = headers[files[0]]
    for path, (_, other_len, other_pred) in headers.items():
        if (other_len, other_pred) != (seq_len, max_pred):
            raise InputError(f"shards of different lengths in one folder: {files[0]} has sequence length {seq_len} "
                             f"and {max_pred} masked positions, {path} has {other_len} and {other_pred}")
    if seq_len > max_position_embeddings:
        raise InputError(f"{files[0]}: sequence length {seq_len} exceeds max_position_embeddings {max_position_embeddings}")
    if seq_len > max_seq_length:
        raise InputError(f"{files[0]}: sequence length {seq_len} exceeds --max_seq_length {max_seq_length}")
    if max_pred > max_predictions_per_seq:
        raise InputError(f"{files[0]}: {max_pred} masked positions per row exceed --max_predictions_per_seq "
                         f"{max_predictions_per_seq}")
    most_rows = max(rows for rows, _, _ in headers.values())
    if most_rows < micro_batch:
        folder = os.path.dirname(files[0]) or "."
        raise InputError(f"{folder}: the largest of its {len(files)} shards holds {most_rows} rows, fewer than one "
                         f"micro-batch of {micro_batch} (--train_batch_size / --gradient_accumulation_steps)")
    return seq_len, max_pred
