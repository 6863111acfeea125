"""SWAG csv reader (the released column layout) and four-choice features."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import shared_path

from input_checks import InputError
from processors import swag

HEADER = ["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
          "ending0", "ending1", "ending2", "ending3", "label"]
ROWS = [
    ["0", "anetv_jkn6uvmqwh4", "3416",
     "Members of the procession walk down the street holding small horn brass instruments. A drum line",
     "Members of the procession walk down the street holding small horn brass instruments.", "A drum line", "gold",
     "passes by walking down the street playing their instruments.", "has heard approaching them.",
     "arrives and they're outside dancing and asleep.", "turns the lead singer watches the performance.", "0"],
    ["1", "lsmdc3001_21_JUMP_STREET-422", "16375", "He rides the motorcycle down the hall and into the elevator. He",
     "He rides the motorcycle down the hall and into the elevator.", "He", "gen",
     "looks at a mirror in the mirror as he watches someone walk through a door.",
     "stops, listening to a cup of coffee with the seated woman, who's standing.",
     "exits the building and rides the motorcycle into a casino where he performs several tricks as people watch.",
     "pulls the bag out of his pocket and hands it to someone's grandma.", "2"],
]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from tokenization import FullTokenizer

    return FullTokenizer(str(shared_path("vocab", "bert-base-uncased-vocab.txt")), do_lower_case=True)


def test_reads_the_released_layout(tmp_path):
    examples = swag.read_swag_examples(write_csv(tmp_path / "train.csv", HEADER, ROWS), is_training=True)
    assert len(examples) == 2
    first, second = examples
    assert first.swag_id == "3416"
    assert first.context_sentence.startswith("Members of the procession") and first.start_ending == "A drum line"
    assert first.endings[0] == "passes by walking down the street playing their instruments." and first.label == 0
    assert second.endings[1].startswith("stops, listening to a cup of coffee")  # quoted field with commas
    assert second.label == 2 and len(second.endings) == 4


def test_test_file_without_labels(tmp_path):
    path = write_csv(tmp_path / "test.csv", HEADER[:-1], [row[:-1] for row in ROWS])
    examples = swag.read_swag_examples(path, is_training=False)
    assert [e.label for e in examples] == [None, None]
    with pytest.raises(InputError, match=r"test.csv:1: header lacks column\(s\) label"):
        swag.read_swag_examples(path, is_training=True)


def test_bad_rows_name_file_and_line(tmp_path):
    path = write_csv(tmp_path / "val.csv", HEADER, [ROWS[0], ROWS[1][:-2]])
    with pytest.raises(InputError, match=r"val.csv:3: expected 12 comma-separated columns, found 10"):
        swag.read_swag_examples(path)
    bad_label = [*ROWS[0][:-1], "7"]
    path = write_csv(tmp_path / "val2.csv", HEADER, [bad_label])
    with pytest.raises(InputError, match=r"val2.csv:2: label '7'"):
        swag.read_swag_examples(path)


def test_choice_features(tokenizer, tmp_path):
    examples = swag.read_swag_examples(write_csv(tmp_path / "train.csv", HEADER, ROWS))
    max_len = 24
    features = swag.convert_examples_to_features(examples, tokenizer, max_len)
    arrays = swag.features_to_arrays(features)
    assert arrays["input_ids"].shape == (2, 4, max_len)
    assert arrays["labels"].tolist() == [0, 2]
    example, feature = examples[1], features[1]
    context = tokenizer.tokenize(example.context_sentence)
    for choice, ending in enumerate(example.endings):
        ending_tokens = tokenizer.tokenize(example.start_ending) + tokenizer.tokenize(ending)
        tokens = tokenizer.convert_ids_to_tokens(feature.input_ids[choice])
        length = sum(feature.input_mask[choice])
        assert tokens[0] == "[CLS]" and tokens[length - 1] == "[SEP]"
        sep = tokens.index("[SEP]")
        # Context and "start + ending" are both prefixes of their full tokenizations, cut to fit.
        assert tokens[1:sep] == context[:sep - 1]
        assert tokens[sep + 1:length - 1] == ending_tokens[:length - sep - 2]
        assert length == min(max_len, len(context) + len(ending_tokens) + 3)
        assert feature.segment_ids[choice][:length] == [0] * (sep + 1) + [1] * (length - sep - 1)
    assert features[0].example_id == "3416"
