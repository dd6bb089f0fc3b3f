"""The personalization bases a regularizer (classdiffusion, sude) can sit on, by config name."""

from __future__ import annotations

from personalize.methods.personalization import custom_diffusion, dreambooth, lora, textual_inversion
from personalize.methods.personalization.tuner import TunerSpec

BASES = {"custom_diffusion": custom_diffusion, "textual_inversion": textual_inversion,
         "dreambooth": dreambooth, "lora": lora}


def base_spec(options, metadata: dict[str, str]) -> TunerSpec:
    """The base's spec for `options.base_options`, with the regularizer's fields in the artifact metadata."""
    spec = BASES[options.base].make_spec(options.base_options)
    spec.metadata |= {"base": options.base} | metadata
    return spec
