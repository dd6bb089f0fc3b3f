"""Face2Diffusion's losses, as pure functions.

- `arcface_logits` / `loss_arcface`: the additive angular margin loss (Deng et al., "ArcFace", CVPR 2019, Eq. 3)
  used to pretrain the MSID encoder on its *concatenated* multi-scale vector (F2D Sec. 3.1: every scale is made
  identity-discriminative, so shallow scales stop carrying pose and expression).
- `cgdr_target` / `loss_cgdr`: class-guided denoising regularization (F2D Sec. 3.3, Fig. 2): the face region is
  denoised toward the true noise, the background toward what the frozen model predicts for "a photo of a
  person"; the epsilon-space form with mean reduction (the paper's exact space and weighting: unverified).
- `expression_keep`: expression guidance's per-sample choice (F2D Sec. 3.2): keep the photo's expression vector
  or drop it to the learned null expression (the drop rate is unverified; 0.5 by default here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def arcface_logits(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: float = 64.0,
                   margin: float = 0.5) -> torch.Tensor:
    """(B, D) features, (C, D) class centres, (B,) labels -> (B, C) logits s * cos(theta), with the target class's
    angle widened by `margin`: s * cos(theta_y + m). Past theta_y + m > pi (where cos stops decreasing) the
    target logit is s * (cos(theta_y) - m * sin(m)), insightface's fallback, so the logit keeps falling."""
    cos = F.normalize(features, dim=1) @ F.normalize(weight, dim=1).T  # (B, C)
    cos_y = cos.gather(1, labels[:, None]).clamp(-1, 1)  # (B, 1)
    sin_y = (1 - cos_y**2).clamp(min=1e-12).sqrt()  # finite gradient at theta = 0
    widened = cos_y * math.cos(margin) - sin_y * math.sin(margin)  # cos(theta + m)
    widened = torch.where(cos_y > math.cos(math.pi - margin), widened, cos_y - margin * math.sin(margin))
    return scale * cos.scatter(1, labels[:, None], widened)


def loss_arcface(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, scale: float = 64.0,
                 margin: float = 0.5) -> torch.Tensor:
    return F.cross_entropy(arcface_logits(features, weight, labels, scale, margin), labels)


def cgdr_target(eps: torch.Tensor, eps_class: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """M * eps + (1 - M) * stopgrad(eps_class): (B, C, h, w) each, mask (B, 1, h, w) in [0, 1] (1 = face)."""
    return mask * eps + (1 - mask) * eps_class.detach()


def loss_cgdr(pred: torch.Tensor, eps: torch.Tensor, eps_class: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|| target - eps_theta(z_t, t, c*) ||^2, mean over every element."""
    return F.mse_loss(pred.float(), cgdr_target(eps, eps_class, mask).float())


def expression_keep(n: int, p_uncond: float, generator: torch.Generator) -> torch.Tensor:
    """(n,) in {0., 1.}: 1 keeps the photo's expression, 0 (probability `p_uncond`) uses null_exp."""
    return (torch.rand(n, generator=generator) >= p_uncond).float()
