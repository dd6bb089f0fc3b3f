"""SuDe (Qiao et al., CVPR 2024, "Facechain-SuDe: Building Derived Class to Inherit Category Attributes for
One-shot Subject-Driven Generation"): the subject should be classified as its category by the diffusion
model's own implicit classifier.

For the subject prediction eps_s (with gradient) and, without gradient and with the current weights, the
category and unconditional predictions eps_c, eps_u at the same x_t, t (official `ldm/models/diffusion/ddpm.py`,
`prob_loss_func_class`):

    mu(eps)  = coef1_t * x0(eps) + coef2_t * x_t                  (DDPM posterior mean)
    L_raw    = [ mean((mu_s - mu_c)^2) - mean((mu_s - mu_u)^2) ] / (2 * var_t + 1e-6)     per sample
    L_ref    = the same with the category's own mean in place of mu_s
    g        = 1[L_raw > L_ref]          (truncation: stop once the subject is as category-like as the category)
    loss     = lambda_sude * g * L_raw / coef1_t

which equals lambda_sude * g * F_t * [mean((eps_s-eps_c)^2) - mean((eps_s-eps_u)^2)] (expand the means): the
gradient pushes eps_s along the classifier-free-guidance direction eps_c - eps_u. Departures from the official
code (its quirks): per sample, any batch size; prior samples routed by origin, not by a string
test on the caption; t < `min_timestep` (default 1, the t=0 spike F_0 ~ 851) gets no term. The x0 of mu_c, mu_u
is not clamped, as in the official code: `p_mean_variance`'s `clip_denoised` defaults to True, but LDM's
`LatentDiffusion.__init__` sets `self.clip_denoised = False` (ldm/models/diffusion/ddpm.py) and passes it; an
asymmetric clamp to [-1, 1] is an option of ours (`clamp_x0`, off). The category and unconditional passes are
one batched UNet call under no_grad.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from personalize.methods.base import MethodError
from personalize.methods.personalization.bases import base_spec
from personalize.methods.personalization.tuner import BaseContext, StepContext, Tuner

TRUNCATIONS = ("reference", "none")


@dataclass
class Options:
    name: str = "sude"
    base: str = "dreambooth"  # the official code's baseline; any personalization base, options under `method.base`
    class_word: str = ""  # required: the category, "dog" for "photo of a sks dog"
    lambda_sude: float = 0.4  # the official --sude_weight: its argparse/yaml default; its examples use 0.8 and 1.6
    category_template: str = "photo of a {cls}"
    uncond_prompt: str = ""
    truncate: str = "reference"  # official rule; "none" for ablations (the loss has no lower bound)
    min_timestep: int = 1  # official 0
    clamp_x0: bool = False  # false: as the official code (LDM never clamps); true: clamp mu_c/mu_u's x0 to [-1, 1]
    base_options: object = None  # the base's Options, filled by `parse_options`
    RENAMED: ClassVar[dict] = {"sude_weight": "lambda_sude"}  # old option names, read with a warning


# --------------------------------------------------------------------------------------- the loss


def posterior_coefficients(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """DDPM posterior q(x_{t-1} | x_t, x0) for timesteps t (B,): coef1 (of x0), coef2 (of x_t), variance."""
    a_bar = alphas_cumprod[t]
    a_prev = torch.where(t > 0, alphas_cumprod[(t - 1).clamp(min=0)], torch.ones_like(a_bar))
    beta = 1 - a_bar / a_prev
    return {"a_bar": a_bar, "coef1": beta * a_prev.sqrt() / (1 - a_bar),
            "coef2": (1 - a_prev) * (1 - beta).sqrt() / (1 - a_bar), "var": beta * (1 - a_prev) / (1 - a_bar)}


def sude_terms(eps_s, eps_c, eps_u, x_t, t, alphas_cumprod, truncate: str = "reference", clamp_x0: bool = False):
    """Per-sample SuDe loss (B,) and gate (B,), without the weight. eps_* and x_t: (B, C, h, w); eps_c and
    eps_u carry no gradient. Computed in the dtype of eps_s (float32 in training, float64 in tests)."""
    k = {n: v.to(eps_s.dtype).view(-1, 1, 1, 1) for n, v in posterior_coefficients(alphas_cumprod.to(t.device), t).items()}
    x_t = x_t.to(eps_s.dtype)

    def mean_from(eps, clamp):  # (B, C, h, w)
        x0 = (x_t - (1 - k["a_bar"]).sqrt() * eps) / k["a_bar"].sqrt()
        return k["coef1"] * (x0.clamp(-1, 1) if clamp else x0) + k["coef2"] * x_t

    mu_s = mean_from(eps_s, False)
    mu_c, mu_u = mean_from(eps_c.to(eps_s.dtype), clamp_x0), mean_from(eps_u.to(eps_s.dtype), clamp_x0)
    denom = 2 * k["var"].flatten() + 1e-6  # (B,)

    def raw(mu):  # -log p(c_cate | mu) up to a constant, per sample
        return (((mu - mu_c) ** 2).flatten(1).mean(1) - ((mu - mu_u) ** 2).flatten(1).mean(1)) / denom

    l_raw = raw(mu_s)
    if truncate == "reference":
        x_c = mean_from(eps_c.to(eps_s.dtype), False) if clamp_x0 else mu_c  # the category's unclamped mean
        gate = (l_raw.detach() > raw(x_c)).to(eps_s.dtype)
    else:
        gate = torch.ones_like(l_raw)
    return gate * l_raw / k["coef1"].flatten(), gate


def to_epsilon(pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, alphas_cumprod, prediction_type: str):
    """v-prediction -> epsilon: eps = sqrt(a_bar) v + sqrt(1 - a_bar) x_t."""
    if prediction_type == "epsilon":
        return pred
    a_bar = alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1).to(pred.dtype)
    return a_bar.sqrt() * pred + (1 - a_bar).sqrt() * x_t.to(pred.dtype)


# --------------------------------------------------------------------------------------- the regularizer


class SubjectDerived:
    """SuDe as a `Regularizer` of a personalization base (`Tuner`)."""

    def __init__(self, options: Options):
        self.o = options
        self.cond_cache = None

    def setup(self, base: BaseContext) -> None:
        self.refresh = base.train_text_encoder  # text-encoder layers train: re-encode every step
        self.alphas_cumprod = base.scheduler.alphas_cumprod.float()

    def loss_weights(self) -> dict[str, float]:
        return {"loss_sude": self.o.lambda_sude}

    def conditioning(self, base: BaseContext) -> torch.Tensor:
        """(2, 77, width): the category prompt and the unconditional prompt, current text encoder, no gradient."""
        if self.cond_cache is None or self.refresh:
            with torch.no_grad():
                prompts = [self.o.category_template.format(cls=self.o.class_word), self.o.uncond_prompt]
                self.cond_cache = base.encode_text(prompts).detach()
        return self.cond_cache

    def losses(self, base: BaseContext, ctx: StepContext) -> dict[str, torch.Tensor]:
        active = ~ctx.is_prior & (ctx.timesteps >= self.o.min_timestep)  # (B,)
        n_inst = int((~ctx.is_prior).sum())
        if not bool(active.any()):
            zero = ctx.pred.sum() * 0
            return {"loss_sude": zero, "sude_gate": zero.detach()}
        x_t, t = ctx.noisy[active], ctx.timesteps[active]  # (b, C, h, w), (b,)
        b = x_t.shape[0]
        cond = self.conditioning(base)
        cond = torch.cat([cond[:1].expand(b, -1, -1), cond[1:].expand(b, -1, -1)])  # (2b, 77, width)
        with torch.no_grad(), base.autocast():  # one batched call, current weights
            both = base.unet(torch.cat([x_t, x_t]).to(cond.dtype), torch.cat([t, t]), cond).sample.float()
        kind, ac = base.scheduler.config.prediction_type, self.alphas_cumprod
        eps_s = to_epsilon(ctx.pred[active], x_t, t, ac, kind)
        eps_c, eps_u = (to_epsilon(p, x_t, t, ac, kind) for p in both.chunk(2))
        per_sample, gate = sude_terms(eps_s, eps_c, eps_u, x_t, t, ac, self.o.truncate, self.o.clamp_x0)
        # averaged over the instance samples; inactive ones (t < min_timestep) count as 0
        return {"loss_sude": per_sample.sum() / max(n_inst, 1), "sude_gate": gate.sum().detach() / max(n_inst, 1)}


def build(options: Options, config) -> Tuner:
    o = options
    if not o.class_word.strip():
        raise MethodError("method.class_word is required for sude: the subject's category (e.g. 'dog')")
    if "{cls}" not in o.category_template:
        raise MethodError(f"method.category_template needs {{cls}}, got {o.category_template!r}")
    if o.truncate not in TRUNCATIONS:
        raise MethodError(f"method.truncate must be one of {TRUNCATIONS}, got {o.truncate!r}")
    if o.min_timestep < 0:
        raise MethodError(f"method.min_timestep must be >= 0, got {o.min_timestep}")
    spec = base_spec(o, {"class_word": o.class_word, "lambda_sude": str(o.lambda_sude)})
    return Tuner(spec, config, regularizers=(SubjectDerived(o),))

