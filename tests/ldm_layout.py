"""Test helper: write a tiny diffusers SD1 model as an original-layout (LDM/CompVis) single-file checkpoint.

This is the layout of `v1-5-pruned-emaonly.safetensors`: `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE), `cond_stage_model.transformer.*` (CLIP text model). Written from the published
layout of those checkpoints, only so that `from_single_file` can be tested offline on a tiny model.
"""

from __future__ import annotations

import re

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _sub(name: str, pairs) -> str:
    for new, old in pairs:
        name = name.replace(f".{new}.", f".{old}.")
    return name


def _resnet(kind: str, rest: str) -> str:
    return _sub("." + rest, RESNET)[1:] if kind == "resnets" else rest


def unet_key(key: str, lpb: int, n_levels: int) -> str:
    """diffusers UNet2DConditionModel key -> `model.diffusion_model.` key."""
    simple = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
              "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for new, old in simple.items():
        if key.startswith(new):
            return "model.diffusion_model." + old + key[len(new):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), _resnet(m[2], m[4])
        if kind == "downsamplers":
            out = f"input_blocks.{(lpb + 1) * (i + 1)}.0.op.{rest.removeprefix('conv.')}"
        else:
            out = f"input_blocks.{(lpb + 1) * i + j + 1}.{0 if kind == 'resnets' else 1}.{rest}"
    elif (m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)):
        index = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(m[1], int(m[2]))]
        out = f"middle_block.{index}.{_resnet(m[1], m[3])}"
    elif (m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", key)):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), _resnet(m[2], m[4])
        base = (lpb + 1) * i
        if kind == "upsamplers":
            out = f"output_blocks.{base + lpb}.UPS.{rest}"
        else:
            out = f"output_blocks.{base + j}.{0 if kind == 'resnets' else 1}.{rest}"
    else:
        raise KeyError(key)
    return "model.diffusion_model." + out


def vae_key(key: str, n_levels: int) -> str:
    """diffusers AutoencoderKL key -> `first_stage_model.` key."""
    key = key.replace("conv_norm_out", "norm_out").replace("mid_block.resnets.0", "mid.block_1")
    key = key.replace("mid_block.resnets.1", "mid.block_2").replace("mid_block.attentions.0", "mid.attn_1")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
                 lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.block.{m[2]}", key)
    key = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0",
                 lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.upsample", key)
    key = _sub("." + key + ".", VAE_ATTN + [("conv_shortcut", "nin_shortcut")])[1:-1]
    return "first_stage_model." + key


def to_ldm_state_dict(unet, vae, text_encoder) -> dict:
    lpb, n = unet.config.layers_per_block, len(unet.config.block_out_channels)
    out = {}
    for k, v in unet.state_dict().items():
        out[unet_key(k, lpb, n)] = v
    # upsampler index: 2 after a resnet + attention, 1 after a resnet alone
    attn_levels = {int(m[1]) for k in out if (m := re.match(r"model\.diffusion_model\.output_blocks\.(\d+)\.1\.", k))}
    out = {re.sub(r"output_blocks\.(\d+)\.UPS\.",
                  lambda m: f"output_blocks.{m[1]}.{2 if int(m[1]) in attn_levels else 1}.", k): v
           for k, v in out.items()}
    nv = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        if ".attentions." in k and k.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]  # LDM VAE attention uses 1x1 convs
        out[vae_key(k, nv)] = v
    for k, v in text_encoder.state_dict().items():  # transformers >= 5.6 dropped the `text_model.` level
        out["cond_stage_model.transformer.text_model." + k.removeprefix("text_model.")] = v
    return {k: v.contiguous() for k, v in out.items()}
