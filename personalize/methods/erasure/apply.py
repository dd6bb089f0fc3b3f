"""Applying an erasure artifact to a live diffusers pipeline, with an exact undo.

Kind `diff` (the artifact's `weights` metadata): keys `unet.<parameter>` holding *differences* to the base's
values, added on apply. Differences compose: several erasures, or an erasure under a LoRA or an embedding, add up
in any order. (A `delta` artifact, DreamBooth's, holds new values and replaces what it names: apply it first.)
Everything is checked before anything changes, so a bad artifact leaves the pipeline as it was.
"""

from __future__ import annotations

import torch

from personalize.artifacts import Artifact, ArtifactError
from personalize.methods.personalization.apply import write_parameters

KINDS = ("diff",)


def _targets(pipe, art: Artifact) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    params = dict(pipe.unet.named_parameters())
    targets = []
    for key, value in art.weights.items():
        name = key.removeprefix("unet.")
        if not key.startswith("unet.") or name not in params:
            raise ArtifactError(f"{art.path}: erasure weight {key!r} is not a parameter of this UNet "
                                f"(expected unet.<parameter name>)")
        if tuple(params[name].shape) != tuple(value.shape):
            raise ArtifactError(f"{art.path}: erasure weight {key!r} has shape {tuple(value.shape)}, the loaded "
                                f"model's parameter has {tuple(params[name].shape)}")
        targets.append((params[name], value))
    return targets


def apply_erasure(pipe, art: Artifact):
    """Add the artifact's differences to the UNet; return the undo (restores the values saved before)."""
    if art.kind not in KINDS:
        raise ArtifactError(f"{art.path}: weights kind {art.kind!r} is not one of {art.method}'s kinds {KINDS}")
    if art.embeddings:  # erasure trains no token; a file that lists some was edited or merged by hand
        raise ArtifactError(f"{art.path}: an erasure file holds UNet differences only, but it also lists "
                            f"embeddings {sorted(art.embeddings)}; load them from their own embedding file")
    return write_parameters(_targets(pipe, art), add=True)


def describe_erasure(art) -> dict:
    """What the app shows of an erasure file: the concepts it erases; the comparison shows the images without it."""
    concepts = art.metadata.get("concepts", "")
    return {"shows": f"erases: {concepts}", "compare": True} if concepts else {}
