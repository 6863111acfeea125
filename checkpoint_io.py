"""Checkpoint I/O: every checkpoint layout in and out of the model, and the files around a checkpoint.

* reading: `resolve_checkpoint_file` (a file or a folder), `read_state_dict` (tensors only, never an
  unpickled object; a damaged file is a one-line `CheckpointError`), `load_checkpoint_file` (the whole
  checkpoint object, through the same checks), `normalize_state_dict_keys` (our/NVIDIA,
  Hugging Face and old gamma/beta names to ours);
* loading into a model: `load_checkpoint` → `LoadReport` (vocab rows padded or trimmed to fit;
  strict or backbone-only, never a layer silently left random, never a NaN or infinite weight);
* writing Hugging Face names back: `to_hf_state_dict`;
* the files beside a checkpoint: `load_config_for_checkpoint`, `checkpoint_folder`, `resolve_vocab_file`.

Imports modeling, bert_kernels and input_checks only.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bert_kernels import round_up
from input_checks import InputError
from modeling import BertConfig, BertModel

CONFIG_NAME = "bert_config.json"
WEIGHTS_NAME = "pytorch_model.bin"
VOCAB_NAME = "vocab.txt"

# --------------------------------------------------------------------------------------------
# Layouts and state dicts
# --------------------------------------------------------------------------------------------

BACKBONE_PREFIXES = ("embeddings.", "encoder.", "pooler.")
# Hugging Face → ours. The original only renamed the first two; the MLM transform needs it too.
HF_RENAMES = (
    (".intermediate.dense.", ".intermediate.dense_act."),
    ("pooler.dense.", "pooler.dense_act."),
    ("cls.predictions.transform.dense.", "cls.predictions.transform.dense_act."),
)
VOCAB_KEYS = ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight", "cls.predictions.bias")
_DROPPED_KEYS = ("embeddings.position_ids", "cls.predictions.decoder.bias")
_TIED_KEYS = ("cls.predictions.decoder.weight",)


class CheckpointError(InputError):
    """A checkpoint file that cannot be read or does not fit the model: names the file and what is wrong."""


@dataclass
class LoadReport:
    source: str
    matched: list[str] = field(default_factory=list)
    padded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    initialized: list[str] = field(default_factory=list)  # in the model, not in the checkpoint (left fresh)

    def summary(self) -> str:
        parts = [f"loaded {len(self.matched)} tensors from {self.source}"]
        if self.padded:
            parts.append(f"padded vocab rows of {', '.join(self.padded)}")
        if self.initialized:
            parts.append(f"initialised fresh: {short_key_list(self.initialized)}")
        if self.skipped:
            parts.append(f"ignored from checkpoint: {short_key_list(self.skipped)}")
        return "; ".join(parts)


def short_key_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def resolve_checkpoint_file(path: str | os.PathLike) -> Path:
    """A file, or a folder holding model.safetensors / pytorch_model.bin (HF or fine-tuning output)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", WEIGHTS_NAME):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: folder has neither model.safetensors nor {WEIGHTS_NAME}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's can be a paragraph, or empty)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0].strip().rstrip(".")


def _require_nonempty(file: Path) -> None:
    # torch.load fails on an empty file with an EOFError that has no message at all.
    if file.stat().st_size == 0:
        raise CheckpointError(f"{file}: empty file")


