"""What a regularizer's loss does to the model, measured directly (not through generated images).

- `text_drift`: 1 - cos of the final-layer feature at the EOS position of the personalized phrase ("a sks
  circle") and the class phrase ("a circle"), computed with the tuned text encoder. The ClassDiffusion paper
  (Huang et al., ICLR 2025, sec. 3) names this drift as the cause of lost compositions; its SPL minimizes it.
- `category_margin`: the diffusion model's implicit classifier (SuDe, Qiao et al., CVPR 2024, sec. 3.2): at
  x_t from a subject image, the subject's noise prediction eps_s is "category-like" when it is nearer the
  category's prediction eps_c than the unconditional eps_u. Reported as the mean of
  ||eps_s - eps_u||^2 - ||eps_s - eps_c||^2 over images and timesteps (per element): up to a positive factor per
  timestep, the log-likelihood of the category that SuDe's loss raises. Fixed noise and timesteps, so arms
  compare on the same x_t.

Both are computed here from the pipeline's own modules; neither calls the methods' code.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def eos_feature(sd, text: str) -> torch.Tensor:
    """(width,) final hidden state at the first EOS token of `text` (the tokenizer's own EOS id)."""
    ids = sd.tokenizer(text, return_tensors="pt").input_ids.to(sd.text_encoder.device)  # (1, L), no padding
    hidden = sd.text_encoder(ids).last_hidden_state[0]  # (L, width)
    eos = (ids[0] == sd.tokenizer.eos_token_id).nonzero()[0, 0]
    return hidden[eos].float()


def text_drift(sd, phrase: str, class_phrase: str) -> float:
    """1 - cos(f(phrase), f(class_phrase)); 0 when the personalized phrase means exactly its class."""
    return 1.0 - float(torch.cosine_similarity(eos_feature(sd, phrase), eos_feature(sd, class_phrase), dim=0))


@torch.no_grad()
def category_margin(sd, images, prompt: str, class_prompt: str, timesteps=(100, 300, 500, 700, 900),
                    seed: int = 0) -> float:
    """Mean ||eps_s - eps_u||^2 - ||eps_s - eps_c||^2 at x_t from `images` (PIL), prompt vs class prompt vs ''."""
    import numpy as np

    device, dtype = sd.unet.device, sd.unet.dtype
    pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1)
                          .permute(2, 0, 1) for im in images]).to(device, dtype)  # (N, 3, H, W)
    latents = sd.vae.encode(pixels).latent_dist.mean * sd.vae.config.scaling_factor  # (N, 4, h, w)
    embeds = [sd.encode_prompt(p, device, 1, False)[0] for p in (prompt, class_prompt, "")]  # 3 x (1, 77, D)
    gen = torch.Generator().manual_seed(seed)
    margins = []
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=gen).to(device, dtype)
        tt = torch.full((len(latents),), t, device=device, dtype=torch.long)
        x_t = sd.scheduler.add_noise(latents, noise, tt)
        eps_s, eps_c, eps_u = (sd.unet(x_t, tt, encoder_hidden_states=e.expand(len(latents), -1, -1)).sample
                               for e in embeds)
        margins.append(((eps_s - eps_u) ** 2).mean() - ((eps_s - eps_c) ** 2).mean())
    return float(torch.stack(margins).mean())
