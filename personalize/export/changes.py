"""What an artifact changes on its base model, read off a live pipeline: the method that owns the artifact applies
it (its registry record's `apply`, as `personalize generate` does), and the weights are compared before and after.

This knows no method and no weight kind: a `delta` (new values), an erasure's `diff` and a LoRA all come out the
same way, as differences of named parameters and, for LoRA adapters, their exact factors (peft's `lora_A`/`lora_B`
and scale, as diffusers' `load_lora_weights` placed them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from personalize.artifacts import Artifact, ArtifactError
from personalize.kohya import Factor

PARTS = ("unet", "text_encoder")


@dataclass
class Changes:
    diffs: dict[str, torch.Tensor] = field(default_factory=dict)  # "unet.<param>" -> after - before (float32)
    factors: dict[str, Factor] = field(default_factory=dict)  # "unet.<module>" -> a LoRA adapter, exactly
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # trigger -> (n_vectors, width)

    @property
    def empty(self) -> bool:
        return not (self.diffs or self.factors)


def parameters(sd) -> dict[str, torch.Tensor]:
    """`<part>.<parameter>` -> the parameter of the UNet and the text encoder, under its own name also where a
    peft adapter wraps its layer (`x.base_layer.weight` is `x.weight`); the adapters' own weights are left out."""
    out = {}
    for part in PARTS:
        for name, p in getattr(sd, part).named_parameters():
            if "lora_" not in name:
                out[f"{part}.{name.replace('.base_layer', '')}"] = p
    return out


def adapters(sd) -> dict[str, Factor]:
    """`<part>.<module>` -> the active peft LoRA adapter of that layer (down = lora_A, up = lora_B)."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for part in PARTS:
        for name, m in getattr(sd, part).named_modules():
            if not isinstance(m, LoraLayer):
                continue
            for adapter in m.active_adapters:
                if m.use_dora.get(adapter):
                    raise ArtifactError(f"{part}.{name}: a DoRA adapter has no plain LoRA form to export")
                key = f"{part}.{name}"
                if key in out:
                    raise ArtifactError(f"{key}: two LoRA adapters on one layer; export them one at a time")
                out[key] = Factor(m.lora_A[adapter].weight.detach().float().cpu().clone(),
                                  m.lora_B[adapter].weight.detach().float().cpu().clone(), float(m.scaling[adapter]))
    return out


def read_changes(sd, art: Artifact, apply) -> Changes:
    """Apply `art` to the stock pipeline `sd` with `apply(sd, art) -> undo`, record what changed, undo it."""
    before = {k: p.detach().clone() for k, p in parameters(sd).items()}
    undo = apply(sd, art)
    try:
        after, factors = parameters(sd), adapters(sd)
        diffs = {}
        for key, old in before.items():
            new = after[key].detach()
            if new.shape != old.shape and new.shape[1:] == old.shape[1:]:
                new = new[: old.shape[0]]  # a token table grown by the artifact's new rows: the rows it had
            if not torch.equal(new, old):
                diffs[key] = new.float() - old.float()
    finally:
        undo()
    return Changes(diffs, factors, dict(art.embeddings))


def fold(sd) -> None:
    """Merge every LoRA adapter on `sd` into its layer's weight and remove the adapters (diffusers' `fuse_lora`,
    then `unload_lora_weights`): the pipeline's weights are what it generates with."""
    if adapters(sd):
        sd.fuse_lora()
        sd.unload_lora_weights()
