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

The training stream (`ShardStream`, at the end) takes a `DynamicMasker` (fresh masks per read, keyed by
seed, epoch, shard and row) and a bin size (length-binned, trimmed micro-batches: `batch_plan`).
"""
from __future__ import annotations

import argparse
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

# The shard format lives in a torch-free module so that data-preparation workers stay light.
from data.shard_format import PREDICTION_KEYS, SEQUENCE_KEYS, SHARD_DTYPES, predictions_per_length  # noqa: F401 (re-exported)
from input_checks import InputError

IGNORE_INDEX = -1
ItemTransform = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def list_shards(folder: str | os.PathLike, split: str = "training") -> list[str]:
    """Shard files in `folder` whose names contain `split`, sorted: the original's rule ('training'; 'test'
    for evaluation); InputError when there are none. Hidden files, such as the temp file of a shard still
    being written, are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: shard folder not found")
    files = [str(folder / name) for name in sorted(entry.name for entry in os.scandir(folder)
                                                   if split in entry.name and not entry.name.startswith(".")
                                                   and _is_file(entry))]
    if not files:
        raise InputError(f"{folder}: no .hdf5 shards whose name contains '{split}'")
    return files


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError as exc:  # e.g. a symlink loop
        raise InputError(f"{entry.path}: cannot be read ({exc.strerror})") from None


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
            raise InputError(f"{path}: missing dataset '{missing[0]}' (a pretraining shard has "
                             f"{', '.join(SHARD_DTYPES)})")
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
    bin_size: int = 0  # --bin_size the offset counts in (the batch plan of a shard depends on it)


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
                 position: DataPosition | None = None, masker: DynamicMasker | None = None, bin_size: int = 0,
                 limits: TokenLimits | None = None):
        self.files, self.rank, self.world_size = files, rank, world_size
        self.micro_batch, self.max_pred, self.seed, self.limits = micro_batch, max_pred, seed, limits
        self.position = position or DataPosition(bin_size=bin_size)
        self.masker, self.bin_size = masker, bin_size
        check_bin_size_of_position(self.position, bin_size)
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
            path = self._path(pos.epoch, pos.slot)
            plan = self.plan(shard, pos.epoch, path)
            if pos.offset + self.micro_batch > n:
                empty_slots += 1
                self._raise_if_epoch_gave_nothing(empty_slots)
            while pos.offset + self.micro_batch <= n:  # the last partial batch is dropped: shapes stay static
                idx, width = plan[pos.offset // self.micro_batch]
                pos.offset += self.micro_batch
                empty_slots = 0
                yield self.make_batch(shard, idx, width, pos.epoch, path)
            pos.epoch, pos.slot = self._next_slot(pos.epoch, pos.slot)
            pos.offset = 0

    def plan(self, shard: dict[str, torch.Tensor], epoch: int, path: str) -> list[tuple[torch.Tensor, int]]:
        """The micro-batches of shard `path` in `epoch` as (rows, width): a function of the seed, the epoch, the
        shard's name and content and the bin size only, so any rank reading it, and any resume, batches it alike."""
        order = self._order(shard["input_ids"].size(0), epoch, path)
        seq_len = shard["input_ids"].size(1)
        if not self.bin_size:
            return batch_plan(order, self.micro_batch, seq_len=seq_len)
        lengths = shard["input_mask"].sum(dim=1)
        return batch_plan(order, self.micro_batch, lengths, self.bin_size, seq_len,
                          stream_key(self.seed, epoch, path + ":bins"))

    def make_batch(self, shard: dict[str, torch.Tensor], idx: torch.Tensor, width: int, epoch: int,
                   path: str) -> list[torch.Tensor]:
        """The rows `idx`, trimmed to `width` columns, re-masked when dynamic masking is on."""
        batch = [shard[k].index_select(0, idx) for k in BATCH_KEYS]
        if width < batch[0].size(1):
            batch[:4] = [t[:, :width].contiguous() for t in batch[:4]]
        if self.masker is not None:
            unmasked = unmasked_input_ids(batch[0], batch[3])
            batch[0], batch[3] = self.masker(unmasked, batch[1], batch[2], epoch, path, idx)
        return batch

    def _raise_if_epoch_gave_nothing(self, empty_slots: int) -> None:
        # One slot more than an epoch: a resume can start at the end of a shard that did give batches.
        if empty_slots > slots_per_epoch(len(self.files), self.world_size):
            folder = os.path.dirname(self.files[0]) or "."
            raise InputError(f"{folder}: rank {self.rank} read a whole epoch of shards without one micro-batch "
                             f"of {self.micro_batch} rows; its shards hold fewer rows")

    def close(self) -> None:
        # Wait for a shard load still running: a thread inside h5py at interpreter exit can abort the process.
        self._pool.shutdown(wait=True, cancel_futures=True)


def check_bin_size_of_position(position: DataPosition, bin_size: int) -> None:
    """A position inside a shard counts batches of one batch plan: resuming it with another --bin_size would
    skip or repeat samples. At a shard boundary any bin size continues exactly."""
    if position.offset and position.bin_size != bin_size:
        raise InputError(f"the checkpoint's data position is {position.offset} samples into a shard batched with "
                         f"--bin_size {position.bin_size}; resume with --bin_size {position.bin_size}")
    position.bin_size = bin_size


# What a shard records of how it was made (data/shard_creation.py's attributes) that changes what training
# learns: mixing shards that differ in one of these trains on two tokenizations or maskings at once.
MAKING_SETTINGS = ("vocab_sha256", "do_lower_case", "do_whole_word_mask", "masked_lm_prob")
# deflate cannot shrink data more than about 1032:1, so a gzip dataset whose header claims more rows than its
# stored bytes could hold is damaged or crafted (reading it would allocate what the header says).
MAX_COMPRESSION_RATIO = 1100
EXPECTED_NDIM = {key: 2 for key in (*SEQUENCE_KEYS, *PREDICTION_KEYS)} | {"next_sentence_labels": 1}


@dataclass(frozen=True)
class ShardHeader:
    """What a shard's HDF5 header says, read without reading its data."""

    rows: int
    seq_len: int
    max_pred: int
    settings: dict  # MAKING_SETTINGS the shard records (none for the original's shards)


def shard_header(path: str) -> ShardHeader:
    """The header of a shard, checked: six integer datasets of the right ranks and one row count, and no more
    rows than the stored bytes can hold (no data read; about a millisecond)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            rows = {key: _checked_dataset_rows(path, f, key) for key in SHARD_DTYPES}
            settings = {key: _plain(f.attrs[key]) for key in MAKING_SETTINGS if key in f.attrs}
            widths = f["input_ids"].shape[1], f["masked_lm_positions"].shape[1]
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file, truncated or damaged ({exc})") from None
    count = rows["next_sentence_labels"]
    for key, value in rows.items():
        if value != count:
            raise InputError(f"{path}: dataset '{key}' has {value} rows, 'next_sentence_labels' has {count}")
    return ShardHeader(count, int(widths[0]), int(widths[1]), settings)


def _checked_dataset_rows(path: str, f, key: str) -> int:
    import h5py

    dataset = f.get(key)
    if not isinstance(dataset, h5py.Dataset):
        what = "missing" if dataset is None else "not a dataset"
        raise InputError(f"{path}: not a pretraining shard: '{key}' is {what} (a shard has {', '.join(SHARD_DTYPES)})")
    ndim = EXPECTED_NDIM[key]
    if dataset.ndim != ndim or not np.issubdtype(dataset.dtype, np.integer):
        raise InputError(f"{path}: dataset '{key}' has shape {dataset.shape} and dtype {dataset.dtype}; "
                         f"expected {ndim}-D integers")
    claimed = int(np.prod(dataset.shape, dtype=np.float64)) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if claimed > MAX_COMPRESSION_RATIO * stored + (1 << 20):
        raise InputError(f"{path}: dataset '{key}' claims {dataset.shape[0]} rows ({claimed / 2**30:.1f} GiB) but "
                         f"stores {stored} bytes; the file is damaged")
    return int(dataset.shape[0])


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def check_same_making_settings(headers: dict[str, ShardHeader]) -> None:
    """InputError naming two shards made with a different vocab, case, whole-word masking or masking
    probability (shards that record no settings, such as the original's, are not compared)."""
    recorded = [(path, header.settings) for path, header in headers.items() if header.settings]
    if not recorded:
        return
    first, settings = recorded[0]
    for path, other in recorded[1:]:
        for key in MAKING_SETTINGS:
            if key in settings and key in other and settings[key] != other[key]:
                raise InputError(f"shards made with different settings in one folder: {first} has {key}="
                                 f"{settings[key]!r}, {path} has {key}={other[key]!r}; train on one kind")


def check_shard_shapes(files: list[str], max_seq_length: int, max_predictions_per_seq: int,
                       max_position_embeddings: int, micro_batch: int = 0) -> tuple[int, int]:
    """(sequence length, masked positions per row) of the shards; error early when a header is unreadable, the
    shards mix lengths, they cannot fit the model (`max_position_embeddings`) or the limits given on the
    command line, or (`micro_batch` > 0) no shard holds one micro-batch (training would find no batch)."""
    headers = {path: shard_header(path) for path in files}  # headers only: about a millisecond per shard
    seq_len, max_pred = headers[files[0]].seq_len, headers[files[0]].max_pred
    for path, header in headers.items():
        other_len, other_pred = header.seq_len, header.max_pred
        if (other_len, other_pred) != (seq_len, max_pred):
            raise InputError(f"shards of different lengths in one folder: {files[0]} has sequence length {seq_len} "
                             f"and {max_pred} masked positions, {path} has {other_len} and {other_pred}")
    if seq_len > max_position_embeddings:
        raise InputError(f"{files[0]}: sequence length {seq_len} exceeds max_position_embeddings "
                         f"{max_position_embeddings}")
    if seq_len > max_seq_length:
        raise InputError(f"{files[0]}: sequence length {seq_len} exceeds --max_seq_length {max_seq_length}")
    if max_pred > max_predictions_per_seq:
        raise InputError(f"{files[0]}: {max_pred} masked positions per row exceed --max_predictions_per_seq "
                         f"{max_predictions_per_seq}")
    check_same_making_settings(headers)
    most_rows = max(header.rows for header in headers.values())
    if most_rows < micro_batch:
        folder = os.path.dirname(files[0]) or "."
        raise InputError(f"{folder}: the largest of its {len(files)} shards holds {most_rows} rows, fewer than one "
                         f"micro-batch of {micro_batch} (--train_batch_size / --gradient_accumulation_steps)")
    return seq_len, max_pred


# --------------------------------------------------------------------------------------------
# Dynamic masking: a fresh mask each time a sample is read, drawn with the original's rules from a
# counter-based generator keyed by (seed, epoch, shard name, row), so a sample's mask depends on
# nothing else (not the rank, the world size, the batch it lands in, or a resume)
# --------------------------------------------------------------------------------------------

STANDARD_MASK_ID = 103  # [MASK] in Google's uncased and cased vocabs (used when no --vocab_file is given)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_DRAWS_PER_POSITION = 4  # selection key, [MASK]-or-not, kept-or-random, random word


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on uint64 whose outputs pass BigCrush for counter inputs."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def stream_key(seed: int, epoch: int, shard_path: str) -> int:
    """The 64-bit key of (seed, epoch, shard): the shard's base name, so any rank reading it draws alike."""
    key = f"{seed}:{epoch}:{os.path.basename(shard_path)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def sample_uniforms(key: int, rows: np.ndarray, width: int) -> np.ndarray:
    """Uniform floats in [0, 1), shape [len(rows), width, 4]: draw d of position p of sample `row` is
    SplitMix64 output number (p·4 + d) of the stream seeded with mix(key + (row + 1)·golden)."""
    with np.errstate(over="ignore"):
        sample_seed = _mix64(np.uint64(key) + (rows.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
        counters = np.arange(1, width * _DRAWS_PER_POSITION + 1, dtype=np.uint64) * _GOLDEN
        bits = _mix64(sample_seed[:, None] + counters[None, :])
    return ((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(len(rows), width, _DRAWS_PER_POSITION)


class DynamicMasker:
    """The original's masking (as create_pretraining_data.py writes it), applied to a batch at load time.

    Candidates are the real tokens except [CLS] and the two [SEP]s (found from the segment ids and the
    input mask, so padding and specials are never chosen); `min(max_pred, max(1, round(length·prob)))` of
    them are masked (the original's count, Python rounding); each chosen position becomes [MASK] with
    probability 0.8, else stays itself or becomes a uniformly drawn vocab entry with probability 0.5 each.
    With `is_continuation` (whole-word masking), "##" pieces join the word before them, words are taken in
    a random order while they fit in the count, as Google's `create_masked_lm_predictions`.
    """

    def __init__(self, max_pred: int, masked_lm_prob: float, mask_id: int, random_words: np.ndarray,
                 seed: int, is_continuation: np.ndarray | None = None):
        self.max_pred, self.masked_lm_prob, self.mask_id = max_pred, masked_lm_prob, mask_id
        self.random_words = np.asarray(random_words, dtype=np.int64)
        self.seed = seed
        self.is_continuation = is_continuation
        self._count_tables: dict[int, np.ndarray] = {}

    def num_to_predict(self, lengths: np.ndarray) -> np.ndarray:
        """Masked positions per real length, by the rule shards are written with (same rounding)."""
        top = int(lengths.max(initial=0))
        table = self._count_tables.get(top)
        if table is None:
            table = self._count_tables[top] = predictions_per_length(top, self.max_pred, self.masked_lm_prob)
        return table[lengths]

    def __call__(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, input_mask: torch.Tensor, epoch: int,
                 shard_path: str, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input_ids, masked_lm_labels) for unmasked `input_ids` [B, S] of rows `rows` of the shard."""
        tokens = input_ids.numpy()
        draws = sample_uniforms(stream_key(self.seed, epoch, shard_path + ":mask"), rows.numpy(), tokens.shape[1])
        candidates = candidate_positions(segment_ids.numpy(), input_mask.numpy())
        counts = self.num_to_predict(input_mask.numpy().sum(axis=1))
        if self.is_continuation is None:
            chosen = choose_pieces(draws[..., 0], candidates, counts)
        else:
            chosen = choose_whole_words(draws[..., 0], candidates, counts, self.is_continuation[tokens])
        replacement = replacement_ids(tokens, draws[..., 1:], self.mask_id, self.random_words)
        masked, labels = apply_mask(tokens, chosen, replacement)
        return torch.from_numpy(masked), torch.from_numpy(labels)


def candidate_positions(segment_ids: np.ndarray, input_mask: np.ndarray) -> np.ndarray:
    """[B, S] bool: real tokens other than [CLS] (position 0) and the [SEP]s that end segments A and B."""
    lengths = input_mask.sum(axis=1)
    first_sep = ((segment_ids == 0) & (input_mask != 0)).sum(axis=1) - 1
    columns = np.arange(input_mask.shape[1])[None, :]
    return ((input_mask != 0) & (columns != 0) & (columns != first_sep[:, None])
            & (columns != (lengths - 1)[:, None]))


def choose_pieces(keys: np.ndarray, candidates: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B, S] bool: per row, the `counts` candidates with the smallest keys (a uniform random subset)."""
    keyed = np.where(candidates, keys, np.inf)
    rank = np.empty_like(keyed, dtype=np.int64)
    np.put_along_axis(rank, np.argsort(keyed, axis=1, kind="stable"), np.arange(keyed.shape[1])[None, :], axis=1)
    return candidates & (rank < counts[:, None])


def choose_whole_words(keys: np.ndarray, candidates: np.ndarray, counts: np.ndarray,
                       continuation: np.ndarray) -> np.ndarray:
    """[B, S] bool: whole words (a "##" candidate joins the candidate before it) in a random order, each
    taken when it still fits in the row's count, until the count is reached (Google's greedy rule)."""
    rows, width = candidates.shape
    earlier = np.cumsum(candidates, axis=1) - candidates > 0
    starts = candidates & ~(continuation & earlier)
    word = np.cumsum(starts, axis=1) - 1  # word number of each candidate
    flat_word = (np.arange(rows)[:, None] * width + word)[candidates]
    size = np.bincount(flat_word, minlength=rows * width).reshape(rows, width)
    word_key = np.full((rows, width), np.inf)
    word_key[np.nonzero(starts)[0], word[starts]] = keys[starts]  # a word's key is its first piece's
    order = np.argsort(word_key, axis=1, kind="stable")
    ordered_size = np.take_along_axis(size, order, axis=1)
    taken_in_order = greedy_fit(ordered_size, counts)
    taken = np.zeros((rows, width), dtype=bool)
    np.put_along_axis(taken, order, taken_in_order, axis=1)
    return candidates & np.take_along_axis(taken, np.maximum(word, 0), axis=1)


def greedy_fit(sizes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B, W] bool: walking each row's words in order, take a word when it fits in what is left of the count
    (stop once full). The leading run where the running total stays within the count is taken in one step."""
    running = np.cumsum(sizes, axis=1)
    taken = (running <= counts[:, None]) & (sizes > 0)
    over = running > counts[:, None]
    first_over = np.where(over.any(axis=1), over.argmax(axis=1), sizes.shape[1])
    total = np.where(first_over > 0, np.take_along_axis(running, np.maximum(first_over - 1, 0)[:, None], 1)[:, 0], 0)
    taken &= np.arange(sizes.shape[1])[None, :] < first_over[:, None]
    for column in range(int(first_over.min(initial=sizes.shape[1])), sizes.shape[1]):
        size = sizes[:, column]
        fits = (column >= first_over) & (size > 0) & (total + size <= counts)
        if not (total < counts).any():
            break
        taken[:, column] |= fits
        total = total + np.where(fits, size, 0)
    return taken


def replacement_ids(tokens: np.ndarray, draws: np.ndarray, mask_id: int, random_words: np.ndarray) -> np.ndarray:
    """What each position would become if chosen: [MASK] (80%), itself (10%) or a random vocab entry (10%),
    decided as the original does: u1 < 0.8 → [MASK]; else u2 ≥ 0.5 → random word; else kept."""
    random_word = random_words[np.minimum((draws[..., 2] * len(random_words)).astype(np.int64), len(random_words) - 1)]
    kept_or_random = np.where(draws[..., 1] >= 0.5, random_word, tokens)
    return np.where(draws[..., 0] < 0.8, mask_id, kept_or_random)


def apply_mask(tokens: np.ndarray, chosen: np.ndarray, replacement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input ids with the chosen positions replaced, labels: the original id there, -1 elsewhere), int64."""
    masked = np.where(chosen, replacement, tokens).astype(np.int64)
    labels = np.where(chosen, tokens, IGNORE_INDEX).astype(np.int64)
    return masked, labels


def masker_from_vocab(vocab_file: str | None, vocab_size: int, max_pred: int, masked_lm_prob: float, seed: int,
                      whole_word: bool) -> DynamicMasker:
    """The masker for the flags: ids from `vocab_file`, or (without one) Google's [MASK] = 103 and random
    words drawn from ids 0..vocab_size-1 (the model config's vocab, unpadded). Whole words need the vocab."""
    if not 0.0 < masked_lm_prob <= 1.0:
        raise InputError(f"--masked_lm_prob must be in (0, 1], got {masked_lm_prob}")
    if vocab_file is None:
        if whole_word:
            raise InputError("--whole_word_masking needs --vocab_file (to know which pieces start with '##')")
        return DynamicMasker(max_pred, masked_lm_prob, STANDARD_MASK_ID, np.arange(vocab_size), seed)
    from tokenization import load_vocab

    vocab = load_vocab(vocab_file)
    if "[MASK]" not in vocab:
        raise InputError(f"{vocab_file}: vocab has no [MASK] token (needed for dynamic masking)")
    if max(vocab.values()) >= vocab_size:
        raise InputError(f"{vocab_file}: {len(vocab)} tokens do not fit the model's vocab_size {vocab_size}")
    random_words = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))  # the original draws from this list
    continuation = None
    if whole_word:
        continuation = np.zeros(vocab_size, dtype=bool)
        for token, index in vocab.items():
            continuation[index] = token.startswith("##")
    return DynamicMasker(max_pred, masked_lm_prob, vocab["[MASK]"], random_words, seed, continuation)


def masker_from_args(args, vocab_size: int, max_pred: int) -> DynamicMasker | None:
    """The masker the flags of `add_masking_arguments` (and --seed) ask for, or None without --dynamic_masking."""
    if not args.dynamic_masking:
        if args.whole_word_masking:
            raise InputError("--whole_word_masking needs --dynamic_masking (the shards' own masks are used otherwise)")
        return None
    return masker_from_vocab(args.vocab_file, vocab_size, max_pred, args.masked_lm_prob, args.seed,
                             args.whole_word_masking)


def add_masking_arguments(parser) -> None:
    """--dynamic_masking and its knobs (run_pretraining.py and run_pretraining_inference.py)."""
    group = parser.add_argument_group("dynamic masking (a fresh mask each time a sample is read)")
    group.add_argument("--dynamic_masking", action="store_true",
                       help="ignore the shards' masks: restore the tokens and draw a new mask per sample and epoch, "
                            "seeded from (seed, epoch, shard, row); shards can then be made with --dupe_factor 1")
    group.add_argument("--masked_lm_prob", type=float, default=0.15, help="fraction of real tokens masked")
    group.add_argument("--whole_word_masking", action="store_true",
                       help="mask all pieces of a word together (needs --vocab_file)")
    group.add_argument("--vocab_file", default=None,
                       help="vocab the shards were made with ([MASK] id, random words, '##' pieces); "
                            "default: Google's ids ([MASK] = 103, random words from the model's vocab_size)")


# --------------------------------------------------------------------------------------------
# Length-binned batches: the padded path's answer to padding
# --------------------------------------------------------------------------------------------


def add_binning_arguments(parser: argparse.ArgumentParser) -> None:
    """--bin_size (run_pretraining.py)."""
    parser.add_argument("--bin_size", type=int, default=0,
                        help="length-binned batches: each micro-batch from one bin of real lengths (multiples of N "
                             "tokens), trimmed to the bin's upper edge (NVIDIA's later recipe uses 64); 0 = off")


def batch_plan(order: torch.Tensor, micro_batch: int, lengths: torch.Tensor | None = None, bin_size: int = 0,
               seq_len: int = 0, shuffle_key: int = 0) -> list[tuple[torch.Tensor, int]]:
    """One shard's micro-batches as (rows, width to trim to), `len(order) // micro_batch` of them.

    Without bins: consecutive runs of `order`, full width. With bins: the last `n mod micro_batch` rows of
    `order` are left out (the same rows as without bins); the rest are grouped by bin (ceil(length /
    bin_size)), keeping their shuffled order, and cut into micro-batches within each bin; the bins' remainders,
    in bin order, make the few batches that span two or more neighbouring bins. Each batch is trimmed to the
    upper edge of its longest row's bin, and the batches are shuffled with `shuffle_key`.
    """
    count = len(order) // micro_batch
    if bin_size <= 0:
        return [(order[i * micro_batch : (i + 1) * micro_batch], seq_len) for i in range(count)]
    kept = order[: count * micro_batch]
    bins = torch.div(lengths[kept] + bin_size - 1, bin_size, rounding_mode="floor").clamp_(min=1)
    full, remainders = [], []
    for b in torch.unique(bins).tolist():  # ascending
        members = kept[bins == b]
        whole = len(members) // micro_batch * micro_batch
        full += list(members[:whole].split(micro_batch)) if whole else []
        remainders.append(members[whole:])
    rest = torch.cat(remainders) if remainders else kept[:0]
    batches = full + (list(rest.split(micro_batch)) if len(rest) else [])  # all full: count·micro_batch kept
    shuffle = torch.randperm(len(batches), generator=torch.Generator().manual_seed(shuffle_key >> 1))
    return [(batches[i], bin_edge(int(lengths[batches[i]].max()), bin_size, seq_len)) for i in shuffle.tolist()]


def bin_edge(length: int, bin_size: int, seq_len: int) -> int:
    """The upper edge of the bin of a real length (a multiple of bin_size, at most the shard's width)."""
    return min(seq_len, max(1, -(-length // bin_size)) * bin_size)
