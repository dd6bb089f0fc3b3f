"""LoRA (Hu et al. 2021) on the UNet attention projections, as diffusers `train_dreambooth_lora.py`.

peft adapters (rank `rank`, scale alpha/rank) on to_q/to_k/to_v/to_out.0. The artifact holds them in kohya's
layout (`lora_unet_*.lora_down/lora_up/alpha`, personalize.kohya), which AUTOMATIC1111, ComfyUI, kohya's tools
and diffusers' `pipe.load_lora_weights` read; target_modules outside the layers kohya can hold fall back to the
diffusers layout, with a warning. Files in the diffusers layout, as written before, keep loading.
"""

from dataclasses import dataclass, field

from personalize.methods.base import MethodError
from personalize.methods.personalization.tuner import Tuner, TunerSpec


@dataclass
class Options:
    name: str = "lora"
    rank: int = 4
    alpha: float | None = None  # None: alpha = rank (scale 1), diffusers' default
    target_modules: list[str] = field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])


def make_spec(options: Options) -> TunerSpec:
    """What trains (also the base of the regularizers, classdiffusion and sude)."""
    if options.rank < 1:
        raise MethodError(f"method.rank must be a positive integer, got {options.rank}")
    spec = TunerSpec(name=options.name, unet="lora", lora_rank=options.rank, lora_alpha=options.alpha,
                     lora_targets=tuple(options.target_modules))
    return spec


def build(options: Options, config) -> Tuner:
    return Tuner(make_spec(options), config)

