"""BERT: configuration, layers, the original's task heads and the pretraining criterion, weight init.

State-dict names follow NVIDIA's BERT for PyTorch (`dense_act`, tied `cls.predictions.decoder.weight`,
vocabulary rows padded to a multiple of 8), so its checkpoints load unchanged; Hugging Face and
Google-era layouts are translated by `checkpoint_io.load_checkpoint`.

This is the model for training and eager inference only. TorchScript export
(triton/export.py --format ts-script) compiles a twin of it, `triton/scriptable.py`: the same modules
and weights with forwards TorchScript can compile (padded layout, F.linear, F.dropout,
F.scaled_dot_product_attention).
"""
from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bert_kernels import (
    PackedSequences,
    PackedTokens,
    StackedParameters,
    attention,
    attention_layout,
    dropout,
    fuse_qkv_products,
    gather_positions,
    linear,
    round_up,
    should_pack,
)
from input_checks import InputError, read_json_file

REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


_WHOLE_NUMBER_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "intermediate_size", "max_position_embeddings", "type_vocab_size")
_PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def check_config_fields(obj: dict[str, Any], source: str = "config") -> None:
    """InputError for a value BertConfig would otherwise truncate (hidden_size 768.5 → 768) or accept out of range."""
    for key in _WHOLE_NUMBER_FIELDS:
        value = obj.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value < 1:
            raise InputError(f"{source}: {key} must be a whole number >= 1, got {value!r}")
    for key in _PROBABILITY_FIELDS:
        value = obj.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise InputError(f"{source}: {key} must be a probability in [0, 1), got {value!r}")
    value = obj.get("initializer_range", 0.02)  # a normal's standard deviation
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < math.inf:
        raise InputError(f"{source}: initializer_range must be a finite number > 0, got {value!r}")
    shadowing = sorted(key for key in obj if hasattr(BertConfig, key))  # fields are instance attributes only
    if shadowing:  # {"to_dict": 1} replaced the method and failed at the first save
        raise InputError(f"{source}: key {shadowing[0]!r} is the name of a BertConfig method or property, "
                         "not a config field")


