"""Create BERT pretraining data: text shards -> HDF5 shards of sentence pairs with masked-LM targets.

Input text has one sentence per line and a blank line between documents; a file always ends a
document. Instances follow Google's algorithm, draw for draw (same seed, same arrays), in the
original's HDF5 layout; how, and why it is fast: data/shard_creation.py.

    python create_pretraining_data.py --input_file shard.txt --output_file shard.hdf5 \\
        --vocab_file data/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt \\
        --max_seq_length 128 --max_predictions_per_seq 20
"""
from __future__ import annotations

import argparse
from dataclasses import asdict

from data.shard_creation import create_hdf5_from_text
from input_checks import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Create BERT pretraining instances (HDF5) from text.")
    parser.add_argument("--vocab_file", required=True, help="WordPiece vocab the model will train on")
    parser.add_argument("--input_file", required=True,
                        help="a text file, a folder of .txt files, a glob, or a comma-separated list of those")
    parser.add_argument("--output_file", required=True, help="HDF5 file to write")
    parser.add_argument("--bert_model", default="bert-large-uncased", help="accepted for compatibility; unused")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--dupe_factor", type=int, default=10,
                        help="passes over the text, each with different pairs and masks")
    parser.add_argument("--max_predictions_per_seq", type=int, default=20)
    parser.add_argument("--masked_lm_prob", type=float, default=0.15)
    parser.add_argument("--short_seq_prob", type=float, default=0.1,
                        help="probability of a shorter target length for an instance")
    parser.add_argument("--do_lower_case", dest="do_lower_case", action="store_true", default=True,
                        help="lower-case and strip accents (the default, as in the original)")
    parser.add_argument("--no_lower_case", dest="do_lower_case", action="store_false",
                        help="keep case and accents (cased vocabs)")
    parser.add_argument("--random_seed", type=int, default=12345)
    parser.add_argument("--do_whole_word_mask", action="store_true",
                        help="mask all WordPieces of a word together (Google's whole-word masking)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    options = {key: value for key, value in vars(args).items() if key != "bert_model"}
    summary = create_hdf5_from_text(input_files=options.pop("input_file"), **options)
    print("wrote {instances} instances ({documents} documents, {sentences} sentences, {tokens} tokens) "
          "to {output_file} in {seconds:.1f} s".format(**asdict(summary)))


if __name__ == "__main__":
    run_main(main)
