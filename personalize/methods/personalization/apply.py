"""The personalization bases' artifact kinds, and applying them to a live diffusers pipeline with an exact undo.

Kinds (the artifact's `weights` metadata): `none` (token embeddings only), `delta` (keys `unet.<parameter>` /
`text_encoder.<parameter>` holding the *new values* of the changed parameters only: exact to apply and to undo)
and `lora` (the diffusers/peft layout that diffusers `load_lora_weights` reads; kohya files too).
`apply_parts(pipe, artifact)` adds the embeddings (new token rows), then the delta or the LoRA, and returns a
function that undoes all of it. Everything is checked before anything is changed, so a bad artifact leaves the
pipeline as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from typing import Callable

import torch

from personalize.artifacts import Artifact, ArtifactError, check_width
from personalize.tokens import TokenTableSnapshot, add_tokens, check_new_tokens

Undo = Callable[[], None]
KINDS = ("none", "delta", "lora")
DELTA_PREFIXES = ("unet.", "text_encoder.")


def check_delta_keys(delta: dict) -> dict:
    """A delta names parameters of the UNet or the text encoder: `unet.<name>` / `text_encoder.<name>`."""
    bad = [k for k in delta if not k.startswith(DELTA_PREFIXES)]
    if bad:
        raise ArtifactError(f"weight-delta keys must start with {DELTA_PREFIXES}; got {bad[:3]}")
    return delta


def _delta_targets(pipe, art: Artifact) -> list[tuple[torch.nn.Parameter, torch.Tensor, str]]:
    targets = []
    for key, value in check_delta_keys(art.weights).items():
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


def write_parameters(pairs, add: bool = False) -> Undo:
    """Set each (parameter, value) pair's parameter to `value` (or add `value` to it), in place; the undo
    restores the values saved before. Shared by the `delta` kind and erasure's `diff` kind."""
    saved = []
    with torch.no_grad():
        for param, value in pairs:
            saved.append((param, param.detach().clone()))
            value = value.to(device=param.device, dtype=param.dtype)
            param.add_(value) if add else param.copy_(value)

    def undo() -> None:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)

    return undo


def _apply_delta(targets) -> Undo:
    return write_parameters([(param, value) for param, value, _ in targets])


def _apply_embeddings(pipe, art: Artifact) -> Undo:
    snapshot = TokenTableSnapshot.take(pipe.tokenizer, pipe.text_encoder)
    for trigger, vectors in art.embeddings.items():
        add_tokens(pipe.tokenizer, pipe.text_encoder, trigger, vectors)

    def undo() -> None:
        pipe.tokenizer = snapshot.restore(pipe.text_encoder)

    return undo


def _apply_lora(pipe, art: Artifact) -> Undo:
    # named by the file, the same in every process (str hash() is salted per process)
    digest = hashlib.sha1(str(Path(art.path).resolve()).encode()).hexdigest()[:8]
    adapter = f"a{digest}_{art.name}".replace(".", "_").replace("-", "_")
    try:
        pipe.load_lora_weights(dict(art.weights), adapter_name=adapter)
    except Exception as err:  # diffusers raises ValueError/KeyError for layouts it cannot map
        raise ArtifactError(f"{art.path}: LoRA could not be loaded into this model: {err}") from err

    def undo() -> None:
        pipe.delete_adapters(adapter)
        if not pipe.get_list_adapters():
            pipe.unload_lora_weights()  # strip the peft wrappers: state dict keys as before

    return undo


def apply_parts(pipe, art: Artifact) -> Undo:
    """Apply embeddings, then weights; return one undo that reverses them in the opposite order."""
    if art.kind not in KINDS:
        raise ArtifactError(f"{art.path}: weights kind {art.kind!r} is not one of {art.method}'s kinds {KINDS}")
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    check_width(art, width)
    check_new_tokens(pipe.tokenizer, {t: v.shape[0] for t, v in art.embeddings.items()})
    targets = _delta_targets(pipe, art) if art.kind == "delta" else []
    undos: list[Undo] = []
    try:
        if art.embeddings:
            undos.append(_apply_embeddings(pipe, art))
        if targets:
            undos.append(_apply_delta(targets))
        if art.kind == "lora":
            undos.append(_apply_lora(pipe, art))
    except Exception:
        for undo in reversed(undos):
            undo()
        raise

    def undo_all() -> None:
        for undo in reversed(undos):
            undo()

    return undo_all
