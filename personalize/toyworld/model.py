"""The toy world's text-to-image model: the exact diffusers Stable Diffusion layout, small.

32x32 RGB images, an AutoencoderKL with factor 4 and 8 latent channels (8x8x8 latents), a 4-layer
`CLIPTextModel` of width 48 over the real CLIP tokenizer (49,408 ids, so prompts tokenize exactly as for
Stable Diffusion), a `UNet2DConditionModel` with cross-attention at 8x8 and 4x4, SD's scaled-linear beta
schedule (0.00085 to 0.012, 1000 steps), epsilon prediction; DDPM for training, DDIM for sampling.
"""

from __future__ import annotations

WIDTH = 48  # text-encoder width = the UNet's cross-attention dim (768 in SD 1.x)
LATENT_CHANNELS = 8
IMAGE_SIZE = 32


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=WIDTH,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(32, 48, 64),
        layers_per_block=1, norm_num_groups=16, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, sample_size=IMAGE_SIZE,
    )


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        layers_per_block=1, block_out_channels=(64, 96, 96), norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=WIDTH, attention_head_dim=4,
    )


SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon")


def make_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE, clip_sample=False)


def make_sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
