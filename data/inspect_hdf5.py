"""Show what a pretraining shard holds: datasets, instance statistics and a few decoded instances.

    python data/inspect_hdf5.py SHARD.hdf5 [--vocab_file vocab.txt] [--num 3]

Without --vocab_file instances are shown as ids and the [MASK]/kept/random split is not computed.
"""
from __future__ import annotations

import argparse

import numpy as np

from data.pretraining_dataset import read_shard
from input_checks import run_main


def shard_statistics(arrays: dict[str, np.ndarray], mask_id: int | None = None) -> dict[str, float]:
    """Counts that tell whether a shard looks like BERT pretraining data.

    masked_share is predictions per real token ([CLS]/[SEP] included, as the algorithm counts them);
    with `mask_id`, the predicted positions are split into [MASK], kept and random replacements
    (a random replacement that happens to draw the original token counts as kept).
    """
    real_lengths = arrays["input_mask"].astype(np.int64).sum(axis=1)
    # Predictions end at a row's first 0 position (padding), as the loader reads them.
    predicted = np.cumprod(arrays["masked_lm_positions"] > 0, axis=1).astype(bool)
    stats = {
        "instances": float(len(real_lengths)),
        "mean_length": float(real_lengths.mean()) if len(real_lengths) else 0.0,
        "max_length": float(real_lengths.max(initial=0)),
        "mean_predictions": float(predicted.sum(axis=1).mean()) if len(real_lengths) else 0.0,
        "masked_share": float(predicted.sum() / max(1, real_lengths.sum())),
        "random_next_share": float(arrays["next_sentence_labels"].mean()) if len(real_lengths) else 0.0,
    }
    if mask_id is not None:
        rows = np.broadcast_to(np.arange(len(predicted))[:, None], predicted.shape)[predicted]
        shown = arrays["input_ids"][rows, arrays["masked_lm_positions"][predicted]]
        labels = arrays["masked_lm_ids"][predicted]
        total = max(1, len(labels))
        stats["mask_token_share"] = float((shown == mask_id).sum() / total)
        stats["kept_share"] = float(((shown == labels) & (shown != mask_id)).sum() / total)
        stats["random_token_share"] = float(((shown != labels) & (shown != mask_id)).sum() / total)
    return stats


def describe_instance(arrays: dict[str, np.ndarray], row: int, id_to_token: list[str] | None) -> str:
    """Two lines: the sequence (masked tokens as shown to the model) and the predictions position:label."""
    length = int(arrays["input_mask"][row].sum())
    ids = arrays["input_ids"][row, :length].tolist()
    positions = arrays["masked_lm_positions"][row]
    count = int(np.argmax(positions == 0)) if (positions == 0).any() else len(positions)
    labels = arrays["masked_lm_ids"][row, :count].tolist()

    def show(token_id: int) -> str:
        return id_to_token[token_id] if id_to_token and 0 <= token_id < len(id_to_token) else str(token_id)

    random_next = "yes" if arrays["next_sentence_labels"][row] else "no"
    return (f"instance {row} (length {length}, random next: {random_next})\n"
            f"  {' '.join(show(token_id) for token_id in ids)}\n"
            f"  predict: {' '.join(f'{p}:{show(t)}' for p, t in zip(positions[:count].tolist(), labels, strict=True))}")


def _id_to_token(vocab_file: str) -> list[str]:
    from tokenization import load_vocab

    vocab = load_vocab(vocab_file)
    tokens = [""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        tokens[index] = token
    return tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shard", help="an HDF5 shard written by create_pretraining_data.py")
    parser.add_argument("--vocab_file", help="decode ids to tokens and split the replacements")
    parser.add_argument("--num", type=int, default=3, help="instances to show (default 3)")
    args = parser.parse_args(argv)

    import h5py

    arrays = read_shard(args.shard)
    print(f"shard: {args.shard}")
    with h5py.File(args.shard, "r") as shard:
        print(f"  {'dataset':<22}{'shape':<16}{'dtype':<8}{'compression':<13}chunks")
        for key in arrays:
            dataset = shard[key]
            print(f"  {key:<22}{str(dataset.shape):<16}{str(dataset.dtype):<8}{str(dataset.compression):<13}"
                  f"{dataset.chunks}")
    id_to_token = _id_to_token(args.vocab_file) if args.vocab_file else None
    mask_id = id_to_token.index("[MASK]") if id_to_token and "[MASK]" in id_to_token else None
    stats = shard_statistics(arrays, mask_id)
    seq_length, max_predictions = arrays["input_ids"].shape[1], arrays["masked_lm_positions"].shape[1]
    print(f"instances: {int(stats['instances'])}")
    print(f"real length: mean {stats['mean_length']:.1f}, max {int(stats['max_length'])} of {seq_length}")
    print(f"masked share of real tokens: {stats['masked_share']:.3f} "
          f"(predictions per instance: mean {stats['mean_predictions']:.1f} of at most {max_predictions})")
    print(f"random next sentence share: {stats['random_next_share']:.3f}")
    if mask_id is not None:
        print(f"replacements: [MASK] {stats['mask_token_share']:.3f}, kept {stats['kept_share']:.3f}, "
              f"random {stats['random_token_share']:.3f}")
    for row in range(min(args.num, int(stats["instances"]))):
        print(describe_instance(arrays, row, id_to_token))


if __name__ == "__main__":
    run_main(main)
