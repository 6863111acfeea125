"""Plain single-process port of the original instance creation, as the baseline for speed and output.

This is the behaviour of NVIDIA's `create_pretraining_data.py` (Google's algorithm plus NVIDIA's
"same random document means not random" rule), written the straightforward way: the pure-Python
WordPiece tokenizer called line by line, training instances kept as lists of token strings, and
one row of the output arrays filled at a time. Google's whole-word masking is included as an option.

`create_pretraining_data.py` must produce exactly the arrays this module produces from the same
text and seed; the tests and `bench_create_pretraining_data.py` check that.

    python benchmarks/reference_create_pretraining_data.py --input_file F --output_file O --vocab_file V
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import h5py
import numpy as np

import tokenization


@dataclass
class TrainingInstance:
    tokens: list[str]
    segment_ids: list[int]
    masked_lm_positions: list[int]
    masked_lm_labels: list[str]
    is_random_next: bool


def read_documents(input_files: list[str], tokenizer: tokenization.FullTokenizer) -> list[list[list[str]]]:
    """Documents as lists of tokenized sentences: one sentence per line, blank lines between documents.

    As in the original, the list starts with one open document that runs on across files.
    """
    all_documents: list[list[list[str]]] = [[]]
    for input_file in input_files:
        with open(input_file, encoding="utf-8") as reader:
            while True:
                line = reader.readline()
                if not line:
                    break
                line = line.strip()
                if not line:
                    all_documents.append([])
                tokens = tokenizer.tokenize(line)
                if tokens:
                    all_documents[-1].append(tokens)
    return [document for document in all_documents if document]


def create_training_instances(
    input_files: list[str],
    tokenizer: tokenization.FullTokenizer,
    max_seq_length: int,
    dupe_factor: int,
    short_seq_prob: float,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    rng: random.Random,
    do_whole_word_mask: bool = False,
) -> list[TrainingInstance]:
    all_documents = read_documents(input_files, tokenizer)
    rng.shuffle(all_documents)
    vocab_words = list(tokenizer.vocab.keys())
    instances: list[TrainingInstance] = []
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(
                create_instances_from_document(
                    all_documents, document_index, max_seq_length, short_seq_prob, masked_lm_prob,
                    max_predictions_per_seq, vocab_words, rng, do_whole_word_mask,
                )
            )
    rng.shuffle(instances)
    return instances


def create_instances_from_document(
    all_documents: list[list[list[str]]],
    document_index: int,
    max_seq_length: int,
    short_seq_prob: float,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    vocab_words: list[str],
    rng: random.Random,
    do_whole_word_mask: bool,
) -> list[TrainingInstance]:
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances = []
    current_chunk: list[list[str]] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a: list[str] = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])

                tokens_b: list[str] = []
                is_random_next = False
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    # NVIDIA's rule: a pair taken from the same document is not a random pair.
                    if random_document_index == document_index:
                        is_random_next = False
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert len(tokens_a) >= 1
                assert len(tokens_b) >= 1

                tokens = ["[CLS]"]
                segment_ids = [0]
                for token in tokens_a:
                    tokens.append(token)
                    segment_ids.append(0)
                tokens.append("[SEP]")
                segment_ids.append(0)
                for token in tokens_b:
                    tokens.append(token)
                    segment_ids.append(1)
                tokens.append("[SEP]")
                segment_ids.append(1)

                tokens, masked_lm_positions, masked_lm_labels = create_masked_lm_predictions(
                    tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng, do_whole_word_mask
                )
                instances.append(
                    TrainingInstance(tokens, segment_ids, masked_lm_positions, masked_lm_labels, is_random_next)
                )
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def create_masked_lm_predictions(
    tokens: list[str],
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    vocab_words: list[str],
    rng: random.Random,
    do_whole_word_mask: bool,
) -> tuple[list[str], list[int], list[str]]:
    cand_indexes: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token == "[CLS]" or token == "[SEP]":
            continue
        if do_whole_word_mask and len(cand_indexes) >= 1 and token.startswith("##"):
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    rng.shuffle(cand_indexes)

    output_tokens = list(tokens)
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    masked_lms: list[tuple[int, str]] = []
    covered_indexes: set[int] = set()
    for index_set in cand_indexes:
        if len(masked_lms) >= num_to_predict:
            break
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        if any(index in covered_indexes for index in index_set):
            continue
        for index in index_set:
            covered_indexes.add(index)
            if rng.random() < 0.8:
                masked_token = "[MASK]"
            elif rng.random() < 0.5:
                masked_token = tokens[index]
            else:
                masked_token = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            output_tokens[index] = masked_token
            masked_lms.append((index, tokens[index]))
    masked_lms.sort(key=lambda item: item[0])
    return output_tokens, [index for index, _ in masked_lms], [label for _, label in masked_lms]


def truncate_seq_pair(tokens_a: list[str], tokens_b: list[str], max_num_tokens: int, rng: random.Random) -> None:
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def instances_to_arrays(
    instances: list[TrainingInstance],
    tokenizer: tokenization.FullTokenizer,
    max_seq_length: int,
    max_predictions_per_seq: int,
) -> dict[str, np.ndarray]:
    """The six shard arrays, filled one instance at a time as the original does."""
    n = len(instances)
    features = {
        "input_ids": np.zeros([n, max_seq_length], dtype="int32"),
        "input_mask": np.zeros([n, max_seq_length], dtype="int32"),
        "segment_ids": np.zeros([n, max_seq_length], dtype="int32"),
        "masked_lm_positions": np.zeros([n, max_predictions_per_seq], dtype="int32"),
        "masked_lm_ids": np.zeros([n, max_predictions_per_seq], dtype="int32"),
        "next_sentence_labels": np.zeros(n, dtype="int32"),
    }
    for row, instance in enumerate(instances):
        input_ids = tokenizer.convert_tokens_to_ids(instance.tokens)
        input_mask = [1] * len(input_ids)
        segment_ids = list(instance.segment_ids)
        assert len(input_ids) <= max_seq_length
        while len(input_ids) < max_seq_length:
            input_ids.append(0)
            input_mask.append(0)
            segment_ids.append(0)
        masked_lm_positions = list(instance.masked_lm_positions)
        masked_lm_ids = tokenizer.convert_tokens_to_ids(instance.masked_lm_labels)
        while len(masked_lm_positions) < max_predictions_per_seq:
            masked_lm_positions.append(0)
            masked_lm_ids.append(0)
        features["input_ids"][row] = input_ids
        features["input_mask"][row] = input_mask
        features["segment_ids"][row] = segment_ids
        features["masked_lm_positions"][row] = masked_lm_positions
        features["masked_lm_ids"][row] = masked_lm_ids
        features["next_sentence_labels"][row] = 1 if instance.is_random_next else 0
    return features


def write_hdf5(features: dict[str, np.ndarray], output_file: str) -> None:
    stored_dtypes = {"input_ids": "i4", "input_mask": "i1", "segment_ids": "i1",
                     "masked_lm_positions": "i4", "masked_lm_ids": "i4", "next_sentence_labels": "i1"}
    with h5py.File(output_file, "w") as f:
        for key, dtype in stored_dtypes.items():
            f.create_dataset(key, data=features[key], dtype=dtype, compression="gzip")


def create_reference_arrays(
    input_files: list[str],
    vocab_file: str,
    do_lower_case: bool = True,
    max_seq_length: int = 128,
    max_predictions_per_seq: int = 20,
    masked_lm_prob: float = 0.15,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 10,
    random_seed: int = 12345,
    do_whole_word_mask: bool = False,
) -> dict[str, np.ndarray]:
    """Everything but the file write, with the pure-Python tokenizer."""
    tokenizer = tokenization.FullTokenizer(vocab_file, do_lower_case=do_lower_case, fast=False)
    rng = random.Random(random_seed)
    instances = create_training_instances(
        input_files, tokenizer, max_seq_length, dupe_factor, short_seq_prob, masked_lm_prob,
        max_predictions_per_seq, rng, do_whole_word_mask,
    )
    return instances_to_arrays(instances, tokenizer, max_seq_length, max_predictions_per_seq)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_file", required=True, help="text file(s), comma-separated")
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--vocab_file", required=True)
    parser.add_argument("--no_lower_case", dest="do_lower_case", action="store_false")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--max_predictions_per_seq", type=int, default=20)
    parser.add_argument("--masked_lm_prob", type=float, default=0.15)
    parser.add_argument("--short_seq_prob", type=float, default=0.1)
    parser.add_argument("--dupe_factor", type=int, default=10)
    parser.add_argument("--random_seed", type=int, default=12345)
    parser.add_argument("--do_whole_word_mask", action="store_true")
    args = parser.parse_args(argv)
    features = create_reference_arrays(
        args.input_file.split(","), args.vocab_file, args.do_lower_case, args.max_seq_length,
        args.max_predictions_per_seq, args.masked_lm_prob, args.short_seq_prob, args.dupe_factor,
        args.random_seed, args.do_whole_word_mask,
    )
    write_hdf5(features, args.output_file)


if __name__ == "__main__":
    main()
