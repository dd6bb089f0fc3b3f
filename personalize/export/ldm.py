"""A diffusers Stable Diffusion 1.x / 2.x model as one state dict in the original (LDM/CompVis) layout: the layout
of `v1-5-pruned.safetensors` and `v2-1_768-ema-pruned.safetensors`, which AUTOMATIC1111 and ComfyUI load as a model
checkpoint and diffusers as `StableDiffusionPipeline.from_single_file`.

  model.diffusion_model.*      the UNet, named as in CompVis `ldm/modules/diffusionmodules/openaimodel.py`
                               (UNetModel: time_embed, input_blocks, middle_block, output_blocks, out; its
                               SpatialTransformers, `ldm/modules/attention.py`, use diffusers' own inner names)
  first_stage_model.*          the VAE, named as in `ldm/modules/diffusionmodules/model.py` (Encoder/Decoder: down,
                               mid, up, norm_out; AttnBlock's q/k/v/proj_out are 1x1 convs) and
                               `ldm/models/autoencoder.py` (quant_conv, post_quant_conv)
  cond_stage_model.transformer.text_model.*   SD 1.x: OpenAI CLIP ViT-L as transformers names it
  cond_stage_model.model.*     SD 2.x: OpenCLIP ViT-H as OpenCLIP's `open_clip/model.py` and `transformer.py` name
                               it (transformer.resblocks.N.attn.in_proj_weight = q, k, v stacked; ln_1, ln_2, mlp.c_fc,
                               mlp.c_proj; token_embedding, positional_embedding, ln_final)
Only what diffusers' single-file loader reads is written: no DDPM schedule buffers (`betas`, `alphas_cumprod`, ...),
no `model_ema.*`, no `position_ids` (a non-persistent buffer in transformers 5); for SD 2.x neither OpenCLIP's last
layer (resblocks.23, which SD 2.x never runs: it conditions on the penultimate layer, and diffusers' text encoder has
23 layers) nor `text_projection` and `logit_scale` (a CLIPTextModel has neither). Every parameter and persistent
buffer of the three models gets a name here, or the conversion raises LayoutError naming the one that has none.
"""

from __future__ import annotations

import re

import torch

from personalize.errors import PersonalizeError

VARIANTS = ("sd1", "sd2")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."  # SD 1.x
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD 2.x

# UNet: diffusers module -> openaimodel.py module
UNET_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
              "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_MID = {"resnets.0": "middle_block.0", "attentions.0": "middle_block.1", "resnets.1": "middle_block.2"}
UNET_BLOCK_RE = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
# VAE: diffusers module -> model.py module
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
VAE_TOP = ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv",
           "post_quant_conv")
