"""Tiny random Stable Diffusion components for tests and benchmarks.

Three shapes, as in the real models:
  sd1: CLIP width 768, pad token <|endoftext|>, epsilon prediction, conv proj-in UNet;
  sd2: width 1024, pad token "!", v-prediction, linear proj-in UNet (as SD 2.x);
  sdxl: two text encoders (CLIP ViT-L's QuickGELU one; OpenCLIP bigG's GELU one with a projection, its tokenizer
  padding with "!"), their penultimate layers concatenated as the UNet's context, the second's pooled projection
  plus six size/crop numbers as its `text_time` added condition (`tiny_sdxl_components`).
`width` defaults to the real one; tests that do not need it pass a small one (e.g. 32) for speed.
The tokenizer is the real CLIP BPE tokenizer (49,408 tokens) from `tests/fixtures/clip_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from personalize.components import Components

REAL_WIDTH = {"sd1": 768, "sd2": 1024}


def tiny_tokenizer(tokenizer_dir: str | Path, variant: str = "sd1"):
    from transformers import CLIPTokenizer

    kwargs = {"pad_token": "!"} if variant == "sd2" else {}
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, **kwargs)


def tiny_text_encoder(width: int, vocab_size: int = 49408):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=width,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(cross_attention_dim: int, variant: str = "sd1", sample_size: int = 8):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4) if variant == "sd2" else 4,
        use_linear_projection=variant == "sd2",
    ).eval()


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=16,
    ).eval()


def tiny_scheduler(variant: str = "sd1"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction" if variant == "sd2" else "epsilon",
    )


def tiny_components(
    tokenizer_dir: str | Path, variant: str = "sd1", width: int | None = None, seed: int = 0
) -> Components:
    """Random tiny SD components; 16x16 images (VAE factor 2, 8x8x4 latents)."""
    if variant not in REAL_WIDTH:
        raise ValueError(f"variant must be one of {sorted(REAL_WIDTH)}, got {variant!r}")
    width = width or REAL_WIDTH[variant]
    torch.manual_seed(seed)
    return Components(
        tokenizer=tiny_tokenizer(tokenizer_dir, variant), text_encoder=tiny_text_encoder(width),
        vae=tiny_vae(), unet=tiny_unet(width, variant), scheduler=tiny_scheduler(variant),
        source=f"tiny-{variant}-{width}",
    )


def save_tiny_model(path: str | Path, tokenizer_dir: str | Path, variant: str = "sd1",
                    width: int | None = None, seed: int = 0) -> Path:
    """Write tiny random components as a diffusers folder that `from_pretrained` loads."""
    tiny_components(tokenizer_dir, variant, width, seed).pipeline().save_pretrained(str(path))
    return Path(path)


# ------------------------------------------------------------------------------------------- real names
# The real models' block structure (so every parameter *name* equals the real one) at tiny channel counts:
# SD-1.5 (runwayml/stable-diffusion-v1-5) and SD-2.1 (stabilityai/stable-diffusion-2-1) configs, with
# block_out_channels, widths and head counts shrunk. Exporters are tested on these: ComfyUI, AUTOMATIC1111 and
# kohya match keys by name, so a name that exists only in a toy layout would prove nothing.
NAMED_UNET = {
    # SD's channel ratios (320, 640, 1280, 1280) / 40, so the same resnets get a conv_shortcut as in the real UNet
    "layers_per_block": 2, "block_out_channels": (8, 16, 32, 32), "norm_num_groups": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
NAMED_TEXT_LAYERS = {"sd1": 12, "sd2": 23}  # SD 2.x: OpenCLIP ViT-H's 24 layers less the last (penultimate)


def named_vae():
    """SD's (and SDXL's) 4-block AutoencoderKL at tiny channel counts: 64x64 images, 8x8x4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(4, 8, 16, 16), layers_per_block=2,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    ).eval()


def named_components(tokenizer_dir: str | Path, variant: str = "sd1", width: int = 32, seed: int = 0) -> Components:
    """Tiny random components whose parameter names equal SD-1.5's (`sd1`) or SD-2.1's (`sd2`): 4 UNet blocks of
    2 layers, a 12-layer (23-layer) CLIP text encoder, a 4-block VAE. 64x64 images, 8x8x4 latents."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if variant not in REAL_WIDTH:
        raise ValueError(f"variant must be one of {sorted(REAL_WIDTH)}, got {variant!r}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, cross_attention_dim=width, **NAMED_UNET,
        attention_head_dim=(2, 4, 8, 8) if variant == "sd2" else 2, use_linear_projection=variant == "sd2",
    ).eval()
    vae = named_vae()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=NAMED_TEXT_LAYERS[variant],
        num_attention_heads=4, max_position_embeddings=77, projection_dim=width,
        hidden_act="gelu" if variant == "sd2" else "quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )).eval()
    return Components(tokenizer=tiny_tokenizer(tokenizer_dir, variant), text_encoder=text_encoder, vae=vae,
                      unet=unet, scheduler=tiny_scheduler(variant), source=f"named-{variant}-{width}")


def save_named_model(path: str | Path, tokenizer_dir: str | Path, variant: str = "sd1", width: int = 32,
                     seed: int = 0) -> Path:
    """`named_components` as a diffusers folder that `from_pretrained` (and `from_single_file(config=...)`) loads."""
    named_components(tokenizer_dir, variant, width, seed).pipeline().save_pretrained(str(path))
    return Path(path)


def write_concept_images(folder: Path, colors=("red", "blue", "green"), size=(24, 20)) -> Path:
    """A small concept folder for tests and benchmarks: solid-color images with a drawn square, so crops and
    flips differ."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(colors):
        image = Image.new("RGB", size, color)
        ImageDraw.Draw(image).rectangle((2, 2, 9, 9), fill="white")
        image.save(folder / f"{i}.png")
    return folder


