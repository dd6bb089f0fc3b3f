"""Custom Diffusion (Kumari et al., 2023): cross-attention K/V + modifier token. Artifact: embedding + delta."""

from personalize.methods.common import apply_parts as apply  # noqa: F401