# OpenCLIP: transformers CLIPTextModel name -> OpenCLIP name (q/k/v are stacked separately)
OPENCLIP_FIXED = {"embeddings.token_embedding.weight": "token_embedding.weight",
                  "embeddings.position_embedding.weight": "positional_embedding",  # a bare Parameter, no .weight
                  "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
OPENCLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                  "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
CLIP_MODULES = ("embeddings.", "encoder.layers.", "final_layer_norm.")


class LayoutError(PersonalizeError):
    """A model whose structure has no place in the original layout; the message names the part and the key."""


def ldm_state_dict(unet, vae, text_encoder, variant: str | None = None, *,
                   dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The three models' weights under their original-layout names (see the module docstring).

    `variant` ("sd1" | "sd2") picks the text encoder's layout; None infers it (`infer_variant`). Tensors are
    detached and contiguous, in their own dtype, or cast to `dtype` (e.g. torch.float16) where floating point; they
    share memory with the models where no reshape or cast was needed. Works on meta tensors (nothing is read)."""
    if variant is None:
        variant = infer_variant(text_encoder, unet)
    if variant not in VARIANTS:
        raise LayoutError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    check_unet(unet)
    text = openclip_text(text_encoder.state_dict()) if variant == "sd2" else clip_text(text_encoder.state_dict())
    parts = [unet_names(unet), vae_names(vae), text]
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        for key, value in part.items():
            if key in out:
                raise LayoutError(f"two tensors map to {key!r}")
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            out[key] = value.detach().contiguous()
    return out


def infer_variant(text_encoder, unet=None) -> str:
    """sd1 | sd2 from the text encoder's activation: SD 1.x conditions on OpenAI CLIP ViT-L, whose MLP uses
    QuickGELU ("quick_gelu"), SD 2.x on OpenCLIP ViT-H, which uses exact GELU ("gelu"). Given the UNet, it must agree:
    SD 2.x's projects in and out of its transformers with Linear layers (`use_linear_projection`), SD 1.x's with 1x1
    convs. A model where the two disagree (or another activation) needs an explicit `variant`."""
    act = getattr(text_encoder.config, "hidden_act", None)
    found = {"quick_gelu": "sd1", "gelu": "sd2"}.get(act)
    if found is None:
        raise LayoutError(f"cannot tell SD 1.x from 2.x by the text encoder's activation {act!r} (expected "
                          "quick_gelu for CLIP ViT-L or gelu for OpenCLIP ViT-H): pass variant='sd1' or 'sd2'")
    if unet is not None and bool(unet.config.get("use_linear_projection")) != (found == "sd2"):
        raise LayoutError(f"the text encoder looks like {found} ({act}) but the UNet's use_linear_projection is "
                          f"{unet.config.get('use_linear_projection')}: pass variant='sd1' or 'sd2'")
    return found


def check_unet(unet) -> None:
    """Refuse UNets that the SD 1.x/2.x layout has no room for, before any key is looked at."""
    config = unet.config
    if config.get("addition_embed_type") is not None or getattr(unet, "add_embedding", None) is not None:
        raise LayoutError("the UNet has added conditioning (add_embedding, addition_embed_type "
                          f"{config.get('addition_embed_type')!r}): Stable Diffusion XL or similar, not SD 1.x/2.x")
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise LayoutError("the UNet is class-conditioned (class_embedding): not an SD 1.x/2.x text-to-image UNet")
    if not isinstance(config.get("layers_per_block"), int):
        raise LayoutError(f"layers_per_block {config.get('layers_per_block')!r} varies by block; the original "
                          "layout numbers input/output blocks with one count")


def _rename(sd: dict, name_of, part: str) -> dict[str, torch.Tensor]:
    """{name_of(key): tensor}; a key with no name (name_of returns None) raises, naming it."""
    out = {}
    for key, value in sd.items():
        name = name_of(key)
        if name is None:
            hint = " (fuse LoRA adapters into the weights first)" if "lora_" in key or "base_layer" in key else ""
            raise LayoutError(f"{part} tensor {key!r} has no name in the original layout{hint}")
        out[name] = value
    return out


def _resnet(rest: str, names: dict) -> str | None:
    """"norm1.weight" -> "in_layers.0.weight" (UNet) or the VAE's name; None for another module."""
    module, _, param = rest.rpartition(".")
    return f"{names[module]}.{param}" if module in names else None


def unet_names(unet) -> dict[str, torch.Tensor]:
    sd = unet.state_dict()
    lpb = unet.config.layers_per_block
    up_attn = {int(m[1]) for k in sd if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    return _rename(sd, lambda key: _unet_name(key, lpb, up_attn), "unet")


def _unet_name(key: str, lpb: int, up_attn: set[int]) -> str | None:
    """One UNet key. Per level, openaimodel.py's input_blocks hold lpb (ResBlock[, SpatialTransformer]) groups and
    then the Downsample as a group of its own (`op`); output_blocks hold lpb + 1 groups, the last of which ends with
    the Upsample (`conv`), at slot 2 after a SpatialTransformer, slot 1 after a ResBlock alone."""
    for name, ldm in UNET_FIXED.items():
        if key.startswith(name + "."):
            return UNET_PREFIX + ldm + key[len(name):]
    if (m := re.fullmatch(r"mid_block\.(\w+\.\d+)\.(.+)", key)) and m[1] in UNET_MID:
        rest = _resnet(m[2], UNET_RESNET) if m[1].startswith("resnets") else m[2]
        return rest and f"{UNET_PREFIX}{UNET_MID[m[1]]}.{rest}"
    if not (m := UNET_BLOCK_RE.fullmatch(key)):
        return None
    side, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
    n = lpb + 1  # groups per level
    if kind == "resnets":
        rest = _resnet(rest, UNET_RESNET)
    if kind in ("downsamplers", "upsamplers") and (j != 0 or not rest.startswith("conv.")):
        return None
    if rest is None or j >= (lpb if side == "down" else n):
        return None
    if side == "down" and kind != "upsamplers":
        if kind == "downsamplers":
            return f"{UNET_PREFIX}input_blocks.{n * (i + 1)}.0.op.{rest.removeprefix('conv.')}"
        return f"{UNET_PREFIX}input_blocks.{n * i + j + 1}.{0 if kind == 'resnets' else 1}.{rest}"
    if side == "up" and kind != "downsamplers":
        if kind == "upsamplers":
            return f"{UNET_PREFIX}output_blocks.{n * i + lpb}.{2 if i in up_attn else 1}.{rest}"
        return f"{UNET_PREFIX}output_blocks.{n * i + j}.{0 if kind == 'resnets' else 1}.{rest}"
    return None


def vae_names(vae) -> dict[str, torch.Tensor]:
    """The VAE's tensors; the mid-block attention's Linear weights become 1x1 conv weights, (C, C) -> (C, C, 1, 1)."""
    n_up = len(vae.config.up_block_types)
    out = _rename(vae.state_dict(), lambda key: _vae_name(key, n_up), "vae")
    for key, value in out.items():
        if ".mid.attn_1." in key and key.rsplit(".", 2)[1] in ("q", "k", "v", "proj_out") and value.ndim == 2:
            out[key] = value[:, :, None, None]  # (C, C) -> (C, C, 1, 1)
    return out


def _vae_name(key: str, n_up: int) -> str | None:
    """One VAE key. model.py's Decoder builds `up` with insert(0, ...), so up.0 is the full-resolution level, the one
    diffusers runs last: diffusers' up_blocks.i is up.(n_up - 1 - i)."""
    module, _, param = key.rpartition(".")
    if module in VAE_TOP:
        return VAE_PREFIX + key
    if module in ("encoder.conv_norm_out", "decoder.conv_norm_out"):
        return f"{VAE_PREFIX}{module.split('.')[0]}.norm_out.{param}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", key):
        rest = _resnet(m[3], VAE_RESNET)
        return rest and f"{VAE_PREFIX}{m[1]}.mid.block_{int(m[2]) + 1}.{rest}"
    if (m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module)) and m[2] in VAE_ATTN:
        return f"{VAE_PREFIX}{m[1]}.mid.attn_1.{VAE_ATTN[m[2]]}.{param}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets\.\d+|downsamplers\.0)\.(.+)", key):
        level = f"{VAE_PREFIX}encoder.down.{m[1]}"
    elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.\d+|upsamplers\.0)\.(.+)", key):
        level = f"{VAE_PREFIX}decoder.up.{n_up - 1 - int(m[1])}"
    else:
        return None
    if m[2].startswith("resnets"):
        rest = _resnet(m[3], VAE_RESNET)
        return rest and f"{level}.block.{m[2].split('.')[1]}.{rest}"
    sampler = "downsample" if m[2].startswith("down") else "upsample"
    return f"{level}.{sampler}.{m[3]}" if m[3].startswith("conv.") else None


