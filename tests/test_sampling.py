"""personalize.methods.sampling: the partial sampler against the stock diffusers pipeline and hand-written loops."""

import pytest
import torch

from personalize.methods.base import MethodError
from personalize.methods.sampling import sample, timesteps

WIDTH = {"sd1": 32, "sd2": 48}  # the conftest tiny models' text widths


def _pipe(folder, scheduler_cls=None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder), local_files_only=True, safety_checker=None, requires_safety_checker=False)
    if scheduler_cls is not None:
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(width, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 8, 8, generator=gen)  # (B, 4, h, w)
    cond = torch.randn(batch, 77, width, generator=gen)  # (B, 77, D)
    uncond = torch.randn(batch, 77, width, generator=gen)
    return latents, cond, uncond


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    return _pipe(tiny_sd1)


def _stock(pipe, latents, cond, uncond, steps):
    with torch.no_grad():
        return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=latents.clone(), height=16, width=16,
                    num_inference_steps=steps, guidance_scale=7.5, output_type="latent").images


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_full_range_matches_stock_pipeline_ddim(variant, tiny_sd1, tiny_sd2):
    pipe = _pipe(tiny_sd1 if variant == "sd1" else tiny_sd2)
    assert pipe.scheduler.config.prediction_type == ("epsilon" if variant == "sd1" else "v_prediction")
    latents, cond, uncond = _inputs(WIDTH[variant])
    expected = _stock(pipe, latents, cond, uncond, 5)
    got = sample(pipe.unet, pipe.scheduler, cond, 5, latents=latents, guidance=7.5, uncond=uncond)
    assert not got.requires_grad
    assert torch.allclose(got, expected, atol=1e-6, rtol=0), (got - expected).abs().max()
    assert not torch.allclose(got, latents, atol=1e-2)


def test_full_range_matches_stock_pipeline_euler(tiny_sd1):
    from diffusers import EulerDiscreteScheduler

    pipe = _pipe(tiny_sd1, EulerDiscreteScheduler)
    latents, cond, uncond = _inputs(WIDTH["sd1"])
    expected = _stock(pipe, latents, cond, uncond, 4)  # the pipeline scales by init_noise_sigma itself
    sigma = pipe.scheduler.init_noise_sigma
    assert sigma > 1.5
    got = sample(pipe.unet, pipe.scheduler, cond, 4, latents=latents * sigma, guidance=7.5, uncond=uncond)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_split_range_equals_full_range(sd1):
    latents, cond, uncond = _inputs(WIDTH["sd1"])
    kw = dict(guidance=3.0, uncond=uncond)
    full = sample(sd1.unet, sd1.scheduler, cond, 6, latents=latents, **kw)
    half = sample(sd1.unet, sd1.scheduler, cond, 6, 0, 2, latents=latents, **kw)
    rest = sample(sd1.unet, sd1.scheduler, cond, 6, 2, latents=half, **kw)
    assert torch.allclose(rest, full, atol=1e-6, rtol=0)
    assert not torch.allclose(half, full, atol=1e-3)
    assert torch.equal(sample(sd1.unet, sd1.scheduler, cond, 6, 3, 3, latents=half, **kw), half)  # empty range


def _reference(unet, scheduler, latents, cond, uncond, guidance, steps, k):
    """A hand-written DDIM loop with CFG as two separate UNet calls: steps[:-k] under no_grad, the last k with grad."""
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(steps)
    for i, t in enumerate(sched.timesteps):
        with torch.set_grad_enabled(i >= steps - k):
            u = unet(latents, t, encoder_hidden_states=uncond).sample
            c = unet(latents, t, encoder_hidden_states=cond).sample
            latents = sched.step(u + guidance * (c - u), t, latents).prev_sample
    return latents


def _grads(fn, *tensors):
    leaves = [x.detach().clone().requires_grad_(True) for x in tensors]
    out = fn(*leaves)
    weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weight).sum().backward()
    return [x.grad for x in leaves]


