"""`load_pipeline(base, artifacts)` and `generate()`: a stock diffusers `StableDiffusionPipeline` underneath
(`StableDiffusionXLPipeline` for an SDXL base: the profile's `pipeline_class`; an SDXL refiner is not supported).

    pipe = personalize.load_pipeline("path/to/sd15", artifacts=["outputs/run/sks.safetensors"])
    images = pipe.generate("a photo of sks on the beach", num_images=4, seed=0)
    pipe.remove_artifact("sks")           # exact original weights and token table again

Artifacts are applied by their method's `apply` (methods registry) and undone in reverse order, so they can be
added and removed on a live pipeline without reloading the base.

Everything that changes one generation call at inference time is an `Edit`, made by an inference method of the
registry (`personalize.methods.edits_from`) from a plain description, {method name: options}:

    images = pipe.generate("a man wearing glasses", seed=0, edits={"<method>": {"words": ["glasses"]}})

This module knows no method: it checks each edit against the prompts, lets each rewrite the keyword arguments of
the stock diffusers call in turn, and stores what each describes in the image settings. What differs per model
family (the default guidance, the unknown-word note) is read off the base's profile (`personalize.profiles`).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from personalize.artifacts import Artifact, ArtifactError, load_artifact
from personalize.components import DTYPES, MIXED_PRECISION, Components, load_components
from personalize.errors import PersonalizeError
from personalize.inputs import check_numbers, check_prompts
from personalize.profiles import TOY, profile_for

logger = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler",
}


class Edit(Protocol):
    """An inference-time change of one generation call (the `edit` of an inference method's registry record).

    check(sd, prompts)        raise a clear error if the edit cannot apply to these prompts; `generate` calls it
                              for every prompt before any image is made (the CLI before the first file is written);
                              it changes nothing
    call_kwargs(sd, call)     (new kwargs, cleanup): `call` holds the keyword arguments of the stock diffusers
                              call as `generate` built them (prompt, negative_prompt, num_images_per_prompt,
                              num_inference_steps, guidance_scale, height, width, generator, extras) or as the
                              previous edit returned them; return a new dict, not the same one changed. `cleanup`
                              takes no argument and runs after the call, even when it raises
    describe()                JSON-able settings merged into each image's settings (its PNG `personalize` chunk,
                              compared by batch resume); keys must not clash with the base settings or other edits
    label()                   "Key: value" text appended to the A1111-style `parameters` chunk ("" for none)
    known_words               optional: words of the prompt the edit gives a meaning (the base profile's
                              unknown-word note leaves them out)
    bind(prompts)             optional: called by `bind_edits` with every prompt of a job that a front end splits
                              into several calls (the batch command), before the first call; an edit that gives
                              each prompt its own value (one photo per prompt) pairs them here

    `sd` is the stock diffusers `StableDiffusionPipeline`. Several edits apply in order; cleanups run in reverse."""

    def check(self, sd, prompts: list[str]) -> None: ...
    def call_kwargs(self, sd, call: dict) -> tuple[dict, Callable[[], None]]: ...
    def describe(self) -> dict: ...
    def label(self) -> str: ...


# diffusers scheduler class -> the sampler name AUTOMATIC1111 writes (and reads back) in `parameters`
A1111_SAMPLERS = {"DDIMScheduler": "DDIM", "EulerDiscreteScheduler": "Euler",
                  "EulerAncestralDiscreteScheduler": "Euler a", "DPMSolverMultistepScheduler": "DPM++ 2M",
                  "UniPCMultistepScheduler": "UniPC", "PNDMScheduler": "PLMS", "LMSDiscreteScheduler": "LMS",
                  "DDPMScheduler": "DDPM"}


@dataclass
class GeneratedImage:
    image: "object"  # PIL.Image.Image
    settings: dict = field(default_factory=dict)
    labels: tuple[str, ...] = ()  # the edits' `label()`s, appended to the `parameters` chunk

    def pnginfo(self):
        """PNG text chunks: A1111-style `parameters` plus our JSON `personalize` settings."""
        from PIL.PngImagePlugin import PngInfo

        s = self.settings
        info = PngInfo()
        text = s["prompt"] + "\n"
        if s.get("negative_prompt"):
            text += f"Negative prompt: {s['negative_prompt']}\n"
        sampler = A1111_SAMPLERS.get(s.get("scheduler"), s.get("scheduler"))
        text += f"Steps: {s['steps']}, Sampler: {sampler}, CFG scale: {s['guidance_scale']}, Seed: {s['seed']}, "
        text += f"Size: {s['width']}x{s['height']}, Model: {s['base']}"
        text += "".join(f", {label}" for label in self.labels if label)
        info.add_text("parameters", text)
        info.add_text("personalize", json.dumps(s, sort_keys=True))
        return info


@dataclass
class _Applied:
    artifact: Artifact
    undo: Callable[[], None]


def _pick(device, dtype) -> tuple[torch.device, torch.dtype]:
    """Default: the GPU in float16 when there is one, else the CPU in float32."""
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise PersonalizeError(f"device {device!r} is not a torch device (expected e.g. cpu, cuda, cuda:1, mps)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PersonalizeError(f"device {device} was asked for but this torch build sees no CUDA GPU")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        names = [k for k in DTYPES if k not in MIXED_PRECISION[:1]]  # not accelerate's "no"
        if dtype not in names:
            raise PersonalizeError(f"dtype {dtype!r} is not supported; expected one of {', '.join(names)}")
        dtype = DTYPES[dtype]
    return device, dtype


def make_scheduler(name: str, config):
    import diffusers

    if name not in SCHEDULERS:
        raise PersonalizeError(f"scheduler {name!r} is not known; expected one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


class Pipeline:
    """A live Stable Diffusion pipeline plus the artifacts applied to it, in order, and the base's profile."""

    def __init__(self, sd_pipe, base: str, profile=None):
        self.sd = sd_pipe  # the stock diffusers StableDiffusionPipeline
        self.base = base
        self.profile = profile or profile_for(base, getattr(sd_pipe, "text_encoder", None),
                                              getattr(sd_pipe, "text_encoder_2", None))  # per model family
        self._applied: list[_Applied] = []
        self._noted: set[str] = set()  # the unknown words already named in a note

    @property
    def width(self) -> int:
        return self.sd.text_encoder.get_input_embeddings().weight.shape[1]

    @property
    def native_size(self) -> int:
        """The image size the UNet was built for (sample_size x VAE factor), used when none is given."""
        return self.sd.unet.config.sample_size * self.sd.vae_scale_factor

    @property
    def artifacts(self) -> list[Artifact]:
        return [a.artifact for a in self._applied]

    def _apply(self, art: Artifact) -> None:
        from personalize.methods import record_for_base

        self._applied.append(_Applied(art, record_for_base(art, self.profile, self.base).apply(self.sd, art)))

    def add_artifact(self, artifact: str | Path | Artifact, token: str | None = None) -> Artifact:
        art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact, self.width, token)
        if any(a.artifact.path == art.path for a in self._applied):
            raise ArtifactError(f"{art.path} is already loaded")
        self._apply(art)
        return art

    def _index(self, key: str | Path | Artifact) -> int:
        for i, applied in enumerate(self._applied):
            art = applied.artifact
            if key is art or str(key) in (art.path, art.name) or str(key) in art.triggers:
                return i
        loaded = ", ".join(a.artifact.name for a in self._applied) or "none"
        raise ArtifactError(f"artifact {key!s} is not loaded (loaded: {loaded})")

    def remove_artifact(self, key: str | Path | Artifact) -> None:
        """Undo the later artifacts, this one, then re-apply the later ones (exact, order-safe)."""
        i = self._index(key)
        later = self._applied[i + 1 :]
        for applied in reversed(self._applied[i:]):
            applied.undo()
        self._applied = self._applied[:i]
        for applied in later:
            self._apply(applied.artifact)

    def set_artifacts(self, paths: list[str | Path]) -> None:
        """Make the loaded set exactly `paths` (what a UI selection asks for), touching only the difference."""
        wanted = [str(Path(p)) for p in paths]
        for art in [a for a in self.artifacts if a.path not in wanted]:
            self.remove_artifact(art)
        for path in wanted:
            if path not in [a.path for a in self.artifacts]:
                self.add_artifact(path)

    def set_scheduler(self, name: str) -> None:
        self.sd.scheduler = make_scheduler(name, self.sd.scheduler.config)

    def prompt_hint(self, prompts: list[str], known: Sequence[str] = ()) -> str | None:
        """One line naming the words of `prompts` the base never saw (its profile's note: the toy world's; None
        when all are known, and on bases without one); `known` adds words (an edit's identifier: "f l")."""
        if self.profile.unknown_words is None:
            return None
        return self.profile.hint_for(self.profile.unknown_words(list(prompts), self._known(known)))

    def _known(self, known: Sequence[str] = ()) -> list[str]:
        """The words the base need not know: trigger words, the words a tokenless artifact (DreamBooth, LoRA) was
        trained with ("sks"), and `known`."""
        from personalize.artifacts import trained_on

        return [t for a in self.artifacts for t in a.triggers + trained_on(a).replace("{}", " ").split()] + list(known)

    def note_prompts(self, prompts: list[str], edits: Sequence[Edit] = ()) -> None:
        """Log the profile's note on the unknown words of `prompts` not noted before by this pipeline:
        `bind_edits` calls it before a front end starts its progress bar (a note logged under a running bar is
        glued onto its line), `generate` for direct calls."""
        if self.profile.unknown_words is None:
            return
        known = self._known([w for e in edits for w in getattr(e, "known_words", ())])
        new = [w for w in self.profile.unknown_words(list(prompts), known) if w not in self._noted]
        if new:
            self._noted.update(new)
            logger.warning("note: %s", self.profile.hint_for(new))

    def edits(self, edits) -> list[Edit]:
        """`edits` as a list of `Edit`s: a list as it is, or a plain description {method name: options} (or a
        list of (name, options) pairs) made by the registry's inference methods for this base's profile."""
        if is_description(edits):
            from personalize.methods import edits_from

            return edits_from(edits, self.profile)
        return list(edits or ())

    def check_edits(self, prompts: list[str], edits: Sequence[Edit]) -> None:
        """Raise the first edit's error for a prompt it cannot apply to (every prompt, before any image)."""
        for e in edits:
            e.check(self.sd, list(prompts))

    def bind_edits(self, prompts: list[str], edits: Sequence[Edit]) -> None:
        """Tell each edit every prompt of a job that will be generated in several calls (`Edit.bind`), then check
        them all: what the batch command does before its first image."""
        for e in edits:
            if hasattr(e, "bind"):
                e.bind(list(prompts))
        self.check_edits(prompts, edits)
        self.note_prompts(prompts, edits)

    def settings(self, prompt: str, seed: int, negative_prompt: str | None = None, steps: int = 30,
                 guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
                 edits: Sequence[Edit] = ()) -> dict:
        """Everything that determines one image, as stored in its PNG text chunk; each edit adds its `describe()`."""
        out = {
            "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "steps": steps,
            "guidance_scale": guidance_scale, "height": height or self.native_size,
            "width": width or self.native_size, "base": self.base,
            "scheduler": type(self.sd.scheduler).__name__, "artifacts": [a.name for a in self.artifacts],
        }
        for e in edits:
            described = e.describe()
            clash = sorted(set(described) & set(out))
            if clash:
                raise PersonalizeError(f"edit {type(e).__name__} describes {clash}, already in the settings")
            out |= described
        return out

    def generate(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_images: int = 1, seed: int | list[int] | None = None, steps: int = 30,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                 edits=(), **kwargs) -> list[GeneratedImage]:
        """Images for each prompt; image k of each prompt uses seed + k (a random seed when None).

        `guidance_scale`: default the base's (`profile.guidance_scale`: 7.5, the toy world 5), as in the CLI.
        `seed` may also be a list: one image per listed seed for each prompt (`num_images` is then ignored).
        `edits`: generation edits (`Edit`), applied in order to the diffusers call, or their plain description
        {method name: options} (`Pipeline.edits`; the README lists the inference methods and their options);
        `personalize.edits(...)` writes that description from the Python API's shorthands.
        Extra keyword arguments go to the diffusers pipeline call unchanged."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_prompt if isinstance(negative_prompt, list) else [negative_prompt] * len(prompts)
        check_prompts(prompts, negatives)
        guidance_scale = self.profile.guidance_scale if guidance_scale is None else guidance_scale
        per_prompt = _seeds(seed, num_images)
        num_images = len(per_prompt)
        check_numbers(steps, guidance_scale, height, width, per_prompt)
        height, width = height or self.native_size, width or self.native_size
        seeds = per_prompt * len(prompts)
        edits = self.edits(edits)
        self.check_edits(prompts, edits)
        self.note_prompts(prompts, edits)
        # CPU generators, as diffusers recommends for reproducibility: a seed gives the same starting noise
        # on every device (A1111's "CPU" RNG source); diffusers moves the noise to the model's device.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        neg = None if all(n is None for n in negatives) else [n or "" for n in negatives]
        call = {"prompt": prompts, "negative_prompt": neg, "num_images_per_prompt": num_images,
                "generator": generators, "num_inference_steps": steps, "guidance_scale": guidance_scale,
                "height": height, "width": width}
        taken = sorted(set(kwargs) & set(call))
        if taken:
            raise PersonalizeError(f"{taken} are set by generate's own arguments (prompt, num_images, seed, ...)")
        unknown = sorted(set(kwargs) - _call_parameters(self.sd))
        if unknown:  # diffusers would swallow them silently (its **kwargs)
            raise PersonalizeError(f"generate() got unknown keyword arguments {unknown}: extra ones go to the diffusers "
                                   f"{type(self.sd).__name__} call, which has no such parameter; generation edits go "
                                   "in edits= (e.g. edits=personalize.edits(...))")
        settings = [self.settings(prompts[j // num_images], s, negatives[j // num_images], steps, guidance_scale,
                                  height, width, edits) for j, s in enumerate(seeds)]  # (a clash fails early)
        labels = tuple(e.label() for e in edits)
        out = _edited_call(self.sd, call | kwargs, edits)
        return [GeneratedImage(image, s, labels) for image, s in zip(out.images, settings, strict=True)]


def is_description(edits) -> bool:
    """Whether `edits` is a plain description ({method: options} or (method, options) pairs), not Edit objects."""
    return isinstance(edits, dict) or any(isinstance(e, (tuple, list)) for e in edits or ())


def _seeds(seed: int | list[int] | None, num_images: int) -> list[int]:
    """The seeds of one prompt's images: the listed ones, or seed, seed + 1, ... (drawn when None)."""
    if isinstance(seed, (list, tuple)):
        seeds, num_images = [int(s) for s in seed], len(seed)
    else:
        base_seed = secrets.randbelow(2**31) if seed is None else int(seed)
        seeds = [base_seed + k for k in range(num_images)]
    if num_images < 1:
        raise PersonalizeError(f"num_images must be >= 1, got {num_images}")
    return seeds


