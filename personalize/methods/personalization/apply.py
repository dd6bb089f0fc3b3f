"""Applying an artifact's parts to a live diffusers pipeline, each with an exact undo.

`apply_parts(pipe, artifact)` adds the artifact's embeddings (new token rows), its weight delta (new values
of named parameters) and its LoRA (diffusers `load_lora_weights`), and returns a function that undoes all of
it. Everything is checked before anything is changed, so a bad artifact leaves the pipeline as it was.
"""

from __future__ import annotations

from typing import Callable

import torch

from personalize.artifacts import Artifact, ArtifactError, check_width
from personalize.tokens import TokenTableSnapshot, add_tokens, check_new_tokens

Undo = Callable[[], None]


def _delta_targets(pipe, art: Artifact) -> list[tuple[torch.nn.Parameter, torch.Tensor, str]]:
    targets = []
    for key, value in art.delta.items():
        module_name, param_name = key.split(".", 1)
        params = dict(getattr(pipe, module_name).named_parameters())
        if param_name not in params:
            raise ArtifactError(f"{art.path}: weight delta names {key!r}, which this {module_name} does not have")
        param = params[param_name]
        if tuple(param.shape) != tuple(value.shape):
            raise ArtifactError(
                f"{art.path}: weight delta {key!r} has shape {tuple(value.shape)}, the loaded model's parameter "
                f"has {tuple(param.shape)}"
            )
        targets.append((param, value, key))
    return targets


def _apply_delta(targets) -> Undo:
    saved = []
    with torch.no_grad():
        for param, value, _ in targets:
            saved.append((param, param.detach().clone()))
            param.copy_(value.to(device=param.device, dtype=param.dtype))

    def undo() -> None:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)

    return undo


def _apply_embeddings(pipe, art: Artifact) -> Undo:
    snapshot = TokenTableSnapshot.take(pipe.tokenizer, pipe.text_encoder)
    for trigger, vectors in art.embeddings.items():
        add_tokens(pipe.tokenizer, pipe.text_encoder, trigger, vectors)

    def undo() -> None:
        pipe.tokenizer = snapshot.restore(pipe.text_encoder)

    return undo


def _apply_lora(pipe, art: Artifact) -> Undo:
    adapter = f"a{abs(hash(art.path)) % 10**8}_{art.name}".replace(".", "_").replace("-", "_")
    try:
        pipe.load_lora_weights(dict(art.lora), adapter_name=adapter)
    except Exception as err:  # diffusers raises ValueError/KeyError for layouts it cannot map
        raise ArtifactError(f"{art.path}: LoRA could not be loaded into this model: {err}") from err

    def undo() -> None:
        pipe.delete_adapters(adapter)
        if not pipe.get_list_adapters():
            pipe.unload_lora_weights()  # strip the peft wrappers: state dict keys as before

    return undo


def apply_parts(pipe, art: Artifact) -> Undo:
    """Apply embeddings, then weights; return one undo that reverses them in the opposite order."""
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    check_width(art, width)
    check_new_tokens(pipe.tokenizer, {t: v.shape[0] for t, v in art.embeddings.items()})
    targets = _delta_targets(pipe, art)
    undos: list[Undo] = []
    try:
        if art.embeddings:
            undos.append(_apply_embeddings(pipe, art))
        if targets:
            undos.append(_apply_delta(targets))
        if art.lora:
            undos.append(_apply_lora(pipe, art))
    except Exception:
        for undo in reversed(undos):
            undo()
        raise

    def undo_all() -> None:
        for undo in reversed(undos):
            undo()

    return undo_all
