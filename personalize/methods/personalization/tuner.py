"""Personalization tuning shared by the four bases: textual inversion, DreamBooth, Custom Diffusion, LoRA.

A `Tuner` is configured by a `TunerSpec` (what trains) and implements the method protocol of DESIGN sec. 5.
The step is the standard denoising objective of latent diffusion (Rombach et al. 2022, eq. 2), with
prior preservation (DreamBooth, Ruiz et al. 2023, eq. 2: instance and class samples in one batch), Custom
Diffusion's masked loss, Min-SNR weighting (Hang et al. 2023) and offset noise as in diffusers' example scripts.
Regularizers (ClassDiffusion, SuDe) extend `training_step` through `extra_losses(ctx)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from personalize.data import ConceptImages, PositionSampler, collate, examples_from_folder
from personalize.methods.personalization.parts import (
    MethodError, TokenRows, add_custom_diffusion, add_lora, custom_diffusion_delta, lora_state_dict,
)

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


class Regularizer(Protocol):
    """An extra loss on top of a base (ClassDiffusion's SPL, SuDe): set up after the base, called each step."""

    def setup(self, tuner: "Tuner") -> None: ...
    def losses(self, tuner: "Tuner", ctx: StepContext) -> dict[str, torch.Tensor]: ...  # "loss_*" + stats
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
                              "(rescale_aug=false): a random crop gives new latents every step")
        self.latent_cache: dict = {}
        self.text_cache: dict = {}

    # ------------------------------------------------------------------------------------ setup

    def setup(self, components, config, accelerator) -> None:
        """Freeze everything, add tokens, install the trainable part, place modules on the device."""
        from personalize.trainer import weight_dtype

        self.c, self.accelerator = components, accelerator
        self.device, self.dtype = accelerator.device, weight_dtype(config.train.mixed_precision)
        c, spec, train = components, self.spec, config.train
        for module in (c.vae, c.unet, c.text_encoder):
            module.requires_grad_(False)
        self.rows = TokenRows.add(c.tokenizer, c.text_encoder, spec.tokens) if spec.tokens else None
        self.procs, self.lora_alpha = {}, float(spec.lora_alpha or spec.lora_rank)
        if train.enable_xformers_memory_efficient_attention:
            enable_xformers(c.unet)
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
        self._place(train.gradient_checkpointing)
        for reg in self.regularizers:
            reg.setup(self)

    def _place(self, checkpointing: bool) -> None:
        c = self.c
        for module in (c.vae, c.unet, c.text_encoder):  # frozen weights in the mixed-precision dtype,
            module.to(self.device, self.dtype) if module.dtype != self.dtype else module.to(self.device)
            for p in module.parameters():  # trainable ones in float32 (diffusers' cast_training_params)
                if p.requires_grad:
                    p.data = p.data.float()
        if checkpointing and self.unet_trains:
            c.unet.enable_gradient_checkpointing()
        if checkpointing and self.text_encoder_trains:
            c.text_encoder.gradient_checkpointing_enable()
        self.unet, self.text_encoder = c.unet, c.text_encoder  # replaced by wrapped modules in use_modules

    @property
    def unet_trains(self) -> bool:
        return any(p.requires_grad for p in self.c.unet.parameters())

    @property
    def text_encoder_trains(self) -> bool:
        return any(p.requires_grad for p in self.c.text_encoder.parameters())

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        mods = {"unet": self.c.unet} if self.unet_trains else {}
        return mods | ({"text_encoder": self.c.text_encoder} if self.text_encoder_trains else {})

    def use_modules(self, modules: dict[str, torch.nn.Module]) -> None:
        """Take the (DDP-wrapped) modules that `accelerator.prepare` returned."""
        for name, module in modules.items():
            setattr(self, name, module)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in (self.c.unet, self.c.text_encoder) for p in m.parameters() if p.requires_grad]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [{"params": self.trainable_parameters(), "lr": lr, "weight_decay": weight_decay}]

    def loss_weights(self) -> dict[str, float]:
        weights = {"loss_prior": self.config.train.prior_loss_weight}
        for reg in self.regularizers:
            weights |= reg.loss_weights()
        return weights

    # ------------------------------------------------------------------------------------ data

    def resolution(self) -> int:
        return self.config.data.resolution or self.c.unet.config.sample_size * self.vae_factor

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.c.vae.config.block_out_channels) - 1)

    def dataloader(self, start_micro: int, rank: int, world: int, class_examples=None):
        """Instance batches (+ class batches of the same size for prior preservation), deterministic by position."""
        data, train = self.config.data, self.config.train
        kw = dict(resolution=self.resolution(), center_crop=data.center_crop, random_flip=data.random_flip,
                  vae_factor=self.vae_factor)
        sets = [ConceptImages(self.examples, rescale=self.spec.rescale_aug, **kw)]
        if class_examples:
            sets.append(ConceptImages(class_examples, is_prior=True, **kw))
        loaders = [
            torch.utils.data.DataLoader(
                ds, batch_sampler=PositionSampler(len(ds), train.train_batch_size, train.seed + 17 * i, rank,
                                                  world, start_micro),
                collate_fn=collate, num_workers=train.dataloader_num_workers)
            for i, ds in enumerate(sets)
        ]
        for parts in zip(*loaders):
            yield merge_batches(parts)

    # ------------------------------------------------------------------------------------ step

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """(B, 77, width) hidden states; cached per caption when the text encoder is frozen and asked to."""
        cache = self.config.train.cache_text_encoder_outputs and not self.text_encoder_trains
        if cache and all(cap in self.text_cache for cap in captions):
            return torch.stack([self.text_cache[cap] for cap in captions])
        expanded = [self.rows.expand(self.format_prompt(cap)) if self.rows else cap for cap in captions]
        tok = self.c.tokenizer
        ids = tok(expanded, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.device)
        hidden = self.text_encoder(ids)[0]
        if cache:
            self.text_cache.update({cap: h.detach() for cap, h in zip(captions, hidden)})
        return hidden

    def encode_latents(self, pixels: torch.Tensor, keys: list, gen: torch.Generator) -> torch.Tensor:
        """VAE posterior sample x scaling factor, (B, 4, h, w); the posterior is cached per key when asked to."""
        use_cache = self.config.train.cache_latents
        todo = [i for i, key in enumerate(keys) if not (use_cache and key in self.latent_cache)]
        fresh = {}
        if todo:  # one VAE call for every sample not in the cache
            with torch.no_grad():
                dist = self.c.vae.encode(pixels[todo].to(self.device, self.dtype)).latent_dist
            fresh = {i: (dist.mean[k], dist.std[k]) for k, i in enumerate(todo)}
            if use_cache:
                self.latent_cache.update({keys[i]: stats for i, stats in fresh.items()})
        stats = [fresh[i] if i in fresh else self.latent_cache[key] for i, key in enumerate(keys)]
        mean = torch.stack([m for m, _ in stats]).float()
        std = torch.stack([sd for _, sd in stats]).float()
        eps = torch.randn(mean.shape, generator=gen).to(self.device)
        return (mean + std * eps) * self.c.vae.config.scaling_factor

    def forward(self, batch: dict, gen: torch.Generator) -> StepContext:
        latents = self.encode_latents(batch["pixel_values"], batch["cache_keys"], gen)
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen)
        if self.config.train.offset_noise:  # diffusers train_dreambooth.py --offset_noise
            noise = noise + 0.1 * torch.randn(b, latents.shape[1], 1, 1, generator=gen)
        sched = self.c.scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen).to(self.device)
        noise = noise.to(self.device)
        noisy = sched.add_noise(latents, noise, t)
        cond = self.encode_text(batch["captions"])
        with self.accelerator.autocast():
            pred = self.unet(noisy.to(cond.dtype), t, cond).sample.float()
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
        return StepContext(latents, noise, t, noisy, cond, pred, target,
                           batch["is_prior"].to(self.device), gen)

    def training_step(self, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        ctx = self.forward(batch, gen)
        per_sample = masked_mse(ctx.pred, ctx.target)
        if self.spec.masked_loss:  # instance samples only; class images keep the plain mean
            masked = masked_mse(ctx.pred, ctx.target, batch["mask"].to(self.device))
            per_sample = torch.where(ctx.is_prior, per_sample, masked)
        if self.config.train.snr_gamma:
            per_sample = per_sample * snr_weights(self.c.scheduler, ctx.timesteps, self.config.train.snr_gamma)
        inst, prior = ~ctx.is_prior, ctx.is_prior
        losses = {"loss_diffusion": per_sample[inst].mean()}
        if prior.any():
            losses["loss_prior"] = per_sample[prior].mean()
        return losses | self.extra_losses(ctx)

    def extra_losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Regularizer terms (ClassDiffusion's SPL, SuDe); none for the plain bases."""
        out: dict[str, torch.Tensor] = {}
        for reg in self.regularizers:
            out |= reg.losses(self, ctx)
        return out

    # ------------------------------------------------------------------------------------ outputs

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the trainable weights by name (new token rows, K/V, LoRA, UNet ...)."""
        return {f"{prefix}.{name}": p.detach().cpu().clone()
                for prefix, module in (("unet", self.c.unet), ("text_encoder", self.c.text_encoder))
                for name, p in module.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = {k: v.shape for k, v in self.trainable_state().items()}
        if {k: v.shape for k, v in state.items()} != expected:
            raise MethodError(f"checkpoint holds {len(state)} tensors that do not match this run's "
                              f"{len(expected)} trainable weights; was it written by another method or config?")
        for prefix, module in (("unet", self.c.unet), ("text_encoder", self.c.text_encoder)):
            params = dict(module.named_parameters())
            with torch.no_grad():
                for key, value in state.items():
                    if key.startswith(prefix + "."):
                        params[key[len(prefix) + 1:]].copy_(value)

    def finish(self) -> None:
        """After the last step: new token rows go into the embedding table, as a loaded artifact puts them."""
        if self.rows:
            self.rows.fold(self.c.text_encoder)

    def artifact(self) -> dict:
        """`save_artifact` arguments (DESIGN sec. 4) and the file name."""
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
        return {"name": name, "embeddings": embeddings, "delta": delta, "lora": lora,
                "extra": dict(self.spec.metadata)}

    def format_prompt(self, prompt: str) -> str:
        """`{}` -> the trigger (the stock pipeline expands multi-vector triggers itself)."""
        return prompt.replace("{}", next(iter(self.rows.triggers))) if self.rows else prompt

    def pipeline(self):
        """A stock `StableDiffusionPipeline` on the live (unwrapped) modules, for validation images."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(**self.c.as_pipeline_kwargs())
        pipe.set_progress_bar_config(disable=True)
        return pipe


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


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample MSE (B,). With a latent mask (B, h, w): sum(mask * err^2) / sum(mask), summed over channels
    as Custom Diffusion computes it (train_custom_diffusion.py: `(loss * mask).sum([1, 2, 3]) / mask.sum(...)`
    with a one-channel mask), i.e. C times the masked mean; class images use the plain mean."""
    err = (pred.float() - target.float()) ** 2  # (B, C, h, w)
    if mask is None:
        return err.mean(dim=(1, 2, 3))
    mask = mask[:, None].to(err.dtype)  # (B, 1, h, w)
    return (err * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp(min=1.0)


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 7): min(SNR, gamma)/SNR for epsilon targets,
    min(SNR, gamma)/(SNR + 1) for v-prediction, as diffusers' example scripts compute them."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps.cpu()).to(timesteps.device)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else clipped / snr


def enable_xformers(unet) -> None:
    if not torch.cuda.is_available():
        raise MethodError("train.enable_xformers_memory_efficient_attention needs a CUDA GPU; this machine has none")
    try:
        import xformers  # noqa: F401
    except ImportError as err:
        raise MethodError("train.enable_xformers_memory_efficient_attention needs xformers: "
                          "pip install 'personalize[xformers]'") from err
    unet.enable_xformers_memory_efficient_attention()
