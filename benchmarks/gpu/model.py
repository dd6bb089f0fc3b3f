"""The benchmark's model and data: an SD-1.5-shaped diffusers folder with random weights (no download), the
tiny test model (the instance images come from tests/helpers.py's write_concept_images).

The full-size folder is saved in float32, as the original SD-1.5 weights are: diffusers' training scripts
refuse a UNet that does not load as float32, and both trainers cast the frozen parts to fp16/bf16 themselves.
That is about 4.3 GB on disk (UNet 3.4 GB).
"""

from __future__ import annotations

from pathlib import Path

# SD-1.5's published configs (runwayml/stable-diffusion-v1-5: unet/, vae/, text_encoder/, scheduler/).
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32, "act_fn": "silu", "center_input_sample": False, "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
}
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 512, "scaling_factor": 0.18215,
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}
SD15_TEXT = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
    "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
SD15_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon", "clip_sample": False, "steps_offset": 1,
}


def sd15_modules():
    """UNet, VAE and text encoder with SD-1.5's shapes, randomly initialised on the current default device.

    Under `with torch.device("meta"):` nothing is allocated (used to check the shapes cheaply)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(**SD15_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    return unet, vae, text_encoder


def save_sd15_random(folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Write an SD-1.5-shaped diffusers folder with random weights (float32 safetensors)."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    unet, vae, text_encoder = sd15_modules()
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), unet=unet.eval(), scheduler=DDPMScheduler(**SD15_SCHEDULER),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def ensure_model(folder: Path, tokenizer_dir: Path, tiny: bool) -> Path:
    """The model folder, built once: a second run with the same work folder reuses it.

    `model_index.json` is written last by `save_pretrained`, so its presence marks a complete folder."""
    if (folder / "model_index.json").exists():
        return folder
    if tiny:
        from personalize.tiny import save_tiny_model

        return save_tiny_model(folder, tokenizer_dir, "sd1")
    return save_sd15_random(folder, tokenizer_dir)


def native_resolution(folder: Path) -> int:
    """Image size the model was made for: UNet sample size x the VAE's downsampling (2 per extra block)."""
    import json

    unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
