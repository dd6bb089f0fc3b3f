"""Face2Diffusion stage 1: pretrain the MSID encoder with ArcFace on the concatenated multi-scale vector (F2D Sec.
3.1; the pretraining was never published, issue #5 of the official repo: set, margin and schedule are ours).

Each micro-step: a batch of face crops with person labels, horizontal flips at random, the encoder in train mode
(BatchNorm statistics update), `loss_arcface` of the (B, 4D) vector against one learned centre per person. The
centres are trained but not saved: the artifact is the encoder alone (`encoder.py`), which stage 2 loads frozen.
This stage uses no Stable Diffusion part; the loop still loads `model.pretrained` (the toy world by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from personalize.artifacts import ArtifactContent
from personalize.methods.base import MethodError
from personalize.methods.face2diffusion import data, encoder
from personalize.methods.face2diffusion.losses import loss_arcface
from personalize.methods.face2diffusion.model import MSIDConfig, MSIDEncoder
from personalize.profiles import TOY


@dataclass
class Options:
    name: str = "f2d_msid"
    data: str = TOY  # the bundled face data (profiles.bundled_face_data) or a folder of identities
    # (<person>/<k>.png, face2diffusion/data.py)
    artifact_name: str = "f2d_msid"  # the file written: <artifact_name>.safetensors
    img_size: int = 112  # msid_base_patch8_112 (src/msid.py)
    patch_size: int = 8
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12
    ext_depths: list[int] = field(default_factory=lambda: [2, 5, 8, 11])
    arcface_scale: float = 64.0  # ArcFace's s and m (Deng et al. 2019, Sec. 3); F2D's values: unverified
    arcface_margin: float = 0.5


def msid_config(o) -> MSIDConfig:
    try:
        return MSIDConfig(o.img_size, o.patch_size, o.embed_dim, o.depth, o.num_heads, 4.0, tuple(o.ext_depths))
    except ValueError as err:
        raise MethodError(f"method options of {o.name}: {err}") from err


class ArcFaceHead(torch.nn.Module):
    def __init__(self, classes: int, dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(classes, dim) * 0.01)  # (C, D) one centre per person


class MSIDPretraining:
    def __init__(self, options: Options, config):
        self.o, self.config = options, config
        self.msid_config = msid_config(options)
        if options.arcface_scale <= 0 or not 0 <= options.arcface_margin < 3.14:
            raise MethodError(f"method.arcface_scale={options.arcface_scale} must be > 0 and arcface_margin="
                              f"{options.arcface_margin} in [0, pi)")
        self.source = data.make_source(options.data, None, with_mask=False)  # a bad folder fails before any model is loaded
        if self.source.num_classes < 2:
            raise MethodError(f"method.data={options.data!r} has {self.source.num_classes} person; ArcFace needs >= 2")

    def setup(self, components, config, accelerator) -> None:
        self.device = accelerator.device
        self.msid = MSIDEncoder(self.msid_config).to(self.device).train()
        self.head = ArcFaceHead(self.source.num_classes, self.msid_config.out_dim).to(self.device)
        self.modules = {"msid": self.msid, "arcface": self.head}

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"msid": self.msid, "arcface": self.head}

    def use_modules(self, modules: dict) -> None:
        self.modules = modules

    def dataloader(self, start: int, rank: int, world: int):
        size, t = self.msid_config.img_size, self.config.train
        return data.batches(self.source, t.seed, t.train_batch_size, start, rank, world,
                            lambda samples: data.face_batch(samples, size))

    def training_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        features = self.modules["msid"](batch["faces"].to(self.device))  # (B, 4D)
        head = self.modules["arcface"]
        weight = head.module.weight if hasattr(head, "module") else head.weight
        loss = loss_arcface(features, weight, batch["labels"].to(self.device), self.o.arcface_scale,
                            self.o.arcface_margin)
        return {"loss_arcface": loss}

    def artifact(self) -> ArtifactContent:
        meta = encoder.msid_metadata(self.msid) | {"identities": str(self.source.num_classes),
                                                   "data": self.o.data}
        return ArtifactContent(self.o.artifact_name, {}, encoder.prefixed("msid", self.msid), "f2d_msid", meta)

    def validation_images(self, pipe, prompt, seeds, steps):
        raise MethodError("f2d_msid trains a face encoder and makes no images: leave train.validation_prompt empty")


def build(options: Options, config) -> MSIDPretraining:
    return MSIDPretraining(options, config)
