"""SuDe's loss (official ddpm.py `prob_loss_func_class`): closed forms, the gate, the F_t table, routing, batches, weight 0."""

import contextlib

import pytest
import torch
from helpers import train_config

from personalize.artifacts import load_artifact
from personalize.methods.personalization.tuner import BaseContext
from personalize.methods.personalization.sude import SubjectDerived, Options, sude_terms, to_epsilon
from personalize.methods.personalization.tuner import StepContext
from personalize.trainer import train


def sd_alphas_cumprod(dtype=torch.float64) -> torch.Tensor:
    """SD-1.x training schedule: betas linear in sqrt from 0.00085 to 0.012, 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=dtype) ** 2
    return torch.cumprod(1 - betas, 0)


def f_t(ac: torch.Tensor, t: int) -> float:
    """Spec sec. 2.3, written out here independently: F_t = k_t^2 / ((2 var_t + 1e-6) coef1_t)."""
    a_bar, a_prev = ac[t], (ac[t - 1] if t > 0 else torch.tensor(1.0, dtype=ac.dtype))
    beta = 1 - a_bar / a_prev
    k = beta / ((1 - beta).sqrt() * (1 - a_bar).sqrt())
    var = beta * (1 - a_prev) / (1 - a_bar)
    coef1 = beta * a_prev.sqrt() / (1 - a_bar)
    return float(k ** 2 / ((2 * var + 1e-6) * coef1))


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def bracket(eps_s, eps_c, eps_u):
    return ((eps_s - eps_c) ** 2).flatten(1).mean(1) - ((eps_s - eps_u) ** 2).flatten(1).mean(1)


def test_zero_when_subject_is_the_category_or_the_category_has_no_effect():
    ac, t, x_t = sd_alphas_cumprod(), torch.tensor([10, 400, 900]), rand(3, 4, 8, 8)
    eps_c, eps_u = rand(3, 4, 8, 8, seed=1), rand(3, 4, 8, 8, seed=2)
    loss, gate = sude_terms(eps_c.clone(), eps_c, eps_u, x_t, t, ac)
    assert torch.all(gate == 0) and torch.all(loss == 0)
    loss, gate = sude_terms(rand(3, 4, 8, 8, seed=3), eps_c, eps_c.clone(), x_t, t, ac)
    assert torch.all(gate == 0) and torch.allclose(loss, torch.zeros(3, dtype=torch.float64))


def test_f_t_table_of_the_spec():
    """Values computed by hand from the DDPM schedule: F_1 1.00, F_500 0.96, F_999 7.37, F_0 ~851."""
    ac = sd_alphas_cumprod()
    for t, expected in [(1, 1.00), (500, 0.96), (999, 7.37), (0, 851)]:
        assert f_t(ac, t) == pytest.approx(expected, rel=0.01), t


@pytest.mark.parametrize("t", [1, 10, 250, 999])
def test_mean_space_equals_eps_space_form(t):
    """Without the clamp, the official mean-space loss is F_t times the eps-space bracket (expand the squares)."""
    ac, x_t = sd_alphas_cumprod(), rand(2, 4, 8, 8)
    eps_s, eps_c, eps_u = rand(2, 4, 8, 8, seed=1), rand(2, 4, 8, 8, seed=2), rand(2, 4, 8, 8, seed=3)
    loss, _ = sude_terms(eps_s, eps_c, eps_u, x_t, torch.tensor([t, t]), ac, truncate="none")
    torch.testing.assert_close(loss, f_t(ac, t) * bracket(eps_s, eps_c, eps_u), rtol=1e-5, atol=0)


def test_gradient_is_along_the_guidance_direction():
    """dL/d eps_s = -(2 F_t / N) (eps_c - eps_u): autograd and finite differences agree with the closed form."""
    ac, t, x_t = sd_alphas_cumprod(), torch.tensor([300]), rand(1, 4, 4, 4)
    eps_c, eps_u = rand(1, 4, 4, 4, seed=1), rand(1, 4, 4, 4, seed=2)
    eps_s = rand(1, 4, 4, 4, seed=3).requires_grad_(True)
    loss, _ = sude_terms(eps_s, eps_c, eps_u, x_t, t, ac, truncate="none")
    loss.sum().backward()
    closed = -(2 * f_t(ac, 300) / eps_s.numel()) * (eps_c - eps_u)
    torch.testing.assert_close(eps_s.grad, closed, rtol=1e-6, atol=1e-12)
    h, i = 1e-6, (0, 1, 2, 3)
    bumped = eps_s.detach().clone()
    bumped[i] += h
    up, _ = sude_terms(bumped, eps_c, eps_u, x_t, t, ac, truncate="none")
    bumped[i] -= 2 * h
    down, _ = sude_terms(bumped, eps_c, eps_u, x_t, t, ac, truncate="none")
    assert float((up - down) / (2 * h)) == pytest.approx(float(closed[i]), rel=1e-5)


def test_gate_is_the_projection_rule():
    """g = 1[<eps_s - eps_c, eps_c - eps_u> < 0] (the sign of the linear term), on random tensors."""
    ac, x_t = sd_alphas_cumprod(), rand(64, 4, 4, 4)
    eps_c, eps_u = rand(64, 4, 4, 4, seed=2), rand(64, 4, 4, 4, seed=3)
    eps_s = eps_c + rand(64, 4, 4, 4, seed=1)  # around the category: ahead or behind it at random
    t = torch.randint(1, 1000, (64,), generator=torch.Generator().manual_seed(0))
    loss, gate = sude_terms(eps_s, eps_c, eps_u, x_t, t, ac)
    rule = (((eps_s - eps_c) * (eps_c - eps_u)).flatten(1).sum(1) < 0).double()
    assert torch.equal(gate, rule) and 0 < rule.mean() < 1
    raw, _ = sude_terms(eps_s, eps_c, eps_u, x_t, t, ac, truncate="none")
    assert torch.all(loss[gate == 0] == 0) and torch.equal(loss[gate == 1], raw[gate == 1])


def test_v_prediction_converts_to_epsilon():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    x0, eps, t = rand(2, 4, 4, 4).float(), rand(2, 4, 4, 4, seed=1).float(), torch.tensor([5, 700])
    x_t, v = sched.add_noise(x0, eps, t), sched.get_velocity(x0, eps, t)
    torch.testing.assert_close(to_epsilon(v, x_t, t, sched.alphas_cumprod, "v_prediction"), eps, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------ the regularizer in a step


def _fake_base(seed=0):
    from diffusers import DDPMScheduler

    from personalize.tiny import tiny_unet

    torch.manual_seed(seed)
    unet = tiny_unet(16)
    conds = torch.randn(2, 77, 16)  # category, unconditional
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return BaseContext(None, None, unet, scheduler, None, torch.device("cpu"), False, contextlib.nullcontext,
                       lambda prompts: conds)


def _ctx(tuner, t, is_prior, seed=1):
    b = len(t)
    noisy, cond = torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(seed)), torch.randn(b, 77, 16)
    with torch.no_grad():  # a leaf that stands for the subject pass's prediction
        pred = tuner.unet(noisy, torch.tensor(t), cond).sample.requires_grad_(True)
    return StepContext(noisy, noisy, torch.tensor(t), noisy, cond, pred, noisy, torch.tensor(is_prior), None)


def _sude(tuner, **kw):
    reg = SubjectDerived(Options(class_word="dog", truncate="none", **kw))
    reg.setup(tuner)
    return reg


def test_per_sample_losses_match_separate_batch_one_runs():
    tuner = _fake_base()
    reg = _sude(tuner)
    ctx = _ctx(tuner, [50, 400, 800], [False, False, False])
    together = reg.losses(tuner, ctx)["loss_sude"]
    alone = [reg.losses(tuner, StepContext(*(getattr(ctx, f)[i:i + 1] for f in
                                               ("latents", "noise", "timesteps", "noisy", "cond", "pred", "target",
                                                "is_prior")), None))["loss_sude"] for i in range(3)]
    torch.testing.assert_close(together, torch.stack(alone).mean(), rtol=1e-5, atol=1e-7)


def test_prior_samples_and_t0_get_no_term_and_only_the_subject_pass_gets_gradient():
    tuner = _fake_base()
    reg = _sude(tuner)
    ctx = _ctx(tuner, [0, 300, 300, 600], [False, False, True, True])  # class word "dog" holds no "sks" test
    out = reg.losses(tuner, ctx)
    only = _ctx(tuner, [300], [False])
    only.pred = ctx.pred[1:2].detach().requires_grad_(True)
    only.noisy = ctx.noisy[1:2]
    # t=0 and the two prior samples contribute nothing; the mean runs over the 2 instance samples
    torch.testing.assert_close(out["loss_sude"], reg.losses(tuner, only)["loss_sude"] / 2)
    out["loss_sude"].backward()
    grad = ctx.pred.grad.flatten(1).abs().sum(1)
    assert grad[1] > 0 and torch.all(grad[[0, 2, 3]] == 0)
    assert all(p.grad is None for p in tuner.unet.parameters())  # category/uncond passes ran without grad


def test_weight_zero_reproduces_the_base_exactly(tmp_path, tiny_sd1, concept_dir):
    base = train(train_config(tiny_sd1, concept_dir, tmp_path / "b", "dreambooth", seed=3)).artifact
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "s", "sude", {"class_word": "dog", "lambda_sude": 0.0}, seed=3)
    sude = train(cfg).artifact
    a, b = load_artifact(base), load_artifact(sude)
    assert a.kind == b.kind == "delta"
    assert a.weights.keys() == b.weights.keys() and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert b.method == "sude" and b.metadata["base"] == "dreambooth"
