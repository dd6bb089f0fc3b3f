"""Personalization: the four bases (textual inversion, DreamBooth, Custom Diffusion, LoRA), built on one `Tuner`,
and the regularizers that sit on any of them (ClassDiffusion's SPL, SuDe)."""