class BertConfig:
    """The original's `bert_config.json` fields; unknown keys are kept as attributes and written back."""

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        output_all_encoded_layers: bool = False,
        **extra: Any,
    ):
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = int(num_attention_heads)
        self.intermediate_size = int(intermediate_size)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = float(hidden_dropout_prob)
        self.attention_probs_dropout_prob = float(attention_probs_dropout_prob)
        self.max_position_embeddings = int(max_position_embeddings)
        self.type_vocab_size = int(type_vocab_size)
        self.initializer_range = float(initializer_range)
        self.output_all_encoded_layers = bool(output_all_encoded_layers)
        for key, value in extra.items():
            setattr(self, key, value)
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"config: hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.hidden_act not in ACT2FN:
            raise InputError(f"config: hidden_act {self.hidden_act!r} unknown; choose from {', '.join(ACT2FN)}")

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows inside the model: vocab_size raised to a multiple of 8 (30522 -> 30528)."""
        return round_up(self.vocab_size, 8)

    @classmethod
    def from_dict(cls, obj: dict[str, Any], source: str = "config") -> BertConfig:
        missing = [k for k in REQUIRED_CONFIG_KEYS if k not in obj]
        if missing:
            raise InputError(f"{source}: missing required field(s) {', '.join(missing)}")
        check_config_fields(obj, source)
        try:
            return cls(**obj)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise InputError(f"{source}: {str(exc).removeprefix('config: ')}") from None
            raise InputError(f"{source}: bad value ({exc})") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> BertConfig:
        obj = read_json_file(path, "config file")
        if not isinstance(obj, dict):
            raise InputError(f"{path}: expected a JSON object of config fields")
        return cls.from_dict(obj, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        from atomic_io import atomic_write_text

        atomic_write_text(path, self.to_json_string())

    def __repr__(self) -> str:
        return f"BertConfig {self.to_json_string()}"


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

# What the encoder's layers take as attention layout: a boolean padding mask [B, 1, 1, S] or None
# (padded batch), or `PackedTokens` / `PackedSequences` (packed real tokens). Annotated Any because
# TorchScript cannot compile those dataclasses; scripted models get the padded layout only.
AttentionLayout = Any


# "gelu" is the exact (erf) GELU BERT was trained with.
ACT2FN = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "swish": F.silu, "silu": F.silu}


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state-dict names) whose product goes through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class LinearActivation(Linear):
    """`act(x W^T + b)`; named `dense_act` in the original's state dicts."""

    def __init__(self, in_features: int, out_features: int, act: str = "gelu", bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.act_fn = ACT2FN[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(linear(x, self.weight, self.bias))


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """[B, S] ids → [B, S, H]; or packed [T] ids with their `position_ids` → [T, H]."""
        positions = torch.arange(input_ids.size(1), device=input_ids.device) if position_ids is None else position_ids
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self._qkv_stack = StackedParameters()

    def fused_qkv_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Q, K and V weights and biases stacked for one GEMM; the parameters stay separate so
        state-dict names match the original."""
        weight, bias = self._qkv_stack((self.query.weight, self.key.weight, self.value.weight),
                                       (self.query.bias, self.key.bias, self.value.bias))
        return weight, bias

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Q, K and V as [..., heads, head_dim], from one GEMM over the stacked weights or three (see
        `fuse_qkv_products`). The fused product is split by `unbind`: its backward writes the three
        gradients into one buffer (indexing would run three select backwards, each zero-filling a full-size
        buffer)."""
        heads = (self.num_heads, self.head_dim)
        if fuse_qkv_products(x):
            weight, bias = self.fused_qkv_parameters()
            return linear(x, weight, bias).unflatten(-1, (3, *heads)).unbind(-3)
        return tuple(linear(x, part.weight, part.bias).unflatten(-1, heads)
                     for part in (self.query, self.key, self.value))

    def forward(self, x: torch.Tensor, mask: AttentionLayout) -> torch.Tensor:
        dropout_p = self.dropout_p if self.training else 0.0
        q, k, v = self.project_qkv(x)
        if isinstance(mask, (PackedTokens, PackedSequences)):  # x is [T, hidden]: real tokens only
            return attention(q, k, v, mask, dropout_p).flatten(1)
        context = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, dropout_p)
        return context.transpose(1, 2).flatten(2)


class BertResidualOutput(nn.Module):
    """dense → dropout → LayerNorm(x + residual): the post-LN block closing attention and the FFN."""

    def __init__(self, config: BertConfig, in_features: int):
        super().__init__()
        self.dense = Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-12)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertSelfOutput(BertResidualOutput):
    def __init__(self, config: BertConfig):
        super().__init__(config, config.hidden_size)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, mask: AttentionLayout) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense_act = LinearActivation(config.hidden_size, config.intermediate_size, act=config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_act(x)


class BertOutput(BertResidualOutput):
    def __init__(self, config: BertConfig):
        super().__init__(config, config.intermediate_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, mask: AttentionLayout) -> torch.Tensor:
        attended = self.attention(x, mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    """The layer stack. In training, with `unpad` (default) and padding in a CPU batch, the layers run
    on the real tokens (rounded up to a multiple of `pack_multiple` with padding) and the outputs come
    back padded, with zeros at the padding left out (where the padded layout has values no loss
    reads). Evaluation keeps the padded layout, so its outputs match exported (ONNX, TorchScript)
    models and transformers everywhere."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.checkpoint_activations = False
        self.unpad = True
        self.pack_multiple = 64  # see PackedTokens.from_mask

    def forward(self, x: torch.Tensor, mask: AttentionLayout,
                output_all_encoded_layers: bool = False) -> list[torch.Tensor]:
        if isinstance(mask, PackedSequences):  # x is already [T, H]: real tokens only, end to end
            return self._run(x, mask, output_all_encoded_layers)
        if self.unpad and self.training and should_pack(x, mask):
            packed = PackedTokens.from_mask(mask, self.pack_multiple)
            return [packed.pad(out) for out in self._run(packed.pack(x), packed, output_all_encoded_layers)]
        return self._run(x, mask, output_all_encoded_layers)

    def _run(self, x: torch.Tensor, mask: AttentionLayout,
             output_all_encoded_layers: bool) -> list[torch.Tensor]:
        if self.checkpoint_activations and self.training and torch.is_grad_enabled():
            return [self._forward_checkpointed(x, mask)]
        outputs: list[torch.Tensor] = []
        for layer in self.layer:
            x = layer(x, mask)
            if output_all_encoded_layers:
                outputs.append(x)
        return outputs if output_all_encoded_layers else [x]

    def _forward_checkpointed(self, x: torch.Tensor, mask: AttentionLayout) -> torch.Tensor:
        """Recompute activations in chunks of ceil(sqrt(L)) layers, as the original does."""
        chunk = max(1, math.ceil(math.sqrt(len(self.layer))))
        for start in range(0, len(self.layer), chunk):
            x = checkpoint(self._run_layers, x, mask, start, start + chunk, use_reentrant=False)
        return x

    def _run_layers(self, x: torch.Tensor, mask: AttentionLayout, start: int, end: int) -> torch.Tensor:
        for layer in self.layer[start:end]:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense_act = LinearActivation(config.hidden_size, config.hidden_size, act="tanh")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_act(hidden[:, 0])

    def pool_packed(self, hidden: torch.Tensor, packed: PackedSequences) -> torch.Tensor:
        """Packed [T, H] → [B, H] from each sequence's first token ([CLS])."""
        return self.dense_act(hidden.index_select(0, packed.first_token))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense_act = LinearActivation(config.hidden_size, config.hidden_size, act=config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense_act(x))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig, embedding_weight: nn.Parameter):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = Linear(embedding_weight.size(1), embedding_weight.size(0), bias=False)
        self.decoder.weight = embedding_weight  # tied to the word embeddings
        self.bias = nn.Parameter(torch.zeros(embedding_weight.size(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self.transform(x), self.decoder.weight, self.bias)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig, embedding_weight: nn.Parameter):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, embedding_weight)
        self.seq_relationship = Linear(config.hidden_size, 2)

    def forward(self, sequence_output: torch.Tensor, pooled_output: torch.Tensor):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class BertPreTrainedModel(nn.Module):
    """Shared init and helpers. Every Linear (including `dense_act`) gets N(0, initializer_range)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        self.config = config

    def init_bert_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _init_new_modules(self, *modules: nn.Module) -> None:
        for m in modules:
            m.apply(self.init_bert_weights)

    def enable_activation_checkpointing(self, enabled: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, BertEncoder):
                module.checkpoint_activations = enabled


class BertModel(BertPreTrainedModel):
    """Returns `(encoded_layers, pooled_output)`; `encoded_layers[-1]` is the final hidden states."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self.init_bert_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_all_encoded_layers: bool | None = None,
        packed: Any = None,  # PackedSequences or None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """With `packed`, input_ids and token_type_ids are packed [T] (see `batch_packing.pack_batch`),
        attention_mask is unused, and the encoded layers are [T, H]."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if output_all_encoded_layers is None:
            output_all_encoded_layers = self.config.output_all_encoded_layers
        if packed is not None:
            x = self.embeddings(input_ids, token_type_ids, packed.position_ids)
            encoded = self.encoder(x, packed, output_all_encoded_layers)
            return encoded, self.pooler.pool_packed(encoded[-1], packed)
        x = self.embeddings(input_ids, token_type_ids)
        encoded = self.encoder(x, attention_layout(attention_mask), output_all_encoded_layers)
        return encoded, self.pooler(encoded[-1])


class BertForPreTraining(BertPreTrainedModel):
    """MLM + NSP heads. Pass `masked_lm_positions` to compute MLM logits only there (same loss, less work)."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings.weight)
        self._init_new_modules(self.cls.predictions.transform, self.cls.seq_relationship)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        masked_lm_positions: torch.Tensor | None = None,
        packed: PackedSequences | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """With `packed` (ids packed [T], see `batch_packing.pack_batch`), masked_lm_positions [B, P] are
        packed indices and must be given."""
        encoded, pooled = self.bert(input_ids, token_type_ids, attention_mask, output_all_encoded_layers=False,
                                    packed=packed)
        sequence = encoded[-1]
        if packed is not None:
            # [T, H] at [B, P] packed indices → [B, P, H] (index_select: its backward is one index_add)
            sequence = sequence.index_select(0, masked_lm_positions.reshape(-1)).view(*masked_lm_positions.shape, -1)
        elif masked_lm_positions is not None:
            sequence = gather_positions(sequence, masked_lm_positions)
        return self.cls(sequence, pooled)


class BertPretrainingCriterion(nn.Module):
    """MLM cross-entropy (labels −1 ignored) + NSP cross-entropy, computed in fp32."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(
        self,
        prediction_scores: torch.Tensor,
        seq_relationship_score: torch.Tensor,
        masked_lm_labels: torch.Tensor,
        next_sentence_labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mlm = F.cross_entropy(
            prediction_scores.reshape(-1, prediction_scores.size(-1)).float(), masked_lm_labels.reshape(-1),
            ignore_index=-1
        )
        nsp = F.cross_entropy(seq_relationship_score.reshape(-1, 2).float(), next_sentence_labels.reshape(-1))
        return mlm + nsp, mlm, nsp


class BertForMaskedLM(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = nn.Module()
        self.cls.predictions = BertLMPredictionHead(config, self.bert.embeddings.word_embeddings.weight)
        self._init_new_modules(self.cls.predictions.transform)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, masked_lm_labels=None):
        encoded, _ = self.bert(input_ids, token_type_ids, attention_mask, output_all_encoded_layers=False)
        scores = self.cls.predictions(encoded[-1])
        if masked_lm_labels is None:
            return scores
        return F.cross_entropy(scores.reshape(-1, scores.size(-1)).float(), masked_lm_labels.reshape(-1),
                               ignore_index=-1)


class BertForNextSentencePrediction(BertPreTrainedModel):
    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = nn.Module()
        self.cls.seq_relationship = Linear(config.hidden_size, 2)
        self._init_new_modules(self.cls.seq_relationship)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, next_sentence_label=None):
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask, output_all_encoded_layers=False)
        scores = self.cls.seq_relationship(pooled)
        if next_sentence_label is None:
            return scores
        return F.cross_entropy(scores.float(), next_sentence_label.reshape(-1))


