"""Convert checkpoints between our/NVIDIA layout, Hugging Face folders and Google's TF checkpoints.

  python convert_checkpoint.py --to_hf ckpt_7038.pt OUT_DIR --config_file bert_config.json --vocab_file vocab.txt
  python convert_checkpoint.py --from_hf HF_DIR OUT.pt
  python convert_checkpoint.py --from_tf bert_model.ckpt OUT.pt --config_file bert_config.json   (needs tensorflow)

The HF folder (config.json, model.safetensors, vocab.txt) loads with
`transformers.BertForPreTraining.from_pretrained` (or the task class matching the heads) with no missing keys.

Everything is checked before anything is written: every tensor must fit the config (shapes, layer
count, vocabulary rows), no layer the output's architecture needs may be missing, the vocab file
must exist and the output path must be writable. Otherwise the converter exits 2 with one line and
writes nothing (transformers would silently initialise a missing layer at random).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

import modeling
from atomic_io import atomic_path, atomic_torch_save, atomic_write_json
from checkpoint_io import (
    VOCAB_KEYS,
    load_checkpoint,
    load_config_for_checkpoint,
    normalize_state_dict_keys,
    read_state_dict,
    resolve_vocab_file,
    short_key_list,
    to_hf_state_dict,
)
from input_checks import InputError, check_output_dir, check_output_file, run_main
from modeling import BertConfig

# transformers builds these without a pooler, so a checkpoint without one is complete for them.
_ARCHITECTURES_WITHOUT_POOLER = ("BertForQuestionAnswering", "BertForMaskedLM")


def hf_architecture(keys: set[str]) -> tuple[str, dict]:
    """The transformers class that owns these heads, and the config fields it needs."""
    if "qa_outputs.weight" in keys:
        return "BertForQuestionAnswering", {}
    if "cls.seq_relationship.weight" in keys and "cls.predictions.bias" in keys:
        return "BertForPreTraining", {}
    if "cls.predictions.bias" in keys:
        return "BertForMaskedLM", {}
    return "BertModel", {}


def checkpoint_architecture(sd: dict[str, torch.Tensor]) -> tuple[str, dict]:
    """The transformers class for a state dict (our or HF names), and the config fields it needs."""
    keys = set(sd)
    if "classifier.weight" in keys:
        num_labels = sd["classifier.weight"].shape[0]
        if num_labels > 1 or "bert.pooler.dense.weight" in keys or "bert.pooler.dense_act.weight" in keys:
            return "BertForSequenceClassification", {"num_labels": num_labels}
        return "BertForMultipleChoice", {}
    return hf_architecture(keys)


def _model_for(architecture: str, config: BertConfig, extra: dict) -> torch.nn.Module:
    """Our model of that architecture, on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        if architecture == "BertForSequenceClassification":
            return modeling.BertForSequenceClassification(config, extra["num_labels"])
        if architecture == "BertForMultipleChoice":
            return modeling.BertForMultipleChoice(config, 4)
        return getattr(modeling, architecture)(config)


def check_fits_config(sd: dict[str, torch.Tensor], config: BertConfig, source: str | os.PathLike) -> str:
    """InputError unless every tensor fits `config` and the architecture's layers are all there.

    Returns the architecture. Vocabulary tensors must have the config's rows (or those rows padded
    to a multiple of 8): fewer rows would be written against a larger vocab_size.
    """
    sd = normalize_state_dict_keys(sd)
    for key in VOCAB_KEYS:
        if key in sd and sd[key].shape[0] not in (config.vocab_size, config.padded_vocab_size):
            raise InputError(f"{source}: {key} has {sd[key].shape[0]} rows but the config says "
                             f"vocab_size {config.vocab_size}")
    architecture, extra = checkpoint_architecture(sd)
    model = _model_for(architecture, config, extra)
    with warnings.catch_warnings():  # loading into meta tensors copies nothing, by design
        warnings.simplefilter("ignore")
        report = load_checkpoint(model, source, strict=False, state_dict=sd)
    if report.skipped:
        raise InputError(f"{source}: tensors the config has no place for (another num_hidden_layers?): "
                         f"{short_key_list(report.skipped, 4)}")
    missing = [k for k in report.initialized
               if not (k.startswith("bert.pooler.") and architecture in _ARCHITECTURES_WITHOUT_POOLER)]
    if missing:
        raise InputError(f"{source}: {architecture} needs tensors the checkpoint lacks: "
                         f"{short_key_list(missing, 4)}")
    return architecture


def hf_config_dict(config: BertConfig, architecture: str, extra: dict) -> dict:
    fields = (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
        "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
        "initializer_range",
    )
    out = {k: getattr(config, k) for k in fields}
    out.update(model_type="bert", architectures=[architecture], layer_norm_eps=1e-12, pad_token_id=0,
               position_embedding_type="absolute", tie_word_embeddings=True, **extra)
    return out


