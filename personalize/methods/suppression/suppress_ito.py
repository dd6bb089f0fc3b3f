"""SuppressEOT's inference-time optimization (ITO, paper Sec. 3.3): nudge the text embedding so the attention of
the suppressed words moves away from where the original prompt put it, while the other words keep theirs.

Where this follows the official code (sen-mao/SuppressEOT `losses/attn_loss.py`, `suppress_eot_w_nulltext.py`)
rather than the paper: the distance is the cosine distance 1 - cos over the spatial positions of one token's map,
in float64 (the paper writes squared L2: `loss_form="paper"`); the self-attention retain/erase terms (not in the
paper) are included; the update is plain gradient descent c <- c - s * sqrt(r_i) * grad with r = linspace(1, 0.1,
steps), not Adam; ITO restarts from SWR(c) at every step, so it only changes the steps it runs in.
Where we differ from both: the maps are averaged over all heads (the official aggregator keeps only the first half
of the heads in a batch-1 pass), and the reference maps A_t come from the original embedding on the *same* latent
as the optimized one, not from a second, unsuppressed denoising branch (which would double the cost of every
step); the two agree until the first suppressed step.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MASK_THRESHOLD = 0.85  # official calc_mask: the suppressed words; the other words use 0.85 + 0.1
MASK_SIZE = 256  # official: the 0-255 map is upsampled to 256x256 before thresholding


@dataclass(frozen=True)
class TokenSets:
    """Positions (SOT = 0) of one prompt: `erase` = the suppressed words, `retain` = the other words, 1..n-2."""

    erase: tuple[int, ...]
    retain: tuple[int, ...]

    @classmethod
    def from_prompt(cls, negative: list[int], n_tokens: int) -> "TokenSets":
        words = range(1, n_tokens - 1)
        return cls(tuple(negative), tuple(p for p in words if p not in negative))


def cosine_distance(a: torch.Tensor, b: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """1 - cos(a, b) along `dim`, in float64 as the official loss computes it."""
    return 1.0 - F.cosine_similarity(a.double(), b.double(), dim=dim)


def token_masks(cross: torch.Tensor, tokens: TokenSets) -> dict[int, torch.Tensor]:
    """Per word, the pixels where the *original* cross map is near its peak (official `calc_mask`): scaled to
    0-255, upsampled bilinearly to 256x256, kept where >= 0.85 max (suppressed words) or 0.95 max (others),
    downsampled bilinearly to (h, w) and kept where > 0. `cross` (h, w, L) -> {position: bool (h*w,)}."""
    h, w, _ = cross.shape
    out = {}
    for pos in tokens.erase + tokens.retain:
        m = cross[:, :, pos].detach().double()
        m = 255 * m / m.max().clamp_min(1e-30)
        up = F.interpolate(m[None, None], size=(MASK_SIZE, MASK_SIZE), mode="bilinear")
        thr = MASK_THRESHOLD if pos in tokens.erase else MASK_THRESHOLD + 0.1
        up = (up >= up.max() * thr).double() * 255
        out[pos] = F.interpolate(up, size=(h, w), mode="bilinear").reshape(-1) > 0
    return out


def ito_loss(cross_ref, cross_opt, self_ref, self_opt, tokens: TokenSets, supp) -> torch.Tensor:
    """One prompt's ITO loss from (h, w, L) cross maps and (h, w, h*w) self maps, reference vs optimized.

    official: lambda_retain * sum_retain d(A_i, A^_i) + lambda_erase * sum_erase d(A_i, A^_i) (lambda_erase < 0, so
    the loss falls as the suppressed maps move apart), plus for every pixel j of a word's mask the distance between
    column j of the self maps (the attention all pixels pay to j), weighted like the cross terms.
    paper: lambda_retain * ||A^PE - A^PE_hat||^2 + lambda_erase * ||A^NE - A^NE_hat||^2 (mean squared error)."""
    h, w, _ = cross_ref.shape
    a, b = cross_ref.reshape(h * w, -1), cross_opt.reshape(h * w, -1)  # (HW, L)
    if supp.loss_form == "paper":
        def dist(p):
            return (a[:, p].double() - b[:, p].double()).pow(2).mean()
    else:
        def dist(p):
            return cosine_distance(a[:, p], b[:, p])
    total = a.new_zeros((), dtype=torch.float64)
    for lam, positions in ((supp.lambda_retain, tokens.retain), (supp.lambda_erase, tokens.erase)):
        if lam:
            total = total + lam * sum((dist(p) for p in positions), total.new_zeros(()))
    if supp.loss_form == "official" and (supp.lambda_self_retain or supp.lambda_self_erase):
        per_key = cosine_distance(self_ref.reshape(h * w, h * w), self_opt.reshape(h * w, h * w), dim=0)  # (HW,)
        masks = token_masks(cross_ref, tokens)
        for lam, positions in ((supp.lambda_self_retain, tokens.retain), (supp.lambda_self_erase, tokens.erase)):
            if lam:
                total = total + lam * sum((per_key[masks[p]].sum() for p in positions), total.new_zeros(()))
    return total


def step_size(supp, step: int, steps: int) -> float:
    """s * sqrt(r_i), r = linspace(1.0, 0.1, steps) (official: 50 steps, s = 20 -> about 18 at step 10)."""
    r = torch.linspace(1.0, 0.1, steps)[step].item()
    return supp.ito_step_size * r**0.5


@contextmanager
def frozen(module: torch.nn.Module):
    """Parameters with requires_grad off inside the block (only the embedding is a leaf), as they were after."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _maps(unet, recorder, latents, t, embeds, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    with recorder.recording() as store:
        unet(latents, t, encoder_hidden_states=embeds, **kwargs)
        size = recorder.size(latents.shape[-2:])
        cross = store.aggregate("cross", size)
        selfm = store.aggregate("self", size) if store.maps["self"] else None
    return cross, selfm


def optimize(unet, recorder, latents, t, original, start, token_sets: list[TokenSets], supp, step: int,
             steps: int, unet_kwargs: dict | None = None) -> torch.Tensor:
    """ITO for one denoising step: `start` (B, L, D) (the SWR embedding) descends `supp.ito_iters` times on the
    summed per-image loss against the maps of `original` (B, L, D) on the same `latents`; returns it detached."""
    kwargs = unet_kwargs or {}
    lr = step_size(supp, step, steps)
    with frozen(unet), torch.enable_grad():
        with torch.no_grad():
            cross_ref, self_ref = _maps(unet, recorder, latents, t, original, kwargs)
        embeds = start.detach().clone().requires_grad_(True)
        for _ in range(supp.ito_iters):
            cross, selfm = _maps(unet, recorder, latents, t, embeds, kwargs)
            loss = sum(ito_loss(cross_ref[b], cross[b], None if self_ref is None else self_ref[b],
                                None if selfm is None else selfm[b], token_sets[b], supp)
                       for b in range(len(token_sets)))
            if not loss.requires_grad:  # every term weighted 0
                break
            (grad,) = torch.autograd.grad(loss, embeds)
            with torch.no_grad():
                embeds -= lr * grad.to(embeds.dtype)
    recorder.store.reset()
    return embeds.detach()
