"""Face2Diffusion's two trained networks in plain torch (Shiohara & Yamasaki, "Face2Diffusion for Fast and Editable
Face Personalization", CVPR 2024, Sec. 3.1-3.2; official code mapooon/Face2Diffusion, src/msid.py, src/modules.py).

    MSID encoder  f_id:  aligned face (B, 3, S, S) in [-1, 1] -> multi-scale identity vector (B, 4 * D)
    mapping net   f_map: identity vector (+ expression vector) -> two word vectors (B, W) each: "f" and "l"

Parameter names follow the official state dicts, so their weights load strictly once converted to safetensors
(`personalize convert`): the encoder is a timm-style ViT (`cls_token`, `pos_embed`, `patch_embed.proj`,
`blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`) plus `norms.layer_<i>` heads (BatchNorm1d,
LayerNorm) on the CLS token after the blocks in `ext_depths`; the ViT's own final `norm` exists but is not used by
the official forward. The mapping net is the official `IMG2TEXTwithEXP`: `null_exp`, and two MLPs `i2t_first`,
`i2t_last` of `layers.<i>.0` Linear (+ Dropout, LeakyReLU 0.2) and `fc_out`. The defaults are the official
sizes (21,450,624 and 12,000,832 parameters); the toy world uses small ones.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MSIDConfig:
    """`msid_base_patch8_112` (src/msid.py): 112 px, patch 8, width 384, 12 blocks of 12 heads, CLS after 2/5/8/11."""

    img_size: int = 112
    patch_size: int = 8
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    ext_depths: tuple[int, ...] = (2, 5, 8, 11)

    def __post_init__(self):
        object.__setattr__(self, "ext_depths", tuple(int(d) for d in self.ext_depths))
        if self.img_size % self.patch_size or self.embed_dim % self.num_heads:
            raise ValueError(f"MSID sizes do not fit: img_size {self.img_size} must be a multiple of patch_size "
                             f"{self.patch_size}, embed_dim {self.embed_dim} of num_heads {self.num_heads}")
        if not self.ext_depths or not all(0 <= d < self.depth for d in self.ext_depths):
            raise ValueError(f"MSID ext_depths {self.ext_depths}: expected block indices in 0..{self.depth - 1}")

    @property
    def out_dim(self) -> int:
        return self.embed_dim * len(self.ext_depths)


@dataclass(frozen=True)
class MappingConfig:
    """`IMG2TEXTwithEXP(1536, 1536, 768, n_layer=2, dropout=0.1, exp_dim=64)` as built in inference_f2d.py."""

    embed_dim: int = 1536
    middle_dim: int = 1536
    output_dim: int = 768
    n_layer: int = 2
    dropout: float = 0.1
    exp_dim: int = 64


def config_json(config) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_json(cls, text: str):
    return cls(**json.loads(text))


# ------------------------------------------------------------------------------------------ MSID


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D / heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm ViT block (timm's `Block` with no layer scale and no drop path)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MSIDEncoder(nn.Module):
    """f_id: the CLS token after each block in `ext_depths`, through BatchNorm1d + LayerNorm, concatenated (Sec.
    3.1, "multi-scale identity"). Run it in eval mode (BatchNorm running statistics), as inference_f2d.py does."""

    def __init__(self, config: MSIDConfig = MSIDConfig()):
        super().__init__()
        c = self.config = config
        n = (c.img_size // c.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, c.embed_dim) * 0.02)
        self.patch_embed = PatchEmbed(c.patch_size, c.embed_dim)
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)  # in the state dict; unused by the forward (official)
        self.norms = nn.ModuleDict({f"layer_{d}": nn.Sequential(nn.BatchNorm1d(c.embed_dim), nn.LayerNorm(c.embed_dim))
                                    for d in c.ext_depths})

    def scales(self, faces: torch.Tensor) -> list[torch.Tensor]:
        """The per-scale features, each (B, D), in `ext_depths` order."""
        s = self.config.img_size
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, s, s):
            raise ValueError(f"MSID expects aligned faces of shape (B, 3, {s}, {s}) in [-1, 1], got {tuple(faces.shape)}")
        x = self.patch_embed(faces)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed  # (B, N + 1, D)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.config.ext_depths:
                out.append(self.norms[f"layer_{i}"](x[:, 0]))
            if i == max(self.config.ext_depths):
                break
        return out

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.scales(faces), dim=1)  # (B, len(ext_depths) * D), e.g. (B, 1536)


# ------------------------------------------------------------------------------------------ mapping network


class MappingMLP(nn.Module):
    """One of f_map's two heads: n_layer x [Linear, Dropout, LeakyReLU(0.2)] then `fc_out` (modules.py: the
    dropout sits before the activation)."""

    def __init__(self, in_dim: int, c: MappingConfig):
        super().__init__()
        dims = [in_dim] + [c.middle_dim] * c.n_layer
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.Dropout(c.dropout), nn.LeakyReLU(0.2))
                                    for a, b in zip(dims, dims[1:]))
        self.fc_out = nn.Linear(dims[-1], c.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc_out(x)


class MappingNetwork(nn.Module):
    """f_map (Sec. 3.2, expression guidance): concat(identity, expression) -> the first and last word vectors.

    The expression is mixed per sample, e = m * v_exp + (1 - m) * null_exp with m in {0, 1} (`mask`); with no
    expression every sample takes the learned `null_exp`, as at inference (inference_f2d.py passes none)."""

    def __init__(self, config: MappingConfig = MappingConfig()):
        super().__init__()
        c = self.config = config
        self.null_exp = nn.Parameter(torch.zeros(c.exp_dim))
        self.i2t_first = MappingMLP(c.embed_dim + c.exp_dim, c)
        self.i2t_last = MappingMLP(c.embed_dim + c.exp_dim, c)

    def expression(self, n: int, exp: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        null = self.null_exp.expand(n, -1)  # (B, E)
        if exp is None:
            return null
        m = torch.ones(n, 1, device=exp.device) if mask is None else mask.reshape(n, 1).to(exp.dtype)
        return m * exp + (1 - m) * null

    def forward(self, identity: torch.Tensor, exp: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if identity.ndim != 2 or identity.shape[1] != c.embed_dim:
            raise ValueError(f"the mapping network expects identity vectors (B, {c.embed_dim}), got {tuple(identity.shape)}")
        if exp is not None and tuple(exp.shape) != (len(identity), c.exp_dim):
            raise ValueError(f"expression vectors must be (B, {c.exp_dim}) = ({len(identity)}, {c.exp_dim}), "
                             f"got {tuple(exp.shape)}")
        x = torch.cat([identity, self.expression(len(identity), exp, mask)], dim=1)  # (B, embed_dim + exp_dim)
        return self.i2t_first(x), self.i2t_last(x)  # (B, W) each
