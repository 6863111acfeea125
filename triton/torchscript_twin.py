"""The TorchScript twin of `modeling.py`'s BERT, for `export.py --format ts-script`.

`modeling.py` is written for training and eager inference: its products, dropout and attention go
through `bert_kernels` (Python-side state, packed layouts, activation checkpointing), which
`torch.jit.script` cannot compile. `scriptable(model)` returns a copy of a model whose modules of
those kinds are switched to the classes below: the same parameters, buffers and state-dict names,
with forwards over the padded layout only, written with the ops the eager CPU paths of
`bert_kernels` compute in evaluation (F.linear, F.dropout, F.scaled_dot_product_attention), so
scripted and eager logits agree. Every other module (embeddings, layer norms, the task heads) is
compiled as `modeling.py` writes it.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import modeling
from bert_kernels import padding_mask


class ScriptableLinearActivation(modeling.LinearActivation):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(F.linear(x, self.weight, self.bias))


class ScriptableSelfAttention(modeling.BertSelfAttention):
    """Q, K and V concatenated for one product, then what `bert_kernels.attention` runs in evaluation."""

    def forward(self, x: torch.Tensor, mask: Any) -> torch.Tensor:
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        qkv = F.linear(x, weight, bias)
        dropout_p = self.dropout_p if self.training else 0.0
        b, s = qkv.size(0), qkv.size(1)
        q, k, v = qkv.view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        assert isinstance(mask, torch.Tensor | None)  # the padded layout's mask: refines Any for TorchScript
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return context.transpose(1, 2).reshape(b, s, -1)


class ScriptableEncoder(modeling.BertEncoder):
    """The layer stack over the padded layout (no packing, no activation checkpointing)."""

    def forward(self, x: torch.Tensor, mask: Any, output_all_encoded_layers: bool = False) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        for layer in self.layer:
            x = layer(x, mask)
            if output_all_encoded_layers:
                outputs.append(x)
        return outputs if output_all_encoded_layers else [x]


class ScriptableBertModel(modeling.BertModel):
    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_all_encoded_layers: bool | None = None,
        packed: Any = None,  # accepted for the heads' calls; the twin has the padded layout only
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if output_all_encoded_layers is None:
            # TorchScript cannot read the Python config: None means the last layer only (what every
            # task head asks for).
            output_all_encoded_layers = False
        x = self.embeddings(input_ids, token_type_ids)
        encoded = self.encoder(x, padding_mask(attention_mask), output_all_encoded_layers)
        return encoded, self.pooler(encoded[-1])


# modeling class -> its twin (exact classes: LinearActivation is also a Linear)
TWINS: dict[type, type] = {
    modeling.Dropout: nn.Dropout,
    modeling.Linear: nn.Linear,
    modeling.LinearActivation: ScriptableLinearActivation,
    modeling.BertSelfAttention: ScriptableSelfAttention,
    modeling.BertEncoder: ScriptableEncoder,
    modeling.BertModel: ScriptableBertModel,
}


def scriptable(model: nn.Module) -> nn.Module:
    """A copy of `model` that `torch.jit.script` compiles: each `modeling` module with a twin becomes
    that twin (same attributes, so the same weights and state-dict names); `model` is left as it is."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        replacement = TWINS.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
    return twin
