"""LoRA on the UNet attention (peft), diffusers layout that `load_lora_weights` reads. Artifact: LoRA."""

from personalize.methods.common import apply_parts as apply  # noqa: F401