def _clip_keys(sd: dict) -> dict:
    """transformers >= 5.6 dropped CLIPTextModel's `text_model.` level; older versions have it. Without it."""
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def clip_text(sd: dict) -> dict[str, torch.Tensor]:
    """SD 1.x: the transformers CLIPTextModel names under `cond_stage_model.transformer.text_model.`."""
    # unverified: that A1111 and ComfyUI load SD 1.x without `embeddings.position_ids` (v1-5-pruned has one)
    return _rename(_clip_keys(sd), lambda k: CLIP_PREFIX + k if k.startswith(CLIP_MODULES) else None,
                   "text_encoder")


def openclip_text(sd: dict) -> dict[str, torch.Tensor]:
    """SD 2.x: the OpenCLIP layout. Each layer's q, k, v projections are stacked into one in_proj, q first:
    weight (3*C, C), bias (3*C,), as torch.nn.MultiheadAttention keeps them."""
    # unverified: that A1111 and ComfyUI, which build all 24 ViT-H layers, load this file with only resblocks.23,
    # text_projection and logit_scale missing (unused: SD 2.x takes the penultimate layer's output)
    sd = _clip_keys(sd)
    sd.pop("embeddings.position_ids", None)  # older transformers persist this arange(77); OpenCLIP has none
    qkv = {k: v for k, v in sd.items() if re.fullmatch(r"encoder\.layers\.\d+\.self_attn\.[qkv]_proj\.\w+", k)}
    out = _rename({k: v for k, v in sd.items() if k not in qkv}, _openclip_name, "text_encoder")
    groups: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in qkv.items():
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)", key)
        groups.setdefault((m[1], m[3]), {})[m[2]] = value
    for (layer, param), parts in groups.items():
        if param not in ("weight", "bias") or len(parts) != 3:
            raise LayoutError(f"text_encoder layer {layer}: self_attn {param} needs q, k and v, found "
                              f"{sorted(parts)}")
        name = f"{OPENCLIP_PREFIX}transformer.resblocks.{layer}.attn.in_proj_{param}"
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3*C, C) or (3*C,)
    return out


def _openclip_name(key: str) -> str | None:
    if key in OPENCLIP_FIXED:
        return OPENCLIP_PREFIX + OPENCLIP_FIXED[key]
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if not m or m[2] not in OPENCLIP_LAYER:
        return None
    return f"{OPENCLIP_PREFIX}transformer.resblocks.{m[1]}.{OPENCLIP_LAYER[m[2]]}.{m[3]}"