# ------------------------------------------------------------------------------------------------- SDXL
# stabilityai/stable-diffusion-xl-base-1.0's UNet at tiny channel counts: (320, 640, 1280) / 40, with its
# transformer depths (1, 2, 10) and blocks, so every parameter name equals the real one (`named=True`); the
# default is the smaller shape of diffusers' own SDXL pipeline tests.
SDXL_UNET = {"block_out_channels": (16, 32), "layers_per_block": 1, "transformer_layers_per_block": (1, 1),
             "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "attention_head_dim": (2, 4)}
NAMED_SDXL_UNET = {"block_out_channels": (8, 16, 32), "layers_per_block": 2, "transformer_layers_per_block": (1, 2, 10),
                   "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   "attention_head_dim": (2, 4, 8)}
SDXL_TIME_DIM = 8  # addition_time_embed_dim (256 in SDXL); six of them: original size, crop top-left, target size


def sdxl_text_encoders(widths=(32, 64), layers=(2, 2)):
    """(CLIP ViT-L-shaped CLIPTextModel, OpenCLIP bigG-shaped CLIPTextModelWithProjection) at tiny widths."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(width, n_layers, act):
        return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width,
                              num_hidden_layers=n_layers, num_attention_heads=4, max_position_embeddings=77,
                              projection_dim=width, hidden_act=act, bos_token_id=49406, eos_token_id=49407,
                              pad_token_id=49407)

    return (CLIPTextModel(config(widths[0], layers[0], "quick_gelu")).eval(),
            CLIPTextModelWithProjection(config(widths[1], layers[1], "gelu")).eval())


def sdxl_unet(context: int, pooled: int, sample_size: int = 8, named: bool = False):
    """An SDXL-layout UNet: linear proj-in, `text_time` added conditioning (pooled + 6 x SDXL_TIME_DIM)."""
    from diffusers import UNet2DConditionModel

    blocks = NAMED_SDXL_UNET if named else SDXL_UNET
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, norm_num_groups=4 if named else 8,
        cross_attention_dim=context, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_DIM, projection_class_embeddings_input_dim=pooled + 6 * SDXL_TIME_DIM,
        **blocks,
    ).eval()


def sdxl_scheduler():
    """SDXL base's scheduler: Euler, scaled-linear betas, "leading" spacing, epsilon prediction."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  steps_offset=1, timestep_spacing="leading", prediction_type="epsilon")


def tiny_sdxl_components(tokenizer_dir: str | Path, widths=(32, 64), seed: int = 0, named: bool = False) -> Components:
    """Random tiny SDXL components. Default: 16x16 images (the tiny VAE, 8x8x4 latents). `named=True`: every
    parameter name equals SDXL base 1.0's (3 UNet blocks, transformer depths 1/2/10, 12- and 32-layer text
    encoders, the 4-block VAE), 64x64 images."""
    torch.manual_seed(seed)
    te1, te2 = sdxl_text_encoders(widths, (12, 32) if named else (2, 2))
    unet = sdxl_unet(sum(widths), widths[1], named=named)
    vae = named_vae() if named else tiny_vae()
    return Components(
        tokenizer=tiny_tokenizer(tokenizer_dir, "sd1"), text_encoder=te1, vae=vae, unet=unet,
        scheduler=sdxl_scheduler(), source=f"{'named' if named else 'tiny'}-sdxl-{widths[0]}-{widths[1]}",
        tokenizer_2=tiny_tokenizer(tokenizer_dir, "sd2"), text_encoder_2=te2,
        pipeline_config={"force_zeros_for_empty_prompt": True},
    )


def save_tiny_sdxl_model(path: str | Path, tokenizer_dir: str | Path, widths=(32, 64), seed: int = 0,
                         named: bool = False) -> Path:
    """`tiny_sdxl_components` as a diffusers SDXL folder that `StableDiffusionXLPipeline.from_pretrained` loads."""
    tiny_sdxl_components(tokenizer_dir, widths, seed, named).pipeline().save_pretrained(str(path))
    return Path(path)
