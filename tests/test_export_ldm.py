"""personalize.export.ldm: a diffusers SD 1.x/2.x model as one original-layout (LDM/CompVis) state dict.

The oracle is diffusers' own single-file loader, on tiny models whose parameter names equal SD-1.5's and SD-2.1's
(personalize.tiny.save_named_model) with every tensor set to fresh random values after the folder was saved, so a
loaded tensor equal to the source can only have come from the file. The names are those of the original model files:
  UNet  https://github.com/CompVis/stable-diffusion/blob/main/ldm/modules/diffusionmodules/openaimodel.py
  VAE   https://github.com/CompVis/stable-diffusion/blob/main/ldm/modules/diffusionmodules/model.py
        (quant_conv, post_quant_conv: .../ldm/models/autoencoder.py)
  SD 2.x text encoder: FrozenOpenCLIPEmbedder in
        https://github.com/Stability-AI/stablediffusion/blob/main/ldm/modules/encoders/modules.py, whose `model` is
        an OpenCLIP model, https://github.com/mlfoundations/open_clip/blob/main/src/open_clip/model.py
        (and transformer.py: resblocks, nn.MultiheadAttention's in_proj_weight)
"""

from __future__ import annotations

import importlib.util
import re
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from personalize.export.ldm import LayoutError, infer_variant, ldm_state_dict
from personalize.tiny import NAMED_UNET, save_named_model

PARTS = ("unet", "vae", "text_encoder")
PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
SD15_MODEL = Path(__file__).parents[1] / "benchmarks" / "gpu" / "model.py"


def _perturb(models, seed: int) -> None:
    """Every tensor to new random values (no norm weight left at 1, no bias at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models:
            for t in model.state_dict().values():
                t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def named(request, tokenizer_dir, tmp_path_factory):
    """A named tiny model: its diffusers folder (the config for from_single_file), the perturbed models, their
    original-layout state dict and that dict saved as a .safetensors file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    variant = request.param
    folder = save_named_model(tmp_path_factory.mktemp(f"named_{variant}"), tokenizer_dir, variant)
    models = types.SimpleNamespace(
        variant=variant, folder=folder,
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval(),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae").eval(),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval())
    _perturb([models.unet, models.vae, models.text_encoder], seed=1)
    saved = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))["conv_in.weight"]
    assert not torch.equal(saved, models.unet.conv_in.weight)  # the folder holds other values than the models
    models.ldm = ldm_state_dict(models.unet, models.vae, models.text_encoder, variant)
    models.path = folder.parent / f"{variant}.safetensors"
    save_file(models.ldm, str(models.path))
    return models


# ------------------------------------------------------------------------------------------- diffusers' loader


def test_from_single_file_loads_every_tensor(named):
    """Every tensor of the loaded UNet, VAE and text encoder equals the source model's (same keys, dtype, values)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(str(named.path), config=str(named.folder),
                                                    local_files_only=True, safety_checker=None)
    for part in PARTS:
        want, got = getattr(named, part).state_dict(), getattr(pipe, part).state_dict()
        assert got.keys() == want.keys(), part
        wrong = [k for k in want if got[k].dtype != want[k].dtype or not torch.equal(got[k], want[k])]
        assert not wrong, (part, wrong[:5])


class Reads(dict):
    """A checkpoint that records the keys whose tensor was read. diffusers' converters take a tensor out of the
    checkpoint only with `checkpoint[key]` or `checkpoint.get(key)` (`in`, `keys()` and iteration give none)."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self:
            self.read.add(key)
        return super().get(key, default)


def _converted(named, checkpoint) -> dict[str, dict]:
    """The three diffusers state dicts from_single_file builds from `checkpoint`: the UNet's and VAE's
    `checkpoint_mapping_fn` of SINGLE_FILE_LOADABLE_CLASSES, and for the text encoder the converter that
    create_diffusers_clip_model_from_ldm picks (CLIP or OpenCLIP keys), less the `text_model.` level it also drops
    for a flattened CLIPTextModel."""
    from diffusers.loaders import single_file_utils as sfu
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES as CLASSES

    unet = CLASSES["UNet2DConditionModel"]["checkpoint_mapping_fn"](checkpoint=checkpoint, config=named.unet.config)
    vae = CLASSES["AutoencoderKL"]["checkpoint_mapping_fn"](checkpoint=checkpoint, config=named.vae.config)
    if sfu.is_open_clip_model(checkpoint):
        text = sfu.convert_open_clip_checkpoint(named.text_encoder, checkpoint)
    else:
        assert sfu.is_clip_model(checkpoint)
        text = sfu.convert_ldm_clip_checkpoint(checkpoint)
    prefix = "" if hasattr(named.text_encoder, "text_model") else "text_model."
    return {"unet": unet, "vae": vae, "text_encoder": {k.removeprefix(prefix): v for k, v in text.items()}}


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().view(-1).numpy().tobytes()