def convert_to_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, config: BertConfig | None = None,
                  vocab_file: str | os.PathLike | None = None, config_file: str | os.PathLike | None = None,
                  find_vocab: bool = False) -> Path:
    """Write an HF folder from any checkpoint `load_checkpoint` understands. With `find_vocab` and no
    `vocab_file`, the vocab.txt beside the checkpoint is copied, and its absence is an error."""
    from safetensors.torch import save_file

    # Everything that can be wrong is checked before the first byte is written.
    if vocab_file and not Path(vocab_file).is_file():
        raise InputError(f"vocab file not found: {vocab_file}")
    out = check_output_dir(out_dir, "OUT_DIR")
    if config is None:
        config = load_config_for_checkpoint(checkpoint, config_file)
    raw = read_state_dict(checkpoint)
    check_fits_config(raw, config, checkpoint)
    if find_vocab and not vocab_file:  # a folder without vocab.txt loads as a model but not as a tokenizer
        vocab_file = resolve_vocab_file(None, checkpoint)
    sd = to_hf_state_dict(raw, config.vocab_size)
    if "cls.predictions.decoder.weight" in sd:
        # The tied matrix is stored once; transformers re-ties it from the word embeddings on load.
        del sd["cls.predictions.decoder.weight"]
    arch, extra = checkpoint_architecture(sd)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt"})
    atomic_write_json(out / "config.json", hf_config_dict(config, arch, extra), indent=2)
    if vocab_file:
        with atomic_path(out / "vocab.txt") as tmp:
            shutil.copyfile(vocab_file, tmp)
    return out


def convert_from_hf(hf_dir: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """HF folder → `{'model': state_dict}` in our names, plus bert_config.json beside it."""
    check_output_file(out_file, "OUT_PT")
    config = load_config_for_checkpoint(hf_dir)
    sd = normalize_state_dict_keys(read_state_dict(hf_dir))
    check_fits_config(sd, config, hf_dir)
    if "bert.embeddings.word_embeddings.weight" in sd and "cls.predictions.bias" in sd:
        sd.setdefault("cls.predictions.decoder.weight", sd["bert.embeddings.word_embeddings.weight"])
    atomic_torch_save({"model": sd}, out_file)
    base = BertConfig.from_dict({k: v for k, v in config.to_dict().items() if k in _ORIGINAL_CONFIG_FIELDS})
    base.to_json_file(Path(out_file).parent / "bert_config.json")
    return Path(out_file)


_ORIGINAL_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range",
)


def tf_variable_to_key(name: str) -> str | None:
    """Google TF variable name → our state-dict key (None for optimizer slots and step counters)."""
    if any(part in name for part in ("adam_m", "adam_v", "global_step", "AdamWeightDecayOptimizer")):
        return None
    parts = name.split("/")
    out = []
    for part in parts:
        if part.startswith("layer_") and part[6:].isdigit():
            out += ["layer", part[6:]]
        elif part in ("kernel", "gamma", "output_weights"):
            out.append("weight")
        elif part in ("beta", "output_bias"):
            out.append("bias")
        elif part.endswith("_embeddings"):
            out += [part, "weight"]
        else:
            out.append(part)
    key = ".".join(out)
    key = key.replace("cls.predictions.output.weight", "cls.predictions.decoder.weight")
    key = key.replace("cls.predictions.weight", "cls.predictions.decoder.weight")
    key = key.replace("cls.seq_relationship.weight", "cls.seq_relationship.weight")
    return key


def convert_from_tf(tf_checkpoint: str, out_file: str | os.PathLike, config_file: str | os.PathLike) -> Path:
    try:
        import tensorflow as tf  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise InputError("--from_tf needs tensorflow, which is not installed (pip install tensorflow-cpu)") from None
    check_output_file(out_file, "OUT_PT")
    config = BertConfig.from_json_file(config_file)
    sd = {}
    for name, _shape in tf.train.list_variables(tf_checkpoint):
        key = tf_variable_to_key(name)
        if key is None:
            continue
        array = np.asarray(tf.train.load_variable(tf_checkpoint, name))
        if name.endswith("/kernel"):
            array = array.T
        sd[key] = torch.from_numpy(np.ascontiguousarray(array))
    sd = normalize_state_dict_keys(sd)
    check_fits_config(sd, config, tf_checkpoint)
    atomic_torch_save({"model": sd}, out_file)
    config.to_json_file(Path(out_file).parent / "bert_config.json")
    return Path(out_file)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--to_hf", nargs=2, metavar=("CHECKPOINT", "OUT_DIR"), help="ours/NVIDIA → Hugging Face folder")
    mode.add_argument("--from_hf", nargs=2, metavar=("HF_DIR", "OUT_PT"), help="Hugging Face folder → ours")
    mode.add_argument("--from_tf", nargs=2, metavar=("TF_CKPT", "OUT_PT"), help="Google TF checkpoint → ours")
    p.add_argument("--config_file", help="bert_config.json (default: the one beside the checkpoint)")
    p.add_argument("--vocab_file", help="vocab.txt to copy into the Hugging Face folder (default: the one beside "
                                        "the checkpoint; an error when there is none, unless --no_vocab)")
    p.add_argument("--no_vocab", action="store_true", help="--to_hf: write the weights and config only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.to_hf:
        out = convert_to_hf(args.to_hf[0], args.to_hf[1], config_file=args.config_file, vocab_file=args.vocab_file,
                            find_vocab=not args.no_vocab)
    elif args.from_hf:
        out = convert_from_hf(*args.from_hf)
    else:
        if not args.config_file:
            raise InputError("--from_tf needs --config_file (Google's bert_config.json)")
        out = convert_from_tf(args.from_tf[0], args.from_tf[1], args.config_file)
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    run_main(main)