class BertForSequenceClassification(BertPreTrainedModel):
    """Pooled output → dropout → `classifier`; returns logits [B, num_labels] (loss outside, as the original)."""

    def __init__(self, config: BertConfig, num_labels: int):
        super().__init__(config)
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, num_labels)
        self._init_new_modules(self.classifier)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None):
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask, output_all_encoded_layers=False)
        return self.classifier(self.dropout(pooled))


class BertForMultipleChoice(BertPreTrainedModel):
    """Inputs [B, C, S]; returns [B, C] scores, or the loss when labels are given."""

    def __init__(self, config: BertConfig, num_choices: int):
        super().__init__(config)
        self.num_choices = num_choices
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, 1)
        self._init_new_modules(self.classifier)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None):
        flat = [t.reshape(-1, t.size(-1)) if t is not None else None
                for t in (input_ids, token_type_ids, attention_mask)]
        _, pooled = self.bert(*flat, output_all_encoded_layers=False)
        scores = self.classifier(self.dropout(pooled)).view(-1, self.num_choices)
        if labels is None:
            return scores
        return F.cross_entropy(scores.float(), labels)


class BertForTokenClassification(BertPreTrainedModel):
    def __init__(self, config: BertConfig, num_labels: int):
        super().__init__(config)
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, num_labels)
        self._init_new_modules(self.classifier)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None):
        encoded, _ = self.bert(input_ids, token_type_ids, attention_mask, output_all_encoded_layers=False)
        logits = self.classifier(self.dropout(encoded[-1]))
        if labels is None:
            return logits
        active = labels.clone()
        if attention_mask is not None:
            active[attention_mask == 0] = -100
        return F.cross_entropy(logits.reshape(-1, self.num_labels).float(), active.reshape(-1), ignore_index=-100)


class BertForQuestionAnswering(BertPreTrainedModel):
    """Returns (start_logits, end_logits), each [B, S]."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.qa_outputs = Linear(config.hidden_size, 2)
        self._init_new_modules(self.qa_outputs)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None):
        encoded, _ = self.bert(input_ids, token_type_ids, attention_mask, output_all_encoded_layers=False)
        logits = self.qa_outputs(encoded[-1])
        start, end = logits.unbind(-1)
        return start, end
