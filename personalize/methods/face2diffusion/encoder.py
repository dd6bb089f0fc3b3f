"""The trained Face2Diffusion encoder as a file, and the photo -> two word vectors step that inference runs.

    f2d_msid.safetensors       (method f2d_msid, weights "f2d_msid"): `msid.<key>` tensors, metadata msid_config
    face2diffusion.safetensors (method face2diffusion, weights "f2d_encoder"): `msid.<key>` and `mapping.<key>`,
                               metadata msid_config, mapping_config, identifier, inject

Keys after the prefix are the official state-dict names (src/msid.py, src/modules.py), BatchNorm's
`num_batches_tracked` included, so converted official weights and ours load through one strict path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from personalize.artifacts import Artifact, ArtifactError, load_artifact
from personalize.methods.face2diffusion import inject
from personalize.methods.face2diffusion.model import (
    MappingConfig, MappingNetwork, MSIDConfig, MSIDEncoder, config_from_json, config_json,
)

INJECT_RULE = "replace_after_position_embedding"


def prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def load_strict(module: torch.nn.Module, tensors: dict, prefix: str, path) -> None:
    """Load `<prefix>.<key>` tensors with every key and shape checked, naming the first that does not fit."""
    state = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ArtifactError(f"{path}: {prefix} weights do not match the model: missing {missing[:3]}, "
                            f"unexpected {extra[:3]} ({len(missing)} missing, {len(extra)} unexpected)")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ArtifactError(f"{path}: {prefix}.{key} has shape {tuple(value.shape)}, the model expects "
                                f"{tuple(own[key].shape)} (check the {prefix} config in the file's metadata)")
    module.load_state_dict(state, strict=True)


def msid_metadata(msid: MSIDEncoder) -> dict[str, str]:
    return {"msid_config": config_json(msid.config)}


def loaded(source: str | Path | Artifact) -> Artifact:
    return source if isinstance(source, Artifact) else load_artifact(source)


def load_msid(source: str | Path | Artifact) -> MSIDEncoder:
    """The MSID encoder of an f2d_msid or face2diffusion file (or its loaded artifact), frozen, in eval mode."""
    art = loaded(source)
    path = art.path
    if art.method not in ("f2d_msid", "face2diffusion") or "msid_config" not in art.metadata:
        raise ArtifactError(f"{path}: not a Face2Diffusion encoder file (method {art.method!r}); expected the "
                            "artifact of method f2d_msid or face2diffusion")
    msid = MSIDEncoder(config_from_json(MSIDConfig, art.metadata["msid_config"]))
    load_strict(msid, art.weights, "msid", path)
    return msid.eval().requires_grad_(False)


class FaceEncoder(torch.nn.Module):
    """MSID + mapping network: aligned faces (B, 3, S, S) in [-1, 1] -> (first, last), (B, W) each, with
    the null expression (inference_f2d.py always passes none: the prompt decides the expression)."""

    def __init__(self, msid: MSIDEncoder, mapping: MappingNetwork, identifier: str = inject.IDENTIFIER):
        super().__init__()
        self.msid, self.mapping, self.identifier = msid, mapping, identifier

    @property
    def face_size(self) -> int:
        return self.msid.config.img_size

    @property
    def width(self) -> int:
        return self.mapping.config.output_dim

    @torch.no_grad()
    def forward(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = next(self.parameters())
        return self.mapping(self.msid(faces.to(p.device, p.dtype)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return prefixed("msid", self.msid) | prefixed("mapping", self.mapping)

    def metadata(self) -> dict[str, str]:
        return msid_metadata(self.msid) | {"mapping_config": config_json(self.mapping.config),
                                           "identifier": self.identifier, "inject": INJECT_RULE}

    @classmethod
    def load(cls, source: str | Path | Artifact) -> "FaceEncoder":
        art = loaded(source)
        path = art.path
        if art.method != "face2diffusion" or art.kind != "f2d_encoder":
            hint = (" (an f2d_msid file is the first stage only: train the mapping network on it, "
                    "configs/face2diffusion.yaml)") if art.method == "f2d_msid" else ""
            raise ArtifactError(f"{path}: not a Face2Diffusion encoder (method {art.method!r}, weights "
                                f"{art.kind!r}); expected method face2diffusion, weights f2d_encoder{hint}")
        encoder = cls(load_msid(art), MappingNetwork(config_from_json(MappingConfig, art.metadata["mapping_config"])),
                      art.metadata.get("identifier", inject.IDENTIFIER))
        load_strict(encoder.mapping, art.weights, "mapping", path)
        if art.metadata.get("inject", INJECT_RULE) != INJECT_RULE:
            raise ArtifactError(f"{path}: injection rule {art.metadata['inject']!r} is not {INJECT_RULE!r}")
        return encoder.eval().requires_grad_(False)


def describe_configs(meta: dict) -> str:
    return ", ".join(f"{k}={json.loads(meta[k])}" for k in ("msid_config", "mapping_config") if k in meta)
