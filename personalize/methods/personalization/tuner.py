"""Personalization tuning shared by the four bases: textual inversion, DreamBooth, Custom Diffusion, LoRA.

A `Tuner` is configured by a `TunerSpec` (what trains) and implements the method protocol of
`personalize.methods.base`.
The step is the standard denoising objective of latent diffusion (Rombach et al. 2022, eq. 2), with
prior preservation (DreamBooth, Ruiz et al. 2023, eq. 2: instance and class samples in one batch), Custom
Diffusion's masked loss, Min-SNR weighting (Hang et al. 2023) and offset noise as in diffusers' example scripts.
Regularizers (ClassDiffusion, SuDe) extend `training_step` through `extra_losses(ctx)`. The step is built from
the shared blocks of `personalize.methods.blocks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from personalize.artifacts import ArtifactContent
from personalize.data import ConceptImages, PositionSampler, collate, examples_from_folder
from personalize.methods import blocks
from personalize.methods.base import MethodError
from personalize.methods.personalization.apply import check_delta_keys
from personalize.methods.personalization.parts import (
    TokenRows, add_custom_diffusion, add_lora, custom_diffusion_delta, lora_state_dict,
)
from personalize.methods.personalization.prior import class_examples

UNET_MODES = ("frozen", "full", "crossattn_kv", "crossattn", "lora")


@dataclass
class TunerSpec:
    name: str
    tokens: list[tuple[str, str, int]] = field(default_factory=list)  # (trigger, initializer, n_vectors)
    unet: str = "frozen"
    train_text_encoder: bool = False
    lora_rank: int = 4
    lora_alpha: float | None = None  # None: = rank
    lora_targets: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    masked_loss: bool = False
    rescale_aug: bool = False
    templates: list[str] | None = None  # captions when data.instance_prompt is unset
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class StepContext:
    """What one forward computed, for regularizers: latents, noise, timesteps, conditioning, prediction."""

    latents: torch.Tensor  # (B, 4, h, w)
    noise: torch.Tensor
    timesteps: torch.Tensor  # (B,)
    noisy: torch.Tensor
    cond: torch.Tensor  # (B, 77, width)
    pred: torch.Tensor
    target: torch.Tensor
    is_prior: torch.Tensor  # (B,) bool
    generator: torch.Generator
    captions: list[str] = field(default_factory=list)  # the batch's captions, `{}` filled with the trigger


@dataclass(frozen=True)
class BaseContext:
    """What a regularizer may use of its personalization base, set up once (not the whole `Tuner`)."""

    tokenizer: object
    text_encoder: torch.nn.Module  # unwrapped: a gradient through it still reaches the token rows
    unet: torch.nn.Module  # unwrapped: for extra no-gradient calls (SuDe's category prediction)
    scheduler: object
    rows: TokenRows | None  # the base's new token rows (None for a base without a token)
    device: torch.device
    train_text_encoder: bool  # the base trains text-encoder layers: text features move every step
    autocast: Callable  # the accelerator's autocast context, for extra UNet calls
    encode_text: Callable[[list[str]], torch.Tensor]  # captions -> (B, 77, width), the base's own text path


class Regularizer(Protocol):
    """An extra loss on top of a base (ClassDiffusion's SPL, SuDe): set up after the base, called each step."""

    def setup(self, base: BaseContext) -> None: ...
    def losses(self, base: BaseContext, ctx: StepContext) -> dict[str, torch.Tensor]: ...  # "loss_*" + stats
    def loss_weights(self) -> dict[str, float]: ...


class Tuner:
    """The method protocol for personalization bases (see module docstring)."""

    def __init__(self, spec: TunerSpec, config, regularizers: tuple[Regularizer, ...] = ()):
        if spec.unet not in UNET_MODES:
            raise MethodError(f"unet mode {spec.unet!r} is not one of {UNET_MODES}")
        self.spec, self.config, self.regularizers = spec, config, tuple(regularizers)
        data, train = config.data, config.train
        default = data.instance_prompt if data.instance_prompt is not None else spec.templates
        if not spec.tokens and "{}" in (data.instance_prompt or ""):
            raise MethodError(f"data.instance_prompt {data.instance_prompt!r} has '{{}}' for a trigger, but "
                              f"{spec.name} adds no token; write the identifier itself (e.g. 'a photo of sks dog')")
        self.examples = examples_from_folder(data.instance_data_dir, default, "data.instance_data_dir")
        if train.with_prior_preservation and not data.class_prompt:
            raise MethodError("train.with_prior_preservation needs data.class_prompt (e.g. 'a photo of a dog')")
        if train.cache_latents and (not data.center_crop or spec.rescale_aug):
            raise MethodError("train.cache_latents needs data.center_crop=true and no random rescale "
                              "(rescale_aug=false): a random crop gives new latents every step; set "
                              "--train.cache_latents=false (configs/dreambooth.yaml and lora.yaml turn it on)")

    # ------------------------------------------------------------------------------------ setup

    def setup(self, components, config, accelerator) -> None:
        """Class images (with the untouched base), then freeze everything, add tokens, install the trainable
        part, place modules on the device."""
        self.c, self.accelerator = components, accelerator
        self.class_examples = class_examples(config, components, accelerator)  # before anything changes
        self.device, self.dtype = blocks.frozen_setup(components, accelerator)
        c, spec, train = components, self.spec, config.train
        self.rows = TokenRows.add(c.tokenizer, c.text_encoder, spec.tokens) if spec.tokens else None
        self.procs, self.lora_alpha = {}, float(spec.lora_alpha or spec.lora_rank)
        if train.enable_xformers_memory_efficient_attention:
            blocks.enable_xformers(c.unet)
        if spec.unet == "full":
            c.unet.requires_grad_(True)
        elif spec.unet in ("crossattn_kv", "crossattn"):
            self.procs = add_custom_diffusion(c.unet, spec.unet == "crossattn",
                                              train.enable_xformers_memory_efficient_attention)
        elif spec.unet == "lora":
            add_lora(c.unet, spec.lora_rank, self.lora_alpha, list(spec.lora_targets))
        if spec.train_text_encoder:  # the token table stays frozen, so the delta composes with embeddings
            c.text_encoder.requires_grad_(True)
            c.text_encoder.get_input_embeddings().requires_grad_(False)
        if self.rows:
            self.rows.make_trainable(c.text_encoder)
        blocks.place((c.vae, c.unet, c.text_encoder), self.device, self.dtype)
        if train.gradient_checkpointing and self.unet_trains:
            c.unet.enable_gradient_checkpointing()
        if train.gradient_checkpointing and self.text_encoder_trains:
            c.text_encoder.gradient_checkpointing_enable()
        self.unet, self.text_encoder = c.unet, c.text_encoder  # replaced by wrapped modules in use_modules
        self.encode_latents = blocks.LatentEncoder(c.vae, self.device, self.dtype, train.cache_latents)
        self.text_cache: dict = {}
        self.base = BaseContext(c.tokenizer, c.text_encoder, c.unet, c.scheduler, self.rows, self.device,
                                spec.train_text_encoder, accelerator.autocast, self.encode_text)
        for reg in self.regularizers:
            reg.setup(self.base)

    @property
    def unet_trains(self) -> bool:
        return blocks.trains(self.c.unet)

    @property
    def text_encoder_trains(self) -> bool:
        return blocks.trains(self.c.text_encoder)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        mods = {"unet": self.c.unet} if self.unet_trains else {}
        return mods | ({"text_encoder": self.c.text_encoder} if self.text_encoder_trains else {})

    def use_modules(self, modules: dict[str, torch.nn.Module]) -> None:
        """Take the (DDP-wrapped) modules that `accelerator.prepare` returned."""
        for name, module in modules.items():
            setattr(self, name, module)

    def loss_weights(self) -> dict[str, float]:
        weights = {"loss_prior": self.config.train.lambda_prior}
        for reg in self.regularizers:
            weights |= reg.loss_weights()
        return weights

    # ------------------------------------------------------------------------------------ data

    def resolution(self) -> int:
        return blocks.train_resolution(self.config, self.c.unet, self.c.vae)

    @property
    def vae_factor(self) -> int:
        return blocks.vae_factor(self.c.vae)

    def dataloader(self, start: int, rank: int, world: int):
        """Instance batches (+ class batches of the same size for prior preservation), deterministic by position."""
        data, train = self.config.data, self.config.train
        kw = dict(resolution=self.resolution(), center_crop=data.center_crop, random_flip=data.random_flip,
                  vae_factor=self.vae_factor)
        sets = [ConceptImages(self.examples, rescale=self.spec.rescale_aug, **kw)]
        if self.class_examples:
            sets.append(ConceptImages(self.class_examples, is_prior=True, **kw))
        loaders = [
            torch.utils.data.DataLoader(
                ds, batch_sampler=PositionSampler(len(ds), train.train_batch_size, train.seed + 17 * i, rank,
                                                  world, start),
                collate_fn=collate, num_workers=train.dataloader_num_workers)
            for i, ds in enumerate(sets)
        ]
        for parts in zip(*loaders):
            yield merge_batches(parts)

    # ------------------------------------------------------------------------------------ step

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """(B, 77, width) hidden states; cached per caption when the text encoder is frozen and asked to."""
        cache = self.text_cache if self.config.train.cache_text_encoder_outputs and not self.text_encoder_trains \
            else None
        expand = (lambda cap: self.rows.expand(self.format_prompt(cap))) if self.rows else None
        return blocks.encode_prompts(self.c.tokenizer, self.text_encoder, captions, self.device, cache, expand)

    def forward(self, batch: dict, gen: torch.Generator) -> StepContext:
        latents = self.encode_latents(batch["pixel_values"], batch["cache_keys"], gen)
        n = blocks.noise_and_target(self.c.scheduler, latents, gen, self.config.train.offset_noise)
        cond = self.encode_text(batch["captions"])
        pred = blocks.predict(self.unet, n.noisy, n.timesteps, cond, self.accelerator)
        return StepContext(latents, n.noise, n.timesteps, n.noisy, cond, pred, n.target,
                           batch["is_prior"].to(self.device), gen, [self.format_prompt(c) for c in batch["captions"]])

    def training_step(self, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        ctx = self.forward(batch, gen)
        per_sample = blocks.masked_mse(ctx.pred, ctx.target)
        if self.spec.masked_loss:  # instance samples only; class images keep the plain mean
            masked = blocks.masked_mse(ctx.pred, ctx.target, batch["mask"].to(self.device))
            per_sample = torch.where(ctx.is_prior, per_sample, masked)
        if self.config.train.snr_gamma:
            per_sample = per_sample * blocks.snr_weights(self.c.scheduler, ctx.timesteps, self.config.train.snr_gamma)
        inst, prior = ~ctx.is_prior, ctx.is_prior
        losses = {"loss_diffusion": per_sample[inst].mean()}
        if prior.any():
            losses["loss_prior"] = per_sample[prior].mean()
        return losses | self.extra_losses(ctx)

    def extra_losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Regularizer terms (ClassDiffusion's SPL, SuDe); none for the plain bases."""
        out: dict[str, torch.Tensor] = {}
        for reg in self.regularizers:
            out |= reg.losses(self.base, ctx)
        return out

    # ------------------------------------------------------------------------------------ outputs

    def finish(self) -> None:
        """After the last step: new token rows go into the embedding table, as a loaded artifact puts them."""
        if self.rows:
            self.rows.fold(self.c.text_encoder)

    def artifact(self) -> ArtifactContent:
        """Token rows (embeddings) + a `delta` (full UNet, Custom Diffusion K/V, text-encoder layers) or a `lora`."""
        embeddings = self.rows.vectors(self.c.text_encoder) if self.rows else {}
        delta, lora = {}, {}
        if self.spec.unet == "full":
            delta |= {f"unet.{n}": p.detach().float().cpu() for n, p in self.c.unet.named_parameters()}
        elif self.procs:
            delta |= custom_diffusion_delta(self.procs)
        elif self.spec.unet == "lora":
            lora = lora_state_dict(self.c.unet, self.spec.lora_rank, self.lora_alpha)
        if self.spec.train_text_encoder:
            table = self.c.text_encoder.get_input_embeddings().weight
            delta |= {f"text_encoder.{n}": p.detach().float().cpu()
                      for n, p in self.c.text_encoder.named_parameters() if p is not table}
        only_embeddings = embeddings and not delta and not lora
        name = next(iter(embeddings)) if only_embeddings and len(embeddings) == 1 else self.spec.name
        kind, weights = ("delta", check_delta_keys(delta)) if delta else ("lora", lora) if lora else ("none", {})
        return ArtifactContent(name, embeddings, weights, kind, dict(self.spec.metadata))

    def format_prompt(self, prompt: str) -> str:
        """`{}` -> the trigger (the stock pipeline expands multi-vector triggers itself)."""
        return prompt.replace("{}", next(iter(self.rows.triggers))) if self.rows else prompt

    def validation_images(self, pipe, prompt: str, seeds: list[int], steps: int) -> list:
        """Through the inference path (`Pipeline.generate`) on the live modules, `{}` filled with the trigger."""
        return [g.image for g in pipe.generate(self.format_prompt(prompt), seed=seeds, steps=steps)]


def merge_batches(parts: tuple[dict, ...]) -> dict:
    if len(parts) == 1:
        return parts[0]
    return {
        "pixel_values": torch.cat([p["pixel_values"] for p in parts]),
        "mask": torch.cat([p["mask"] for p in parts]),
        "captions": [c for p in parts for c in p["captions"]],
        "is_prior": torch.cat([p["is_prior"] for p in parts]),
        "cache_keys": [k for p in parts for k in p["cache_keys"]],
    }


