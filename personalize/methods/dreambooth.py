"""DreamBooth (Ruiz et al., 2023): UNet (optionally text encoder) fine-tuning. Artifact: weight delta."""

from personalize.methods.common import apply_parts as apply  # noqa: F401