def _call_parameters(sd) -> set[str]:
    """The named parameters of the diffusers pipeline's `__call__` (not its catch-all **kwargs)."""
    import inspect

    return {name for name, p in inspect.signature(type(sd).__call__).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"}


def _edited_call(sd, call: dict, edits: list[Edit]):
    """`sd(**call)` after each edit rewrote `call` in order; the cleanups of the edits applied so far run in
    reverse order whatever happens (an edit's call_kwargs raising, or the call itself)."""
    cleanups = []
    try:
        for e in edits:
            call, cleanup = e.call_kwargs(sd, call)
            cleanups.append(cleanup)
        return sd(**call)
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def pipeline_from_components(comps: Components, device=None, dtype=None, scheduler: str | None = None) -> Pipeline:
    device, dtype = _pick(device, dtype)
    sd = comps.pipeline().to(device)
    if sd.unet.dtype != dtype:  # components loaded in another dtype (tiny builders, single files)
        sd.to(dtype=dtype)
    sd.set_progress_bar_config(disable=True)
    pipe = Pipeline(sd, comps.source)
    if scheduler:
        pipe.set_scheduler(scheduler)
    return pipe


def live_pipeline(comps: Components) -> Pipeline:
    """A `Pipeline` on the modules as they are (no move, no cast): validation images during training."""
    sd = comps.pipeline()
    sd.set_progress_bar_config(disable=True)
    return Pipeline(sd, comps.source)


def load_pipeline(base: str = TOY, artifacts: list[str | Path | Artifact] = (), device=None, dtype=None,
                  scheduler: str | None = None, safety_checker: bool = False,
                  local_files_only: bool = False, single_file_config: str | None = None) -> Pipeline:
    """Load a base model (see `components.load_components`) and apply `artifacts` in order."""
    from personalize.components import base_profile
    from personalize.methods import record_for_base
    from personalize.quiet import quiet

    quiet()  # the Python API too: no "requires torchvision" lines for the safety checker's unused processor
    device, dtype = _pick(device, dtype)
    arts = [a if isinstance(a, Artifact) else load_artifact(a) for a in artifacts]  # bad files fail before the
    # slow model load, and so do files of another model family
    profile = base_profile(base) if arts else None
    for art in arts:
        record_for_base(art, profile, base)
    comps = load_components(base, local_files_only=local_files_only, single_file_config=single_file_config,
                            dtype=dtype, safety_checker=safety_checker)
    pipe = pipeline_from_components(comps, device, dtype, scheduler)
    for art in arts:
        pipe.add_artifact(art)  # the method's apply checks the width against this model
    return pipe
