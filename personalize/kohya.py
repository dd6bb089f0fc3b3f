"""kohya's LoRA layout: the file format AUTOMATIC1111, ComfyUI, kohya's sd-scripts and diffusers all read.

One module of the model, one group of keys:

    lora_unet_<UNet module path, '.' -> '_'>.lora_down.weight        (r, in)      Linear
                                            .lora_up.weight          (out, r)
                                            .alpha                   ()           scale = alpha / r
    lora_te_text_model_<text-encoder module path, '.' -> '_'>...     the same for the CLIP text encoder

A 1x1 convolution is 4-D, down (r, in, 1, 1) and up (out, r, 1, 1); a 3x3 convolution takes kohya's LoCon layout,
down (r, in, 3, 3) and up (out, r, 1, 1). The change a module gets is `scale * up @ down` (the convolutions'
weights flattened to (out, in * k * k)). Module paths are diffusers' names: kohya's sd-scripts build SD 1.x/2.x
LoRA on a UNet with diffusers' module names and on transformers' CLIPTextModel (`networks/lora.py`,
`LoRANetwork`), A1111's built-in Lora extension maps them to its LDM modules (`extensions-builtin/Lora/
networks.py`, `convert_diffusers_name_to_compvis`), ComfyUI keeps a map from them (`comfy/lora.py`,
`model_lora_keys_unet`), diffusers converts them back (`_convert_non_diffusers_lora_to_diffusers`).

kohya's loader (`create_network_from_weights`) creates a module only for the Linear and Conv2d layers inside
the UNet's Transformer2DModel, ResnetBlock2D, Downsample2D and Upsample2D blocks and the text encoder's
CLIPAttention and CLIPMLP; a key for any other layer (conv_in, time_embedding, ...) it silently ignores.
`kohya_name` keeps to those layers, so every key we write is read by all four tools; the rest is for the
exporter to report. Biases and norms never fit a LoRA.

Every module of a file gets the same rank and alpha: diffusers 0.42's converter mixes up the alphas of files
whose modules differ in rank or alpha (measured: some modules get another's scale, some none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from personalize.errors import PersonalizeError

UNET_PREFIX, TE_PREFIX = "lora_unet_", "lora_te_"
# the layers kohya's LoRANetwork makes a module for (its UNET_TARGET_REPLACE_MODULE(+_CONV2D_3X3) and
# TEXT_ENCODER_TARGET_REPLACE_MODULE), written as diffusers module paths
_BLOCK = r"(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)"
UNET_LAYER_RE = re.compile(
    rf"^{_BLOCK}\.(?:attentions\.\d+\.(?:proj_in|proj_out|transformer_blocks\.\d+\.(?:attn[12]\.(?:to_q|to_k|to_v|"
    r"to_out\.0)|ff\.net\.(?:0\.proj|2)))|resnets\.\d+\.(?:conv1|conv2|time_emb_proj|conv_shortcut)|"
    r"(?:downsamplers|upsamplers)\.0\.conv)$")
TE_LAYER_RE = re.compile(r"^(?:text_model\.)?encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12])$")


class LoraFormatError(PersonalizeError):
    """A LoRA that cannot be written in kohya's layout; the message says why."""


@dataclass
class Factor:
    """One module's low-rank change: `scale * up @ down`, kohya's down/up shapes (module docstring)."""

    down: torch.Tensor  # (r, in) or (r, in, k, k)
    up: torch.Tensor  # (out, r) or (out, r, 1, 1)
    scale: float = 1.0  # alpha / r

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, shape=None) -> torch.Tensor:
        """The weight change, in the layer's weight shape (default: (out, in) or (out, in, k, k) from the factors)."""
        flat = self.up.flatten(1).double() @ self.down.flatten(1).double() * self.scale  # (out, in * k * k)
        return flat.reshape(shape or (self.up.shape[0], *self.down.shape[1:])).float()


def kohya_name(key: str) -> str | None:
    """`unet.<module path>` / `text_encoder.<module path>` -> its kohya module name, or None where kohya's loader
    makes no module (then no tool but ComfyUI and diffusers would read it)."""
    part, _, path = key.partition(".")
    if part == "unet" and UNET_LAYER_RE.match(path):
        return UNET_PREFIX + path.replace(".", "_")
    if part == "text_encoder" and TE_LAYER_RE.match(path):
        return TE_PREFIX + "text_model_" + path.removeprefix("text_model.").replace(".", "_")
    return None


