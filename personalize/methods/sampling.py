"""One differentiable partial sampler: denoising steps [from_step, to_step) of a `steps`-step schedule.

The loop is the denoising loop of diffusers' `StableDiffusionPipeline.__call__` (step 7): `scale_model_input`,
one UNet call on cat([uncond, cond]) under classifier-free guidance, eps = u + w * (c - u), then
`scheduler.step(...).prev_sample`; with a DDIMScheduler it is DDIM (Song et al., ICLR 2021, eta = 0). The
scheduler's `prediction_type` decides what the UNet predicts, so epsilon and v-prediction models both work.
Only first-order schedulers (one UNet call per step: DDIM, Euler, ...) fit the step indices used here.

Two methods share it:
  - concept erasure (ESD, Gandikota et al., ICCV 2023): the official train-scripts/train-esd.py makes x_t with
    a partial DDIM loop from the model being trained, under no_grad (`grad_steps=0`); `timesteps(...)[m]` is the
    t at which `sample(..., 0, m)` leaves x_t;
  - discriminative class tokens: a classifier's loss on the result backpropagates through the last
    `grad_steps` denoising steps into one token embedding of `cond` (each step checkpointed, so only one step's
    UNet activations are held at a time).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from personalize.methods.base import MethodError


def _fresh(scheduler, steps: int, device=None):
    """A copy of `scheduler` with `steps` timesteps set; the caller's scheduler is never touched."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(steps, device=device)
    if len(fresh.timesteps) != steps:
        raise MethodError(f"scheduler {type(scheduler).__name__} makes {len(fresh.timesteps)} timesteps for "
                          f"steps={steps}; sampling needs a first-order scheduler (one UNet call per step)")
    return fresh


def timesteps(scheduler, steps: int) -> torch.Tensor:
    """The `steps`-step schedule's timesteps, first (noisiest) first, as `sample` runs them."""
    return _fresh(scheduler, steps).timesteps.clone()


def _check(steps, from_step, to_step, grad_steps, latents, cond, uncond, guidance):
    if not isinstance(steps, int) or steps < 1:
        raise MethodError(f"steps must be a positive int, got {steps!r}")
    if not 0 <= from_step <= to_step <= steps:
        raise MethodError(f"need 0 <= from_step <= to_step <= steps, got from_step={from_step}, "
                          f"to_step={to_step}, steps={steps}")
    if grad_steps < 0:
        raise MethodError(f"grad_steps must be >= 0, got {grad_steps}")
    if latents.ndim != 4 or cond.ndim != 3:
        raise MethodError(f"latents must be (B, C, h, w) and cond (B, 77, D), got latents "
                          f"{tuple(latents.shape)}, cond {tuple(cond.shape)}")
    if latents.shape[0] != cond.shape[0]:
        raise MethodError(f"latents batch {latents.shape[0]} != cond batch {cond.shape[0]}")
    if uncond is not None and uncond.shape != cond.shape:
        raise MethodError(f"uncond shape {tuple(uncond.shape)} != cond shape {tuple(cond.shape)}")
    if uncond is None and guidance != 1.0:
        raise MethodError(f"guidance={guidance} needs uncond (the unconditional embedding); got uncond=None")


def _step(unet, scheduler, latents, t, embeds, timestep_cond, guidance, use_checkpoint):
    """One denoising step as in StableDiffusionPipeline.__call__; guidance None: no CFG, else `embeds` is
    cat([uncond, cond])."""
    cfg = guidance is not None
    model_input = torch.cat([latents] * 2) if cfg else latents  # (2B or B, 4, h, w)
    model_input = scheduler.scale_model_input(model_input, t).to(embeds.dtype)
    if use_checkpoint and torch.is_grad_enabled():
        pred = _checkpoint(_unet_call, unet, model_input, t, embeds, timestep_cond, use_reentrant=False)
    else:
        pred = _unet_call(unet, model_input, t, embeds, timestep_cond)
    if cfg:
        pred_uncond, pred_text = pred.chunk(2)  # (B, 4, h, w) each
        pred = pred_uncond + guidance * (pred_text - pred_uncond)
    return scheduler.step(pred.to(latents.dtype), t, latents, return_dict=False)[0]  # (B, 4, h, w)


def _unet_call(unet, model_input, t, embeds, timestep_cond):
    return unet(model_input, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond, return_dict=False)[0]


def sample(unet, scheduler, cond, steps, from_step=0, to_step=None, *, latents, grad_steps=0,
           guidance=1.0, uncond=None, checkpoint=True, timestep_cond=None) -> torch.Tensor:
    """Run denoising steps [from_step, to_step) of a `steps`-step schedule from `latents`; return the latents
    after them.

    `latents` (B, 4, h, w) are x at `timesteps(scheduler, steps)[from_step]`, already scaled (the stock pipeline
    multiplies fresh noise by `init_noise_sigma` first; 1.0 for DDIM); they keep their dtype, the UNet gets its
    inputs in `cond.dtype`. `cond`, `uncond`: (B, 77, D). With `uncond` and guidance != 1: classifier-free
    guidance, one batched UNet call per step. The first steps run under no_grad; the last `grad_steps` of the
    range with autograd (all of them if it exceeds the range), each step's UNet call checkpointed when
    `checkpoint` (non-reentrant). `timestep_cond` (B, d) is passed to the UNet (repeated for the CFG batch).
    """
    to_step = steps if to_step is None else to_step
    _check(steps, from_step, to_step, grad_steps, latents, cond, uncond, guidance)
    sched = _fresh(scheduler, steps, device=latents.device)
    run = sched.timesteps[from_step:to_step]
    cfg = uncond is not None and guidance != 1.0
    embeds = torch.cat([uncond, cond]) if cfg else cond  # (2B or B, 77, D)
    if cfg and timestep_cond is not None:
        timestep_cond = torch.cat([timestep_cond] * 2)
    guidance = guidance if cfg else None
    first_grad = max(len(run) - grad_steps, 0)
    with torch.no_grad():
        for t in run[:first_grad]:
            latents = _step(unet, sched, latents, t, embeds, timestep_cond, guidance, False)
    for t in run[first_grad:]:
        latents = _step(unet, sched, latents, t, embeds, timestep_cond, guidance, checkpoint)
    return latents  # (B, 4, h, w)
