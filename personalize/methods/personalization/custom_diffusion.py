"""Custom Diffusion (Kumari et al. 2023, "Multi-Concept Customization of Text-to-Image Diffusion"):
train the cross-attention K/V projections (or K/V/Q/out with `freeze_model: crossattn`) plus a modifier token.

Defaults follow diffusers `examples/custom_diffusion/train_custom_diffusion.py` and ClassDiffusion's scripts
(ClassDiffusion's official `train_class_diffusion.py` recipe): lr 1e-5 with scale_lr, random-rescale augmentation with a
masked loss (`rescale_aug: false` = the script's --noaug). The artifact holds the modifier token's rows and a
delta of the attn2 projections.
"""

from dataclasses import dataclass

from personalize.methods.base import MethodError
from personalize.methods.personalization.tuner import Tuner, TunerSpec


@dataclass
class Options:
    name: str = "custom_diffusion"
    modifier_token: str = "sks"  # [A-Za-z0-9._-]; the official "<new1>" is not a valid file name
    # The official default "ktn" is two BPE tokens ("k", "tn</w>") in the real CLIP vocabulary; the script's
    # `tokenizer.encode([word])` looks the string up as one token, so (unverified, transformers-version
    # dependent) the official row starts from the unknown token. We need a single-token word: "object".
    initializer_token: str = "object"
    freeze_model: str = "crossattn_kv"  # or "crossattn" (also trains to_q and to_out)
    rescale_aug: bool = True


def make_spec(options: Options) -> TunerSpec:
    """What trains (also the base of the regularizers, classdiffusion and sude)."""
    if options.freeze_model not in ("crossattn_kv", "crossattn"):
        raise MethodError(f"method.freeze_model must be 'crossattn_kv' or 'crossattn', got {options.freeze_model!r}")
    spec = TunerSpec(
        name=options.name, tokens=[(options.modifier_token, options.initializer_token, 1)],
        unet=options.freeze_model, masked_loss=options.rescale_aug, rescale_aug=options.rescale_aug,
    )
    return spec


def build(options: Options, config) -> Tuner:
    return Tuner(make_spec(options), config)