def test_diffusers_conversion_consumes_every_tensor_of_the_file(named):
    """Nothing in the file is ignored by diffusers' single-file conversion.

    Two checks, because one does not suffice: (a) the set of keys the converters read from a recording dict
    (`Reads`) equals the file's keys; but convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint and
    convert_ldm_clip_checkpoint begin by copying every key under their prefix into a plain dict of their own, so
    for them (a) only proves the prefix. (b) therefore follows the values: every file tensor reaches the
    converted state dicts under a key the diffusers model has, whole (renamed or reshaped: the VAE attention's
    (C, C, 1, 1) -> (C, C)) or, for OpenCLIP's in_proj, as its three q/k/v thirds. All values are random, so equal
    bytes identify the tensor."""
    checkpoint = Reads(load_file(str(named.path)))
    converted = _converted(named, checkpoint)
    assert checkpoint.read == set(checkpoint)  # (a)
    held = set()
    for part, tensors in converted.items():
        assert set(tensors) == set(getattr(named, part).state_dict()), part  # no unexpected, none missing
        held |= {_bytes(t) for t in tensors.values()}
    lost = [k for k, t in checkpoint.items() if _bytes(t) not in held and not (
        k.endswith(("in_proj_weight", "in_proj_bias")) and all(_bytes(c) in held for c in t.chunk(3)))]
    assert not lost, lost[:5]  # (b)


# ------------------------------------------------------------------------------------------- the layout


def _groups(ldm: dict, block: str) -> set[int]:
    return {int(m[1]) for k in ldm if (m := re.match(rf"model\.diffusion_model\.{block}\.(\d+)\.", k))}


def test_unet_and_vae_names_follow_the_original_layout(named):
    """openaimodel.py: input_blocks = conv_in, then per level 2 (ResBlock[, SpatialTransformer]) groups and the
    Downsample (`op`) as a group of its own, none after the last level: 1 + 4*2 + 3 = 12; output_blocks = 4 levels
    of 3 groups, the Upsample (`conv`) in each level's last group but the last level's; middle_block = ResBlock,
    SpatialTransformer, ResBlock. model.py: the decoder's `up` list is built with insert(0, ...): up.0 is the
    full-resolution level (the first of block_out_channels) and has no upsample."""
    assert len(NAMED_UNET["block_out_channels"]) == 4 and NAMED_UNET["layers_per_block"] == 2  # as SD's
    ldm, u = named.ldm, "model.diffusion_model."
    assert all(k.startswith(PREFIXES) for k in ldm)
    assert not [k for k in ldm if re.search(r"betas|alphas|model_ema|position_ids|logit_scale|text_projection", k)]
    assert all(t.is_contiguous() and t.dtype == torch.float32 for t in ldm.values())
    assert _groups(ldm, "input_blocks") == set(range(12)) and _groups(ldm, "output_blocks") == set(range(12))
    assert _groups(ldm, "middle_block") == {0, 1, 2}
    assert {i for i in range(12) if f"{u}input_blocks.{i}.0.op.weight" in ldm} == {3, 6, 9}
    ups = {k for k in ldm if re.fullmatch(r"model\.diffusion_model\.output_blocks\.\d+\.\d\.conv\.weight", k)}
    assert ups == {f"{u}output_blocks.2.1.conv.weight", f"{u}output_blocks.5.2.conv.weight",
                   f"{u}output_blocks.8.2.conv.weight"}  # level 0 has no SpatialTransformer (UpBlock2D)
    for name in ("time_embed.0.weight", "time_embed.2.bias", "input_blocks.0.0.weight", "out.0.weight",
                 "out.2.bias", "input_blocks.1.0.in_layers.2.weight", "output_blocks.11.0.skip_connection.weight",
                 "middle_block.1.transformer_blocks.0.attn2.to_k.weight"):
        assert u + name in ldm, name
    proj_in = ldm[f"{u}input_blocks.1.1.proj_in.weight"]
    assert proj_in.ndim == (2 if named.variant == "sd2" else 4)  # SD 2.x: Linear, SD 1.x: 1x1 conv
    v = "first_stage_model."
    for coder in ("encoder", "decoder"):
        for name in ("q", "k", "v", "proj_out"):
            c = ldm[f"{v}{coder}.mid.attn_1.{name}.weight"].shape[0]
            assert ldm[f"{v}{coder}.mid.attn_1.{name}.weight"].shape == (c, c, 1, 1)
        assert f"{v}{coder}.norm_out.weight" in ldm and f"{v}{coder}.mid.block_2.conv2.weight" in ldm
    assert {i for i in range(4) if f"{v}encoder.down.{i}.downsample.conv.weight" in ldm} == {0, 1, 2}
    assert {i for i in range(4) if f"{v}decoder.up.{i}.upsample.conv.weight" in ldm} == {1, 2, 3}
    first = named.vae.config.block_out_channels[0]  # 4, the others 8
    assert ldm[f"{v}decoder.up.0.block.2.conv2.weight"].shape[0] == first
    assert f"{v}decoder.up.0.block.0.nin_shortcut.weight" in ldm  # 8 -> 4 channels
    assert f"{v}quant_conv.weight" in ldm and f"{v}post_quant_conv.weight" in ldm


