"""Face2Diffusion's text path (official inference_f2d.py and src/mod.py, re-implemented without the monkey-patch):
the two mapped vectors *replace* the CLIP input hidden states (token + position embedding) at the identifier "f l".

    ids = tokenize(prompt), p = first standalone "f"                       (official: asserts it exists)
    h = text_model.embeddings(ids)                                          # (B, 77, W)
    h[b, p_b], h[b, p_b + 1] = first[b], last[b]                           # no position embedding added to them
    prompt_embeds = final_layer_norm(encoder(h, causal mask))               # (B, 77, W)

The official code writes batch row 0 only; here every row has its own position. The encoder is called with an
explicit 4-D causal mask, which transformers 4.x and 5.x both read (the regression test: with nothing replaced
this path equals `text_encoder(ids)[0]`).
"""

from __future__ import annotations

import torch

from personalize.errors import PersonalizeError
from personalize.methods.blocks import token_ids

IDENTIFIER = "f l"  # the pseudo-word S* (official README: "The identifier S* should be represented as 'f l'")


class IdentifierError(PersonalizeError):
    """A prompt without the identifier, or one the injection cannot place."""


def text_model(text_encoder):
    """The module holding embeddings / encoder / final_layer_norm (`.text_model` in transformers 4.x)."""
    return getattr(text_encoder, "text_model", text_encoder)


def identifier_ids(tokenizer, identifier: str = IDENTIFIER) -> list[int]:
    ids = tokenizer(identifier, add_special_tokens=False).input_ids
    if len(ids) != 2:
        raise IdentifierError(f"the identifier {identifier!r} must be two tokens for the tokenizer, got {len(ids)}")
    return ids


def identifier_positions(tokenizer, prompts: list[str], identifier: str = IDENTIFIER) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (B, 77), p (B,)): p = the first position of the identifier's first token, as in
    inference_f2d.py (any later "f" stays a word). A prompt without the identifier is an error, and so is one
    whose first "f" is not followed by "l" (the official code would silently overwrite whatever follows it)."""
    first_id, last_id = identifier_ids(tokenizer, identifier)
    ids = token_ids(tokenizer, prompts, "cpu")  # (B, 77), padded as the stock pipeline pads
    positions = []
    for prompt, row in zip(prompts, ids.tolist()):
        if first_id not in row[:-2]:
            raise IdentifierError(f"prompt {prompt!r} has no identifier {identifier!r}: Face2Diffusion puts the "
                                  f"face where the prompt says '{identifier}' (e.g. 'a photo of {identifier} "
                                  "smiling'); within the 77-token limit")
        p = row.index(first_id)
        if row[p + 1] != last_id:
            raise IdentifierError(f"prompt {prompt!r}: its first standalone {identifier.split()[0]!r} is not "
                                  f"followed by {identifier.split()[1]!r}; the face goes at the first "
                                  f"'{identifier}', so write that before any other lone "
                                  f"{identifier.split()[0]!r}")
        positions.append(p)
    return ids, torch.tensor(positions)


def causal_mask(n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(1, 1, n, n) additive mask: 0 on and below the diagonal, the dtype's minimum above it."""
    mask = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


def encode(text_encoder, input_ids: torch.Tensor, first: torch.Tensor | None = None,
           last: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
    """The text encoder's last hidden state (B, 77, W), with rows `positions`, `positions + 1` of its input
    hidden states replaced by `first`, `last` (each (B, W)); with no vectors, the plain text path."""
    tm = text_model(text_encoder)
    hidden = tm.embeddings(input_ids=input_ids)  # (B, 77, W) token + position embeddings
    if first is not None:
        rows = torch.arange(len(input_ids), device=hidden.device)
        p = positions.to(hidden.device)
        hidden = hidden.index_put((rows, p), first.to(hidden.dtype))
        hidden = hidden.index_put((rows, p + 1), last.to(hidden.dtype))
    mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device).expand(len(hidden), 1, -1, -1)
    out = tm.encoder(inputs_embeds=hidden, attention_mask=mask)
    out = out[0] if isinstance(out, tuple) else out.last_hidden_state
    return tm.final_layer_norm(out)