def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """The whole object of a torch checkpoint file (e.g. a ckpt_<step>.pt with optimizer state), loaded
    with weights_only=True (tensors and plain data only); an empty, cut-short or foreign file is one
    `CheckpointError` line."""
    file = Path(path)
    _require_nonempty(file)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged, cut-short or foreign file: the user's to fix
        if "Weights only load failed" in str(exc):
            raise CheckpointError(f"{file}: refused, holds objects other than tensors and plain data "
                                  "(never unpickled)") from None
        raise CheckpointError(f"{file}: truncated or not a checkpoint: {_first_line(exc)}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of any known checkpoint file, never unpickling anything but tensors and plain data."""
    file = resolve_checkpoint_file(path)
    _require_nonempty(file)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file for the user
            raise CheckpointError(f"{file}: truncated or not a safetensors file: {_first_line(exc)}") from None
    obj = load_checkpoint_file(file)
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{file}: holds no state dict of tensors")
    return obj


def normalize_state_dict_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every known layout to ours: `module.` wrappers, gamma/beta, HF `dense` names, no `bert.`."""
    out = {}
    for key, value in sd.items():
        new = key.removeprefix("module.").removeprefix("_orig_mod.")
        if new.endswith(".gamma"):
            new = new[: -len(".gamma")] + ".weight"
        elif new.endswith(".beta"):
            new = new[: -len(".beta")] + ".bias"
        for old, ours in HF_RENAMES:
            new = new.replace(old, ours)
        if new.startswith(BACKBONE_PREFIXES):
            new = "bert." + new
        if new.endswith(_DROPPED_KEYS):
            continue
        out[new] = value
    return out


def _model_keyspace(model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """The model's state dict keyed as in a task model (`bert.` prefix), and the prefix to map back."""
    own = model.state_dict()
    if isinstance(model, BertModel):
        return {"bert." + k: v for k, v in own.items()}, "bert."
    return own, ""


def _fit_vocab_rows(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Pad (or trim unused padding rows of) a vocab-shaped tensor; None when it cannot fit."""
    if key not in VOCAB_KEYS or value.shape[1:] != target.shape[1:]:
        return None
    rows, want = value.size(0), target.size(0)
    if rows < want:
        pad = torch.zeros((want - rows, *value.shape[1:]), dtype=value.dtype)
        return torch.cat([value, pad])
    if rows > want and rows == round_up(want, 8):
        return value[:want]
    return None


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, state_dict: dict | None = None
) -> LoadReport:
    """Load any known checkpoint layout into `model` (ours/NVIDIA, Hugging Face, old gamma/beta).

    strict=True: every model tensor must come from the checkpoint and every checkpoint tensor must be
    used. strict=False (loading a backbone into a task model): heads may be missing or extra, and are
    reported, but a missing backbone tensor or a shape mismatch is still an error — layers are never
    silently left random.
    """
    source = str(path)
    raw = state_dict if state_dict is not None else read_state_dict(path)
    sd = normalize_state_dict_keys(raw)
    own, prefix = _model_keyspace(model)
    report = LoadReport(source=source)
    to_load: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in sd.items():
        if key not in own:
            report.skipped.append(key)
            continue
        target = own[key]
        if value.shape != target.shape:
            fitted = _fit_vocab_rows(key, value, target)
            if fitted is None:
                mismatched.append(f"{key} {tuple(value.shape)} vs model {tuple(target.shape)}")
                continue
            report.padded.append(key)
            value = fitted
        to_load[key] = value.to(target.dtype)
        report.matched.append(key)
    if mismatched:
        raise CheckpointError(f"{source}: shapes do not fit the model config: {short_key_list(mismatched, 4)}")
    bad = first_non_finite(to_load.items())
    if bad is not None:  # a diverged run's weights: every output would be NaN, silently
        raise CheckpointError(f"{source}: tensor {bad} holds NaN or infinite values; refusing non-finite weights")
    tied_ok = "bert.embeddings.word_embeddings.weight" in to_load
    report.initialized = [k for k in own if k not in to_load and not (tied_ok and k in _TIED_KEYS)]
    _check_completeness(report, strict, source)
    model.load_state_dict({k.removeprefix(prefix) if prefix else k: v for k, v in to_load.items()}, strict=False)
    return report


def first_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or inf, or None (one reduction per tensor)."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.detach()).all()):
            return name
    return None


def _check_completeness(report: LoadReport, strict: bool, source: str) -> None:
    if not report.matched:
        raise CheckpointError(f"{source}: no tensor name matches this model (is it a BERT checkpoint?)")
    if strict and (report.initialized or report.skipped):
        problems = []
        if report.initialized:
            problems.append(f"missing keys: {short_key_list(report.initialized)}")
        if report.skipped:
            problems.append(f"unexpected keys: {short_key_list(report.skipped)}")
        raise CheckpointError(f"{source}: {'; '.join(problems)} (pass strict=False to load a backbone into a task "
                              "model)")
    # The pooler is optional: QA and token-classification models never use it, and Hugging Face
    # saves those models without one.
    missing_backbone = [k for k in report.initialized if k.startswith("bert.") and not k.startswith("bert.pooler.")]
    if missing_backbone:
        raise CheckpointError(f"{source}: missing backbone keys: {short_key_list(missing_backbone)}")


def load_config_for_checkpoint(path: str | os.PathLike, config_file: str | os.PathLike | None = None, *,
                               allow_stored: bool = False) -> BertConfig:
    """The config given explicitly, else the bert_config.json / config.json beside a checkpoint, else (with
    `allow_stored`) the config a pretraining checkpoint (ckpt_<step>.pt) carries."""
    if config_file:
        return BertConfig.from_json_file(config_file)
    folder = checkpoint_folder(path)
    for name in (CONFIG_NAME, "config.json"):
        if (folder / name).is_file():
            return BertConfig.from_json_file(folder / name)
    stored = stored_config(path) if allow_stored and Path(path).is_file() else None
    if stored is not None:
        return BertConfig.from_dict(stored, source=f"{path} (stored config)")
    raise InputError(f"{path}: no --config_file given and no {CONFIG_NAME} or config.json beside the checkpoint")


def stored_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The `config` dict a pretraining checkpoint carries, or None (another layout, or no config)."""
    file = Path(path)
    if file.suffix == ".safetensors":
        return None
    obj = load_checkpoint_file(file)
    return obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("config"), dict) else None


# --------------------------------------------------------------------------------------------
# Files beside a checkpoint
# --------------------------------------------------------------------------------------------


def checkpoint_folder(checkpoint: str | os.PathLike) -> Path:
    """The folder of a checkpoint file, or the checkpoint itself when it is a folder."""
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def resolve_vocab_file(vocab_file: str | None, checkpoint: str | os.PathLike) -> Path:
    """--vocab_file, else the vocab.txt beside the checkpoint (our outputs and HF folders have one)."""
    if vocab_file:
        path = Path(vocab_file)
        if not path.is_file():
            raise InputError(f"vocab file not found: {path}")
        return path
    beside = checkpoint_folder(checkpoint) / VOCAB_NAME
    if beside.is_file():
        return beside
    raise InputError(f"{checkpoint}: no --vocab_file given and no {VOCAB_NAME} beside the checkpoint")


# --------------------------------------------------------------------------------------------
# Writing Hugging Face names back
# --------------------------------------------------------------------------------------------


def to_hf_state_dict(sd: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Our names → HF names; vocab rows trimmed to the real vocabulary; the tied decoder bias added."""
    out = {}
    for key, value in normalize_state_dict_keys(sd).items():
        for hf, ours in HF_RENAMES:
            key = key.replace(ours, hf)
        if key in VOCAB_KEYS:
            value = value[:vocab_size]
        out[key] = value.detach().float().contiguous().clone()
    if "cls.predictions.bias" in out:
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    return out


def num_classifier_labels(checkpoint: str | os.PathLike) -> int:
    """Number of labels of a classification checkpoint, read from its classifier weight."""
    weight = normalize_state_dict_keys(read_state_dict(checkpoint)).get("classifier.weight")
    if weight is None:
        raise CheckpointError(f"{checkpoint}: no classifier.weight (is it a classification checkpoint?)")
    return int(weight.shape[0])