def factor(diff: torch.Tensor, rank: int) -> tuple[Factor, float]:
    """The best rank-`rank` approximation of a weight difference (out, in) or (out, in, k, k), the truncated SVD
    dW ~ U_r S_r V_r^T split as up = U_r sqrt(S_r), down = sqrt(S_r) V_r^T, as a Factor (scale 1), and its relative
    error ||dW - up down|| / ||dW||. A layer of smaller rank is zero-padded to `rank`, so that every module of a
    file has the same rank (module docstring).

    The singular vectors come from the eigenvectors of the small Gram matrix (dW dW^T or dW^T dW): the same
    subspace as the SVD's, about 10x faster on SD's (1280, 11520) 3x3 convolutions; at full rank the projection
    is the identity, so the reconstruction is exact whatever the eigensolver's precision."""
    flat = diff.flatten(1)
    work = flat.float() if flat.numel() > 4_000_000 else flat.double()  # float64 where it is cheap
    wide = work.shape[0] <= work.shape[1]
    m = work if wide else work.T  # (small, big)
    r = min(rank, m.shape[0])
    u = torch.linalg.eigh(m @ m.T).eigenvectors[:, -r:].flip(1)  # (small, r), largest first
    proj = u.T @ m  # (r, big) = S_r V_r^T
    s = proj.norm(dim=1)  # the singular values
    root = torch.where(s > 0, s.sqrt(), torch.ones_like(s))
    small, big = u * torch.where(s > 0, root, torch.zeros_like(s)), proj / root[:, None]
    left, right = (small, big) if wide else (big.T, small.T)  # (out, r), (r, in * k * k)
    up = torch.zeros(work.shape[0], rank, dtype=work.dtype)
    down = torch.zeros(rank, work.shape[1], dtype=work.dtype)
    up[:, :r], down[:r] = left, right
    norm = work.norm()
    err = float((work - up @ down).norm() / norm) if norm > 0 else 0.0
    if diff.ndim == 4:
        return Factor(down.reshape(rank, *diff.shape[1:]).float().contiguous(),
                      up.reshape(diff.shape[0], rank, 1, 1).float().contiguous()), err
    return Factor(down.float().contiguous(), up.float().contiguous()), err


def max_rank(diff: torch.Tensor) -> int:
    """The largest rank a difference of this shape can have."""
    return min(diff.shape[0], diff[0].numel())


def state_dict(factors: dict[str, Factor]) -> dict[str, torch.Tensor]:
    """kohya keys for {`unet.<path>` / `text_encoder.<path>`: Factor}; every module must have kohya_name, and all
    the same rank and alpha (module docstring)."""
    if not factors:
        raise LoraFormatError("no module to write: a LoRA file needs at least one layer kohya can hold")
    shapes = {(f.rank, round(f.scale * f.rank, 6)) for f in factors.values()}
    if len(shapes) != 1:
        raise LoraFormatError(f"every module of a kohya LoRA needs the same rank and alpha, got {sorted(shapes)}")
    out = {}
    for key, f in sorted(factors.items()):
        name = kohya_name(key)
        if name is None:
            raise LoraFormatError(f"{key}: kohya's loader has no module for this layer")
        out |= {f"{name}.lora_down.weight": f.down.contiguous(), f"{name}.lora_up.weight": f.up.contiguous(),
                f"{name}.alpha": torch.tensor(float(f.scale * f.rank))}
    return out


def metadata(factors: dict[str, Factor], family: str, name: str) -> dict[str, str]:
    """The training metadata kohya's tools write and A1111 reads: network module, dim and alpha (LoCon's conv_dim
    when a 3x3 convolution is in), and the model version (A1111 lists a LoRA only for its family)."""
    import json

    f = next(iter(factors.values()))
    rank, alpha = str(f.rank), f"{f.scale * f.rank:g}"
    conv3 = any(x.down.ndim == 4 and x.down.shape[2:] != (1, 1) for x in factors.values())
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": rank, "ss_network_alpha": alpha,
            "ss_v2": str(family == "sd2"), "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2"}[family],
            "ss_output_name": name}
    if conv3:
        meta["ss_network_args"] = json.dumps({"conv_dim": rank, "conv_alpha": alpha})
    return meta
