"""Building blocks every training method may call: plain functions, not base-class methods.

  - `freeze`, `place`: the mixed-precision rule of diffusers' example scripts (frozen weights in the low dtype,
    trainable ones float32, as `cast_training_params`);
  - `encode_prompts`: token ids + text-encoder hidden states, with an optional per-caption cache;
  - `LatentEncoder`: VAE posterior samples x scaling factor, with an optional cache of the posterior;
  - `noise_and_target`: the forward process of latent diffusion (Rombach et al. 2022, eq. 2): noise (+ offset
    noise), uniform timesteps, x_t and the eps/v target;
  - `predict`: one UNet call under the accelerator's autocast;
  - `masked_mse`, `snr_weights`: per-sample losses and Min-SNR weights;
  - the differentiable partial sampler lives beside this, in `personalize.methods.sampling`.
Every random draw takes an explicit CPU generator, so a step is a pure function of (seed, position).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from personalize.components import DTYPES
from personalize.methods.base import MethodError


def weight_dtype(accelerator) -> torch.dtype:
    """The dtype of frozen weights under the accelerator's mixed precision ('no' -> float32)."""
    return DTYPES[str(accelerator.mixed_precision)]


def frozen_setup(components, accelerator) -> tuple[torch.device, torch.dtype]:
    """The prelude every method's `setup` shares: every pipeline part frozen (a method then unfreezes what it
    trains); returns (the device, the frozen weights' dtype) to `place` them with."""
    c = components
    freeze(c.vae, c.unet, c.text_encoder)
    return accelerator.device, weight_dtype(accelerator)


def freeze(*modules: torch.nn.Module) -> None:
    for module in modules:
        module.requires_grad_(False)


def place(modules, device, dtype: torch.dtype) -> None:
    """Move modules to `device`: frozen weights in `dtype`, trainable ones (requires_grad) in float32."""
    for module in modules:
        module.to(device, dtype) if module.dtype != dtype else module.to(device)
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()


def trains(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def vae_factor(vae) -> int:
    """Pixels per latent pixel: 2 ** (number of VAE blocks - 1), 8 for Stable Diffusion."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def train_resolution(config, unet, vae) -> int:
    """`data.resolution`, or the UNet's native size in pixels when it is not set."""
    return config.data.resolution or unet.config.sample_size * vae_factor(vae)


def token_ids(tokenizer, prompts: list[str], device) -> torch.Tensor:
    """(B, 77) ids, padded to the tokenizer's maximum length as the stock pipeline pads them."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device, cache: dict | None = None,
                   expand=None) -> torch.Tensor:
    """(B, 77, width) last hidden states. `expand` rewrites a prompt first (multi-vector triggers spelled out);
    with `cache` (a dict, only while the text encoder is frozen) each caption is encoded once."""
    if cache is not None and all(p in cache for p in prompts):
        return torch.stack([cache[p] for p in prompts])
    texts = [expand(p) for p in prompts] if expand else list(prompts)
    hidden = text_encoder(token_ids(tokenizer, texts, device))[0]
    if cache is not None:
        cache.update({p: h.detach() for p, h in zip(prompts, hidden)})
    return hidden


@dataclass
class LatentEncoder:
    """VAE posterior sample x scaling factor, (B, 4, h, w); the posterior (mean, std) is cached per key when
    `use_cache` (fixed center crops only: a random crop gives new latents every step)."""

    vae: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    use_cache: bool = False

    def __post_init__(self):
        self.cache: dict = {}

    def __call__(self, pixels: torch.Tensor, keys: list, generator: torch.Generator) -> torch.Tensor:
        todo = [i for i, key in enumerate(keys) if not (self.use_cache and key in self.cache)]
        fresh = {}
        if todo:  # one VAE call for every sample not in the cache
            with torch.no_grad():
                dist = self.vae.encode(pixels[todo].to(self.device, self.dtype)).latent_dist
            fresh = {i: (dist.mean[k], dist.std[k]) for k, i in enumerate(todo)}
            if self.use_cache:
                self.cache.update({keys[i]: stats for i, stats in fresh.items()})
        stats = [fresh[i] if i in fresh else self.cache[key] for i, key in enumerate(keys)]
        mean = torch.stack([m for m, _ in stats]).float()
        std = torch.stack([sd for _, sd in stats]).float()
        eps = torch.randn(mean.shape, generator=generator).to(self.device)
        return (mean + std * eps) * self.vae.config.scaling_factor


@dataclass
class Noised:
    noise: torch.Tensor  # (B, 4, h, w)
    timesteps: torch.Tensor  # (B,)
    noisy: torch.Tensor  # x_t
    target: torch.Tensor  # eps, or v for v-prediction


def noise_and_target(scheduler, latents: torch.Tensor, generator: torch.Generator,
                     offset_noise: bool = False) -> Noised:
    """Noise, uniform timesteps in [0, T), x_t = add_noise(x_0, noise, t) and the training target."""
    b, device = latents.shape[0], latents.device
    noise = torch.randn(latents.shape, generator=generator)
    if offset_noise:  # diffusers train_dreambooth.py --offset_noise
        noise = noise + 0.1 * torch.randn(b, latents.shape[1], 1, 1, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(device)
    noise = noise.to(device)
    noisy = scheduler.add_noise(latents, noise, t)
    eps = scheduler.config.prediction_type == "epsilon"
    return Noised(noise, t, noisy, noise if eps else scheduler.get_velocity(latents, noise, t))


def predict(unet, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor, accelerator=None):
    """The UNet's prediction in float32; inputs in the conditioning's dtype, under the accelerator's autocast."""
    autocast = accelerator.autocast() if accelerator is not None else contextlib.nullcontext()
    with autocast:
        return unet(noisy.to(cond.dtype), timesteps, cond).sample.float()


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
