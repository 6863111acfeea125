"""Per-token hidden states of chosen encoder layers as JSON lines (Google BERT's extract_features format).

    python extract_features.py --input_file sentences.txt --output_file features.jsonl \
        --init_checkpoint ckpt.pt --vocab_file vocab.txt --do_lower_case --layers=-1,-2,-3,-4

Each input line is one text, or a pair written `text_a ||| text_b`. Each output line is
`{"linex_index": i, "features": [{"token": t, "layers": [{"index": -1, "values": [...]}, ...]}, ...]}`
with values rounded to 6 decimals; layer -1 is the last encoder layer. The original's version of this
script called the model in a way its own model no longer accepted; this one works.
"""
from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from atomic_io import atomic_path
from bert_kernels import add_kernel_arguments, configure_kernels
from checkpoint_io import load_checkpoint, load_config_for_checkpoint, resolve_vocab_file
from finetuning import check_fits_positions, check_vocab_fits
from input_checks import InputError, check_at_least_one, check_output_file, read_text_file, run_main
from modeling import BertModel
from precision import PRECISION_HELP, PRECISIONS, autocast_context, resolve_precision
from processors.glue import encode_pair

PAIR_SEPARATOR = " ||| "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_file", required=True, help="one text (or `a ||| b` pair) per line")
    p.add_argument("--output_file", required=True, help="JSON lines, one per input line")
    p.add_argument("--bert_model", help="a checkpoint file or folder (used when --init_checkpoint is not given)")
    p.add_argument("--init_checkpoint", help="any checkpoint the common loader reads (pretraining, fine-tuned, HF)")
    p.add_argument("--config_file", help="bert_config.json (default: the one beside the checkpoint)")
    p.add_argument("--vocab_file", help="vocab.txt (default: the one beside the checkpoint)")
    p.add_argument("--do_lower_case", action="store_true")
    p.add_argument("--layers", default="-1,-2,-3,-4", help="comma-separated encoder layer indices (-1 = last)")
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--no_cuda", action="store_true")
    p.add_argument("--local_rank", type=int, default=-1, help="accepted for compatibility")
    add_kernel_arguments(p)
    args = p.parse_args(argv)
    args.init_checkpoint = args.init_checkpoint or args.bert_model
    if not args.init_checkpoint:
        raise InputError("--init_checkpoint (or --bert_model as a checkpoint path) is required")
    check_at_least_one(args.batch_size, "--batch_size")
    check_output_file(args.output_file)
    return args


def parse_layers(spec: str, num_layers: int) -> list[int]:
    try:
        layers = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--layers {spec!r}: expected comma-separated integers such as -1,-2,-3,-4") from None
    bad = [layer for layer in layers if not -num_layers <= layer < num_layers]
    if not layers or bad:
        raise InputError(f"--layers {spec!r}: the model has {num_layers} layers (valid: "
                         f"-{num_layers}..{num_layers - 1})")
    return layers


def read_lines(path: str) -> list[tuple[str, str | None]]:
    if not Path(path).is_file():
        raise InputError(f"input file not found: {path}")
    texts = []
    with io.StringIO(read_text_file(path), newline=None) as fh:  # universal newlines, as open() gave
        for line in fh:
            line = line.strip()
            text_a, sep, text_b = line.partition(PAIR_SEPARATOR)
            texts.append((text_a, text_b if sep else None))
    return texts


def encode(texts: list[tuple[str, str | None]], tokenizer: Any, max_seq_length: int
           ) -> Iterator[tuple[list[str], list[int], list[int], list[int]]]:
    """(tokens, input_ids, input_mask, segment_ids) per text, truncated and padded like fine-tuning."""
    for text_a, text_b in texts:
        tokens_b = tokenizer.tokenize(text_b) if text_b is not None else None
        ids, mask, segments = encode_pair(tokenizer.tokenize(text_a), tokens_b, max_seq_length, tokenizer)
        yield tokenizer.convert_ids_to_tokens(ids[: sum(mask)]), ids, mask, segments


def feature_record(index: int, tokens: list[str], hidden: dict[int, np.ndarray]) -> dict[str, Any]:
    features = []
    for position, token in enumerate(tokens):
        layers = [{"index": layer, "values": [round(float(x), 6) for x in values[position]]}
                  for layer, values in hidden.items()]
        features.append({"token": token, "layers": layers})
    return {"linex_index": index, "features": features}


@torch.inference_mode()
def write_features(model: BertModel, encoded: list[tuple], layers: list[int], batch_size: int, precision: str,
                   device: torch.device, out: TextIO) -> None:
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        ids, mask, segments = (torch.tensor([row[i] for row in chunk], device=device) for i in (1, 2, 3))
        with autocast_context(precision, device):
            all_layers, _ = model(ids, segments, mask, output_all_encoded_layers=True)
        picked = {layer: all_layers[layer].float().cpu().numpy() for layer in layers}
        for offset, row in enumerate(chunk):
            hidden = {layer: values[offset] for layer, values in picked.items()}
            out.write(json.dumps(feature_record(start + offset, row[0], hidden)) + "\n")


def main(argv: list[str] | None = None) -> None:
    from tokenization import FullTokenizer

    args = parse_args(argv)
    configure_kernels(args)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    precision = resolve_precision(args.precision, device=device)
    config = load_config_for_checkpoint(args.init_checkpoint, args.config_file)
    layers = parse_layers(args.layers, config.num_hidden_layers)
    check_fits_positions(args.max_seq_length, config)
    vocab_file = resolve_vocab_file(args.vocab_file, args.init_checkpoint)
    tokenizer = FullTokenizer(str(vocab_file), do_lower_case=args.do_lower_case)
    check_vocab_fits(tokenizer.vocab, config, vocab_file)
    model = BertModel(config)
    load_checkpoint(model, args.init_checkpoint, strict=False)
    model.to(device).eval()
    encoded = list(encode(read_lines(args.input_file), tokenizer, args.max_seq_length))
    with atomic_path(args.output_file) as tmp, open(tmp, "w", encoding="utf-8") as out:
        write_features(model, encoded, layers, args.batch_size, precision, device, out)
    print(json.dumps({"written": args.output_file, "lines": len(encoded), "layers": layers}))


if __name__ == "__main__":
    run_main(main)