def test_text_encoder_names_follow_the_original_layout(named):
    """SD 1.x: the transformers CLIP names under cond_stage_model.transformer.text_model. (12 layers); SD 2.x:
    OpenCLIP's under cond_stage_model.model. (23 of ViT-H's 24 resblocks, in_proj = q, k, v stacked:
    (3*width, width)); positional_embedding is a bare Parameter (no .weight)."""
    width = named.text_encoder.config.hidden_size
    text = {k: t for k, t in named.ldm.items() if k.startswith("cond_stage_model.")}
    layers = {int(m[1]) for k in text if (m := re.search(r"\.(?:layers|resblocks)\.(\d+)\.", k))}
    if named.variant == "sd1":
        assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in text)
        assert layers == set(range(12)) and len(text) == 12 * 16 + 4
        assert "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in text
        return
    p = "cond_stage_model.model."
    assert all(k.startswith(p) for k in text) and layers == set(range(23)) and len(text) == 23 * 12 + 4
    assert text[p + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * width, width)
    assert text[p + "transformer.resblocks.22.attn.in_proj_bias"].shape == (3 * width,)
    assert text[p + "positional_embedding"].shape == (77, width)
    for name in ("token_embedding.weight", "ln_final.weight", "transformer.resblocks.0.attn.out_proj.weight",
                 "transformer.resblocks.0.ln_1.bias", "transformer.resblocks.0.ln_2.weight",
                 "transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_proj.bias"):
        assert p + name in text, name
    q = named.text_encoder.state_dict()["encoder.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(text[p + "transformer.resblocks.0.attn.in_proj_weight"][:width], q)  # q first


def test_variant_inference_and_half(named):
    assert infer_variant(named.text_encoder, named.unet) == named.variant
    half = ldm_state_dict(named.unet, named.vae, named.text_encoder, dtype=torch.float16)
    assert half.keys() == named.ldm.keys() and all(t.dtype == torch.float16 for t in half.values())


def test_sd15_key_counts():
    """SD-1.5's own configs (benchmarks/gpu/model.py) on the meta device: the key counts of the published
    v1-5-pruned checkpoint, less model_ema.*, the DDPM buffers and position_ids."""
    spec = importlib.util.spec_from_file_location("gpu_bench_model", SD15_MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with torch.device("meta"):
        unet, vae, text_encoder = module.sd15_modules()
    ldm = ldm_state_dict(unet, vae, text_encoder)
    counts = [sum(k.startswith(p) for k in ldm)
              for p in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")]
    assert counts == [686, 248, 196] and len(ldm) == sum(counts)


# ------------------------------------------------------------------------------------------- bad input


def _meta_unet(**kwargs):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(sample_size=8, cross_attention_dim=32, **NAMED_UNET, **kwargs)


def test_unmappable_models_raise(named):
    from transformers import CLIPTextModelWithProjection

    unet, vae, te = named.unet, named.vae, named.text_encoder
    sdxl = _meta_unet(addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=8 * 6 + 32)
    with pytest.raises(LayoutError, match="add_embedding"):
        ldm_state_dict(sdxl, vae, te, named.variant)
    extra = types.SimpleNamespace(config=unet.config, state_dict=lambda: {**unet.state_dict(),
                                                                         "mid_block.attentions.1.norm.weight": 0})
    with pytest.raises(LayoutError, match=r"unet tensor 'mid_block.attentions.1.norm.weight' has no name"):
        ldm_state_dict(extra, vae, te, named.variant)
    with torch.device("meta"):
        projected = CLIPTextModelWithProjection(te.config)
    with pytest.raises(LayoutError, match="text_encoder tensor 'text_projection.weight'"):
        ldm_state_dict(unet, vae, projected, named.variant)
    with pytest.raises(LayoutError, match="variant must be one of sd1, sd2, got 'sdxl'"):
        ldm_state_dict(unet, vae, te, "sdxl")


def test_ambiguous_variant_raises(named):
    other = _meta_unet(attention_head_dim=2, use_linear_projection=named.variant == "sd1")
    with pytest.raises(LayoutError, match="pass variant='sd1' or 'sd2'"):
        infer_variant(named.text_encoder, other)
    assert infer_variant(named.text_encoder) == named.variant  # the text encoder alone decides
