"""Textual inversion (Gal et al. 2022, "An Image is Worth One Word"): learn new token rows, nothing else.

Defaults follow diffusers `examples/textual_inversion/textual_inversion.py` (lr 5e-4 in its README, one vector,
object/style caption templates). Only the trigger's rows change; the artifact is `<trigger>.safetensors`.
"""

from dataclasses import dataclass

from personalize.data import TEMPLATES
from personalize.methods.personalization.tuner import Tuner, TunerSpec


@dataclass
class Options:
    name: str = "textual_inversion"
    placeholder_token: str = "sks"  # the trigger word; [A-Za-z0-9._-]
    initializer_token: str = "object"  # a single-token word whose row the new rows start from
    num_vectors: int = 1
    learnable_property: str = "object"  # caption templates when data.instance_prompt is unset: object | style


def make_spec(options: Options) -> TunerSpec:
    """What trains (also the base of the regularizers, classdiffusion and sude)."""
    if options.learnable_property not in TEMPLATES:
        from personalize.methods.base import MethodError

        raise MethodError(f"method.learnable_property must be one of {sorted(TEMPLATES)}, "
                          f"got {options.learnable_property!r}")
    spec = TunerSpec(
        name=options.name, tokens=[(options.placeholder_token, options.initializer_token, options.num_vectors)],
        templates=TEMPLATES[options.learnable_property],
    )
    return spec


def build(options: Options, config) -> Tuner:
    return Tuner(make_spec(options), config)

