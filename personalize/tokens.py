"""Placeholder tokens: add them to the tokenizer and the text encoder's embedding table, read rows back, undo.

A trigger with n vectors becomes n added tokens named as diffusers names them (`trigger`, `trigger_1`, ...,
`trigger_{n-1}`), so the stock `StableDiffusionPipeline.maybe_convert_prompt` expands "a trigger dog" into
all of them, exactly as after `load_textual_inversion`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from personalize.errors import PersonalizeError


class TokenError(PersonalizeError):
    """A trigger that cannot be added (already in the vocabulary, bad shape)."""


def token_names(trigger: str, n_vectors: int) -> list[str]:
    return [trigger] + [f"{trigger}_{i}" for i in range(1, n_vectors)]


def check_new_tokens(tokenizer, triggers: dict[str, int]) -> None:
    """Refuse triggers (or their `_i` companions) that the tokenizer already knows, before changing anything."""
    vocab = tokenizer.get_vocab()
    for trigger, n in triggers.items():
        taken = [t for t in token_names(trigger, n) if t in vocab]
        if taken:
            raise TokenError(
                f"trigger {taken[0]!r} is already in the tokenizer vocabulary (a word of the model, or an artifact "
                "with the same trigger is loaded); load it under another name with token=..."
            )


def add_tokens(tokenizer, text_encoder, trigger: str, vectors: torch.Tensor) -> list[int]:
    """Add `trigger` with `vectors` (n, width) as new rows; returns the new token ids."""
    n, width = vectors.shape
    table = text_encoder.get_input_embeddings().weight
    if width != table.shape[1]:
        raise TokenError(f"embedding for {trigger!r} has width {width}, text encoder width is {table.shape[1]}")
    check_new_tokens(tokenizer, {trigger: n})
    names = token_names(trigger, n)
    tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    if len(tokenizer) > table.shape[0]:
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[ids] = vectors.to(device=table.device, dtype=table.dtype)
    return ids


@dataclass
class TokenTableSnapshot:
    """The tokenizer and the embedding table before tokens were added; `restore` undoes the addition exactly.

    New tokens take the rows after the tokenizer's last id: spare rows a model may already have there (a table
    padded beyond the vocabulary) are saved; rows appended by resizing are cut off again."""

    tokenizer: Any
    n_rows: int
    spare_rows: torch.Tensor

    @classmethod
    def take(cls, tokenizer, text_encoder) -> "TokenTableSnapshot":
        table = text_encoder.get_input_embeddings().weight
        return cls(copy.deepcopy(tokenizer), table.shape[0], table[len(tokenizer):].detach().clone())

    def restore(self, text_encoder) -> Any:
        """Put the table back as it was and return the saved tokenizer (the caller puts it in place)."""
        if text_encoder.get_input_embeddings().weight.shape[0] != self.n_rows:
            text_encoder.resize_token_embeddings(self.n_rows, mean_resizing=False)
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight[len(self.tokenizer):] = self.spare_rows
        return self.tokenizer