def test_gradient_confined_to_last_grad_steps(sd1):
    unet, sched = sd1.unet, sd1.scheduler
    unet.requires_grad_(False)
    latents, cond, uncond = _inputs(WIDTH["sd1"])
    n, k = 4, 2

    def ours(grad_steps):
        return lambda c, u: sample(unet, sched, c, n, latents=latents, grad_steps=grad_steps, guidance=3.0, uncond=u)

    ref_c, ref_u = _grads(lambda c, u: _reference(unet, sched, latents, c, u, 3.0, n, k), cond, uncond)
    got_c, got_u = _grads(ours(k), cond, uncond)
    assert ref_c.abs().sum() > 0 and ref_u.abs().sum() > 0
    assert torch.allclose(got_c, ref_c, atol=1e-6, rtol=1e-4)
    assert torch.allclose(got_u, ref_u, atol=1e-6, rtol=1e-4)
    more_c, _ = _grads(ours(k + 1), cond, uncond)
    assert not torch.allclose(more_c, got_c, atol=1e-6, rtol=1e-3)
    all_c, _ = _grads(ours(100), cond, uncond)  # more than the range: every step with grad
    ref_all, _ = _grads(lambda c, u: _reference(unet, sched, latents, c, u, 3.0, n, n), cond, uncond)
    assert torch.allclose(all_c, ref_all, atol=1e-6, rtol=1e-4)
    no_grad = sample(unet, sched, cond.clone().requires_grad_(True), n, latents=latents, guidance=3.0, uncond=uncond)
    assert not no_grad.requires_grad


@pytest.mark.parametrize("scheduler_name", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_checkpoint_gives_same_gradients(scheduler_name, sd1):
    import diffusers

    unet = sd1.unet
    sched = getattr(diffusers, scheduler_name).from_config(sd1.scheduler.config)
    latents, cond, uncond = _inputs(WIDTH["sd1"])
    param = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight
    unet.requires_grad_(False)
    param.requires_grad_(True)
    results = []
    for use_checkpoint in (True, False):
        param.grad = None
        c = cond.clone().requires_grad_(True)
        out = sample(unet, sched, c, 4, latents=latents, grad_steps=3, guidance=3.0, uncond=uncond,
                     checkpoint=use_checkpoint)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((c.grad, param.grad.clone()))
    param.requires_grad_(False)
    (c_ckpt, p_ckpt), (c_plain, p_plain) = results
    assert c_plain.abs().sum() > 0 and p_plain.abs().sum() > 0
    assert torch.allclose(c_ckpt, c_plain, atol=1e-7, rtol=1e-5)
    assert torch.allclose(p_ckpt, p_plain, atol=1e-7, rtol=1e-5)


def test_latent_dtype_kept_unet_called_in_cond_dtype(tiny_sd1):
    pipe = _pipe(tiny_sd1)
    pipe.unet.double()
    latents, cond, uncond = _inputs(WIDTH["sd1"])
    out = sample(pipe.unet, pipe.scheduler, cond.double(), 3, latents=latents, guidance=2.0, uncond=uncond.double())
    assert out.dtype == torch.float32


@pytest.mark.parametrize("scheduler_name", ["DDIMScheduler", "EulerDiscreteScheduler"])
def test_callers_scheduler_untouched(scheduler_name, sd1):
    import diffusers

    sched = getattr(diffusers, scheduler_name).from_config(sd1.scheduler.config)
    sched.set_timesteps(10)
    before = (sched.timesteps.clone(), sched.num_inference_steps, getattr(sched, "step_index", None))
    latents, cond, _ = _inputs(WIDTH["sd1"])
    sample(sd1.unet, sched, cond, 4, 1, 3, latents=latents)
    assert torch.equal(sched.timesteps, before[0])
    assert (sched.num_inference_steps, getattr(sched, "step_index", None)) == before[1:]


def test_timesteps_helper():
    from personalize.tiny import tiny_scheduler

    sched = tiny_scheduler()
    # DDIM "leading" spacing with steps_offset 1 over 1000 training steps: 1000 // 4 = 250 apart
    assert timesteps(sched, 4).tolist() == [751, 501, 251, 1]
    assert sched.num_inference_steps is None


@pytest.mark.parametrize("kwargs, word", [
    (dict(from_step=-1), "from_step"),
    (dict(from_step=3, to_step=2), "from_step"),
    (dict(to_step=5), "to_step"),
    (dict(steps=0), "steps"),
    (dict(grad_steps=-1), "grad_steps"),
    (dict(latents=torch.zeros(3, 4, 8, 8)), "batch"),
    (dict(uncond=torch.zeros(2, 77, 16), guidance=2.0), "uncond"),
    (dict(guidance=2.0), "uncond"),
])
def test_bad_arguments(kwargs, word, sd1):
    latents, cond, _ = _inputs(WIDTH["sd1"])
    args = dict(steps=4, latents=latents) | kwargs
    steps = args.pop("steps")
    with pytest.raises(MethodError, match=word):
        sample(sd1.unet, sd1.scheduler, cond, steps, **args)
