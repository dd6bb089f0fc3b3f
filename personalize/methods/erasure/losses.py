"""The erasure targets and losses as pure functions of noise predictions (B, 4, h, w).

Notation: eps* is the frozen teacher (the original UNet), eps_theta the student being trained; c_e the concept
to erase, c_0 the empty prompt, c_a an alternative concept. g_e = eps*(c_e) - eps*(c_0) is the implicit
classifier term that classifier-free guidance scales.

ESD (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023, eq. 3 and Fig. 2; the paper-era
official code, rohitgandikota/erasing train-scripts/train-esd.py):
    target_ESD = eps*(c_0) - eta * g_e
i.e. the original unconditional score pushed *against* the concept (negative guidance). With `erase_from` c_f
(an attribute of a concept, e.g. "glasses" from "a photo of a person"; the newer official `esd_sd.py`'s
`--erase_from`, not in the paper) the base of the target is eps*(c_f) instead of eps*(c_0), as there.
The newer `esd_sd.py` without `--erase_from` builds its target on eps*(c_e) instead:
    eps*(c_e) - eta_new * g_e  =  eps*(c_0) - (eta_new - 1) * g_e
so its `--negative_guidance` eta_new is this function's eta + 1: its default 2 is the paper's eta 1.

All-but-One (Hong, Lee, Woo, AAAI 2024, "All but One: Surgical Concept Erasing with Model Preservation"): the
paper's equations were not available to us and no official code exists, so this is a reconstruction from its
stated idea (edit only the guidance term toward an alternative, keep the unconditional score): unverified.
    target_AbO = eps*(c_e) - eta * (g_e - g_a),  g_a = eps*(c_a) - eps*(c_0)   (g_a = 0 without an alternative)
               = eps*(c_e) - eta * (eps*(c_e) - eps*(c_a))
    loss_uncond = || eps_theta(c_0) - eps*(c_0) ||^2
With eta = 1 the target is eps*(c_a); with c_a = c_0 and eta = 1 + eta_ESD it is exactly target_ESD.
"""

from __future__ import annotations

import torch


def esd_target(eps_0: torch.Tensor, eps_e: torch.Tensor, eta: float,
               eps_from: torch.Tensor | None = None) -> torch.Tensor:
    """eps*(c_0) - eta (eps*(c_e) - eps*(c_0)); with `eps_from` = eps*(c_f): eps*(c_f) - eta (...)."""
    base = eps_0 if eps_from is None else eps_from
    return base - eta * (eps_e - eps_0)


def abo_target(eps_0: torch.Tensor, eps_e: torch.Tensor, eta: float,
               eps_a: torch.Tensor | None = None) -> torch.Tensor:
    """eps*(c_e) - eta (g_e - g_a) with g_e = eps*(c_e) - eps*(c_0), g_a = eps*(c_a) - eps*(c_0) (0 without
    an alternative)."""
    g_e = eps_e - eps_0
    g_a = torch.zeros_like(g_e) if eps_a is None else eps_a - eps_0
    return eps_e - eta * (g_e - g_a)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean squared error over every element, as the official code's `torch.nn.MSELoss()`; the target is
    detached (it comes from the frozen teacher)."""
    return ((pred.float() - target.detach().float()) ** 2).mean()
