"""Model profiles: what the project does differently for one family of base models, decided once.

    profile = profile_for("toyworld")             # or a diffusers folder, hub id, single file
    profile = profile_for(base, text_encoder)     # once the model is loaded: sd1 or sd2 by its text encoder
    profile.guidance_scale, profile.face_detector, profile.prompt_hint(prompts, known)

Every library file reads these fields instead of comparing the base's name. A family is a record here:
`toyworld` (the bundled tiny model of `assets/toyworld/`), `sd1`, `sd2`, `sdxl`; a new family is one more record
and a line in `profile_for`. What a family's stock diffusers pipeline is (its class and the parts it is built
from) is a field too, so the loaders and the pipeline build either family the same way.

Bundled assets that are not tied to a base (the toy world's judges as classifiers, its face dataset and shipped
face encoders) are named here too (`bundled_classifier`, `bundled_face_data`, `shipped_msid`), so the methods
that accept them never import the toy world.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from personalize.cpu import TOY_THREADS

TOY = "toyworld"  # the bundled toy world, as a user names it: --base toyworld, method.data: toyworld
EVERYDAY_PROMPTS = ("a photo of a dog on the beach, golden hour", "a watercolor painting of a lighthouse at dusk")
SD_PARTS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler", "safety_checker", "feature_extractor")
# SDXL base (diffusers' StableDiffusionXLPipeline): CLIP ViT-L and OpenCLIP ViT-bigG, no safety checker
SDXL_PARTS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "vae", "unet", "scheduler")
TOY_PROMPTS = ("a small red triangle with stripes on a black background",
               "a photo of a smiling person wearing glasses on a blue background",
               "a blue circle and a yellow square on a pink background")


@dataclass(frozen=True)
class Profile:
    """One model family.

    guidance_scale: what `generate` and the app start from (SD's usual 7.5; the toy model was tuned at 5).
    max_threads: torch's intra-op threads cap for work on this base (None: no cap beyond the machine's).
    face_detector: the default face detector spec (`personalize.face`); "" is insightface's default pack.
    examples: prompts the base understands (the app's "Try" list).
    model_dir: the bundled model folder a base of this name loads (None: the base is a path or hub id).
    face_encoder: the shipped Face2Diffusion encoder used when none is given (None: one must be given), and
    `face_encoder_howto`, what to do when it is missing.
    face_check: `(photos, names) -> list[bool]`, whether each aligned crop holds a face (None: no check).
    unknown_words: `(prompts, known) -> [word]`, the words of the prompts the base never saw (None: no note),
    and `hint_for(words) -> str | None`, one line about them.
    pipeline_class: the stock diffusers pipeline of the family, `parts`, the components it is built from
    (`personalize.components.Components` fields), and `pipeline_options`, the pipeline's own config values a
    model folder sets (kept from the loaded model); `family`, the name an artifact's base is checked against."""

    name: str
    guidance_scale: float = 7.5
    max_threads: int | None = None
    face_detector: str = ""
    examples: tuple[str, ...] = EVERYDAY_PROMPTS
    model_dir: Callable[[], Path] | None = None
    face_encoder: Callable[[], Path] | None = None
    face_encoder_howto: str = ""
    face_check: Callable | None = None
    unknown_words: Callable | None = None
    hint_for: Callable | None = None
    training_note: str = ""
    pipeline_class: str = "StableDiffusionPipeline"
    parts: tuple[str, ...] = SD_PARTS
    pipeline_options: tuple[str, ...] = ()
    family: str = "sd"

    def prompt_hint(self, prompts: list[str], known=()) -> str | None:
        """One line naming the words of `prompts` this base never saw; None when all are known (or no note)."""
        if self.unknown_words is None:
            return None
        return self.hint_for(self.unknown_words(list(prompts), list(known)))


def _asset(*parts: str) -> Callable[[], Path]:
    def where() -> Path:
        from personalize.resources import asset

        return asset(*parts)

    return where


def _toy_unknown(prompts, known):
    from personalize.toyworld import vocabulary

    return vocabulary.unknown_in(prompts, vocabulary.cached_vocabulary(), known)


def _toy_hint(words):
    from personalize.toyworld import vocabulary

    return vocabulary.hint_for(words)


def _toy_face_check(photos, names) -> list[bool]:
    from personalize.toyworld.faces import faces_found

    return faces_found(photos)


TOY_PROFILE = Profile(
    TOY, guidance_scale=5.0, max_threads=TOY_THREADS, face_detector="none", examples=TOY_PROMPTS,
    model_dir=_asset(TOY), face_encoder=_asset("toyworld_f2d", "face2diffusion.safetensors"),
    face_encoder_howto="train one with `python training/toyworld/f2d.py` (both stages, about 30 min on 2 CPU "
                       "cores) or pass --face-encoder FILE",
    face_check=_toy_face_check, unknown_words=_toy_unknown, hint_for=_toy_hint,
    training_note="training on the toy world (model.pretrained=toyworld, the default), whose prompts never use "
                  "{words}; a config for a real model needs --model.pretrained=path/to/sd15")
SD1 = Profile("sd1")
SD2 = Profile("sd2")
# SDXL base 1.0's own defaults: 1024 px (the UNet's sample size, read off the model), guidance 5.0 (diffusers'
# StableDiffusionXLPipeline default; Stability's model card uses 5-7)
SDXL = Profile("sdxl", guidance_scale=5.0, pipeline_class="StableDiffusionXLPipeline", parts=SDXL_PARTS,
               pipeline_options=("force_zeros_for_empty_prompt",), family="sdxl")
PROFILES = {p.name: p for p in (TOY_PROFILE, SD1, SD2, SDXL)}
FAMILY_NAMES = {"sd": "SD 1.x/2.x", "sdxl": "SDXL"}  # what errors call a family
PIPELINE_CLASSES = {"StableDiffusionPipeline": SD1, "StableDiffusionXLPipeline": SDXL}


def profile_for(base: str, text_encoder=None, text_encoder_2=None) -> Profile:
    """The profile of a base model: the toy world by name; once loaded, SDXL when it has a second text encoder,
    else SD 2.x when the text encoder's activation is OpenCLIP's exact GELU, else SD 1.x (OpenAI CLIP's
    QuickGELU, and the default before loading)."""
    if str(base) == TOY:
        return TOY_PROFILE
    if text_encoder_2 is not None:
        return SDXL
    act = getattr(getattr(text_encoder, "config", None), "hidden_act", None)
    return SD2 if act == "gelu" else SD1


def toy_model_dir() -> Path:
    """The bundled toy model's folder (`personalize.resources`: checkout, installed copy or $PERSONALIZE_DATA)."""
    return TOY_PROFILE.model_dir()


# ------------------------------------------------------------------ bundled assets, not tied to a base

BUNDLED_CLASSIFIERS = {TOY: "a", f"{TOY}-a": "a", f"{TOY}-b": "b"}  # the toy world's Judge A / Judge B


def bundled_classifier(name: str):
    """The parts of a bundled image classifier (`personalize.toyworld.judge.classifier_parts`) for `name`, or
    None when `name` is not one (a transformers classifier then)."""
    which = BUNDLED_CLASSIFIERS.get(str(name))
    if which is None:
        return None
    from personalize.toyworld.judge import classifier_parts

    return classifier_parts(which)


def identity_target(identity: int) -> dict[str, str]:
    """The bundled judges' head targets of one toy-world face identity (`method.target: identity:<n>`)."""
    from personalize.toyworld.world import identity_target as target

    return target(identity)


def bundled_face_data(name: str):
    """The toy world's face dataset for `method.data: toyworld` (`personalize.toyworld.faces`), or None."""
    if str(name) != TOY:
        return None
    from personalize.toyworld import faces

    return faces


def shipped_msid(name: str) -> str:
    """`method.msid: toyworld`: the toy world's shipped stage-1 encoder; any other value is a path."""
    return str(_asset("toyworld_f2d", "f2d_msid.safetensors")()) if str(name) == TOY else str(name)
