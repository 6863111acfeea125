"""Task data for fine-tuning: SQuAD (`squad`, `squad_metrics`), GLUE (`glue`) and SWAG (`swag`).

Readers turn the released file layouts into examples, converters turn examples into fixed-length
BERT features, and the metric modules score predictions as the official tools do. Submodules are
imported on demand (`from processors import squad`), so importing the package costs nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def tokenize_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[str]]:
    """WordPieces of each text, through the tokenizer's batch call when it has one (same tokens)."""
    batch = getattr(tokenizer, "tokenize_batch", None)
    if batch is not None:
        return list(batch(list(texts)))
    return [tokenizer.tokenize(text) for text in texts]
