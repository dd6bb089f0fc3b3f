"""DreamBooth (Ruiz et al. 2023): fine-tune the whole UNet (and optionally the text encoder) on a few images
of a subject bound to a rare identifier ("a photo of sks dog"), with optional prior preservation.

Defaults follow diffusers `examples/dreambooth/train_dreambooth.py` (lr 5e-6, 400 steps without prior).
The artifact is a weight delta of every UNet parameter (and text-encoder layers when trained; the token
table stays frozen so the delta composes with embedding artifacts).
"""

from dataclasses import dataclass

from personalize.methods.personalization.tuner import Tuner, TunerSpec


@dataclass
class Options:
    name: str = "dreambooth"
    train_text_encoder: bool = False


def make_spec(options: Options) -> TunerSpec:
    """What trains (also the base of the regularizers, classdiffusion and sude)."""
    return TunerSpec(name=options.name, unet="full", train_text_encoder=options.train_text_encoder)


def build(options: Options, config) -> Tuner:
    return Tuner(make_spec(options), config)

