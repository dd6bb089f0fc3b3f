"""Face2Diffusion stage 2: train the mapping network f_map on a frozen Stable Diffusion and a frozen MSID encoder
(F2D Sec. 3.2-3.3; inference_f2d.py loads only msid.pt and mapping.pt on stock SD v1-4, so nothing else trains).

Each micro-step, for a batch of photos x with face masks M and expression vectors v_exp:
    idvec = MSID(face crop)                                   # (B, 4D) frozen, eval mode
    e = v_exp or null_exp, per sample (expression guidance, `p_uncond`)
    first, last = f_map(idvec, e)                             # (B, W) each
    c* = text encoder of `prompt` ("a photo of f l") with the two vectors at "f l"      (inject.py)
    z_t = add_noise(VAE(x), eps, t);  eps_cls = UNet(z_t, t, `class_prompt`) without grad
    loss_cgdr = || M * eps + (1 - M) * eps_cls - UNet(z_t, t, c*) ||^2                 (losses.py)
`cgdr: false` is the paper's "Rec." ablation (plain reconstruction), `expression_guidance: false` feeds no
expression (the tokens must carry it). The artifact holds MSID and f_map together (`encoder.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from personalize.artifacts import ArtifactContent
from personalize.methods import blocks
from personalize.methods.base import MethodError
from personalize.methods.face2diffusion import data, encoder, inject
from personalize.methods.face2diffusion.losses import expression_keep, loss_cgdr
from personalize.methods.face2diffusion.model import MappingConfig, MappingNetwork
from personalize.profiles import TOY, shipped_msid


@dataclass
class Options:
    name: str = "face2diffusion"
    msid: str = ""  # the stage-1 file (method f2d_msid), a face2diffusion file whose encoder is reused, or
    # the bundled face data's name: its shipped stage-1 encoder (profiles.shipped_msid)
    data: str = TOY  # the bundled face data (profiles.bundled_face_data) or a folder of identities with masks
    # and expressions (data.py)
    artifact_name: str = "face2diffusion"
    prompt: str = "a photo of f l"  # "A photo of S*" (F2D Fig. 2)
    class_prompt: str = "a photo of a person"  # CGDR's class prompt (F2D Fig. 2)
    cgdr: bool = True
    mask_dilation: int = 0  # CGDR's face mask widened by this many pixels before it is area-downsampled to the
    # latent grid (ours, unverified: the paper's mask source is not published; a face parser's mask "dilated
    # slightly" keeps the face's outline, which a partial latent cell otherwise sends toward the class prompt)
    expression_guidance: bool = True
    p_uncond: float = 0.5  # expression dropped to null_exp this often (unverified: not in the release)
    middle_dim: int = 1536  # IMG2TEXTwithEXP(1536, 1536, 768, n_layer=2, dropout=0.1, exp_dim=64)
    n_layer: int = 2
    dropout: float = 0.1
    exp_dim: int = 64
    id_noise: float = 0.0  # std of Gaussian noise added to the (layer-normed) MSID vector while training (ours,
    # not in the paper: a smoother mapping for identities between the training ones)
    validation_face: str = ""  # a face photo for the validation images (default: the data's, data.py)


class MappingTraining:
    def __init__(self, options: Options, config):
        o = self.o = options
        self.config = config
        if not o.msid:
            raise MethodError("method.msid is empty: give the stage-1 encoder file (personalize train --config "
                              "configs/f2d_msid.yaml writes f2d_msid.safetensors)")
        if o.mask_dilation < 0:
            raise MethodError(f"method.mask_dilation={o.mask_dilation}: expected a number of pixels >= 0")
        if o.id_noise < 0:
            raise MethodError(f"method.id_noise={o.id_noise}: expected a standard deviation >= 0")
        if not 0.0 <= o.p_uncond <= 1.0:
            raise MethodError(f"method.p_uncond={o.p_uncond}: expected a probability in [0, 1]")
        if inject.IDENTIFIER not in o.prompt:
            raise MethodError(f"method.prompt={o.prompt!r} must contain the identifier '{inject.IDENTIFIER}'")
        self.msid = encoder.load_msid(shipped_msid(o.msid))  # fails before the base loads
        self.source = data.make_source(o.data, o.exp_dim if o.expression_guidance else None)

    def setup(self, components, config, accelerator) -> None:
        c, o = components, self.o
        self.c, self.accelerator = c, accelerator
        self.device, self.dtype = blocks.frozen_setup(c, accelerator)
        width = c.text_encoder.get_input_embeddings().weight.shape[1]
        self.mapping = MappingNetwork(MappingConfig(self.msid.config.out_dim, o.middle_dim, width, o.n_layer,
                                                    o.dropout, o.exp_dim)).to(self.device)
        blocks.place((c.vae, c.unet, c.text_encoder), self.device, self.dtype)
        self.msid.to(self.device)
        self.latents = blocks.LatentEncoder(c.vae, self.device, self.dtype)
        self.ids, self.positions = inject.identifier_positions(c.tokenizer, [o.prompt])
        self.ids = self.ids.to(self.device)
        with torch.no_grad():
            self.class_cond = blocks.encode_prompts(c.tokenizer, c.text_encoder, [o.class_prompt], self.device)
        self.modules = {"mapping": self.mapping}
        self.resolution = blocks.train_resolution(config, c.unet, c.vae)
        self.latent_size = self.resolution // blocks.vae_factor(c.vae)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"mapping": self.mapping}

    def use_modules(self, modules: dict) -> None:
        self.modules = modules

    def dataloader(self, start: int, rank: int, world: int):
        t, face_size = self.config.train, self.msid.config.img_size
        return data.batches(self.source, t.seed, t.train_batch_size, start, rank, world,
                            lambda samples: data.collate(samples, self.resolution, face_size, self.latent_size,
                                                         self.o.mask_dilation))

    def condition(self, faces: torch.Tensor, exp: torch.Tensor | None, keep: torch.Tensor | None,
                  gen: torch.Generator | None = None) -> torch.Tensor:
        """c* for each face: (B, 77, W); `gen` draws the training noise of `id_noise`."""
        with torch.no_grad():
            idvec = self.msid(faces.to(self.device))  # (B, 4D)
            if gen is not None and self.o.id_noise > 0:
                idvec = idvec + self.o.id_noise * torch.randn(idvec.shape, generator=gen).to(self.device)
        first, last = self.modules["mapping"](idvec, exp, keep)  # (B, W) each
        n = len(faces)
        with self.accelerator.autocast():
            return inject.encode(self.c.text_encoder, self.ids.expand(n, -1), first, last,
                                 self.positions.expand(n)).to(self.dtype)

    def training_step(self, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        o, c = self.o, self.c
        n = len(batch["pixels"])
        latents = self.latents(batch["pixels"], list(range(n)), gen)  # (B, C, h, w)
        noised = blocks.noise_and_target(c.scheduler, latents, gen)
        exp = keep = None
        if o.expression_guidance:
            exp, keep = batch["exp"].to(self.device), expression_keep(n, o.p_uncond, gen).to(self.device)
        cond = self.condition(batch["faces"], exp, keep, gen)
        pred = blocks.predict(c.unet, noised.noisy, noised.timesteps, cond, self.accelerator)
        mask = batch["mask"].to(self.device) if o.cgdr else torch.ones_like(batch["mask"]).to(self.device)
        with torch.no_grad():
            teacher = blocks.predict(c.unet, noised.noisy, noised.timesteps, self.class_cond.expand(n, -1, -1)
                                     .to(self.dtype), self.accelerator) if o.cgdr else noised.target
        return {"loss_cgdr": loss_cgdr(pred, noised.target, teacher, mask),
                "face_fraction": mask.mean().detach()}

    def face_encoder(self) -> encoder.FaceEncoder:
        m = self.modules["mapping"]
        return encoder.FaceEncoder(self.msid, getattr(m, "module", m))

    def validation_images(self, pipe, prompt, seeds, steps):
        from personalize.methods.face2diffusion.edit import FaceEdit

        photo = self.o.validation_face or self.source.validation_photo()
        self.mapping.eval()
        try:
            edit = FaceEdit(self.face_encoder(), [photo])
            return [g.image for g in pipe.generate(prompt, seed=list(seeds), steps=steps, edits=[edit])]
        finally:
            self.mapping.train()

    def artifact(self) -> ArtifactContent:
        enc = self.face_encoder()
        meta = enc.metadata() | {"msid_source": self.o.msid, "data": self.o.data, "cgdr": str(self.o.cgdr),
                                 "mask_dilation": str(self.o.mask_dilation),
                                 "expression_guidance": str(self.o.expression_guidance)}
        return ArtifactContent(self.o.artifact_name, {}, enc.tensors(), "f2d_encoder", meta)


def build(options: Options, config) -> MappingTraining:
    return MappingTraining(options, config)
