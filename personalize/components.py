"""Load the Stable Diffusion parts (tokenizer, text encoder, VAE, UNet, scheduler) from anywhere users keep them.

`model.pretrained` may be
  (a) a diffusers folder (has `model_index.json`),
  (b) a hub id `org/name` (cache first; the network only when `local_files_only` is False),
  (c) a single-file `.safetensors` checkpoint (diffusers' `from_single_file`),
  (d) the name of a bundled model (`personalize.profiles`: the toy world's tiny model in `assets/toyworld/`).
Everything is loaded by diffusers/transformers exactly as they load it themselves; we only choose the route
and turn their errors into ones that say what was given and what was expected.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from personalize.artifacts import PICKLE_SUFFIXES
from personalize.errors import PersonalizeError
from personalize.profiles import PIPELINE_CLASSES, SD1, TOY, profile_for

SINGLE_FILE_SUFFIXES = (".safetensors",)
# the one table of dtype names: `load_pipeline(dtype=...)`/--dtype, and accelerate's `train.mixed_precision`
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}
MIXED_PRECISION = ("no", "fp16", "bf16")


class ComponentsError(PersonalizeError):
    """`model.pretrained` could not be resolved or loaded."""


@dataclass
class Components:
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any
    source: str  # what `pretrained` resolved to, for artifact metadata
    safety_checker: Any = None
    feature_extractor: Any = None
    tokenizer_2: Any = None  # SDXL: OpenCLIP ViT-bigG's tokenizer (pads with "!") and text encoder
    text_encoder_2: Any = None
    pipeline_config: dict = field(default_factory=dict)  # the profile's `pipeline_options`, as the model sets them

    @property
    def width(self) -> int:
        """Token-embedding width of the (first) text encoder (768 for SD1 and SDXL, 1024 for SD2)."""
        return self.text_encoder.get_input_embeddings().weight.shape[1]

    @property
    def profile(self):
        """The model family's record (`personalize.profiles`), from the loaded text encoders."""
        return profile_for(self.source, self.text_encoder, self.text_encoder_2)

    def as_pipeline_kwargs(self) -> dict:
        """The keyword arguments of the family's stock diffusers pipeline (`profile.parts`)."""
        kwargs = {name: getattr(self, name) for name in self.profile.parts}
        if "safety_checker" in kwargs:
            kwargs["requires_safety_checker"] = self.safety_checker is not None
        return kwargs | self.pipeline_config

    def pipeline(self):
        """The family's stock diffusers pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline) on these
        modules, as they are (no move, no cast)."""
        import diffusers

        return getattr(diffusers, self.profile.pipeline_class)(**self.as_pipeline_kwargs())


def resolve_pretrained(pretrained: str) -> tuple[str, str]:
    """Classify `pretrained` -> (kind, location) with kind in folder|single_file|hub."""
    bundled = profile_for(pretrained).model_dir
    if bundled is not None:
        folder = bundled()
        if not (folder / "model_index.json").is_file():
            raise ComponentsError(
                f"model.pretrained={pretrained!r} needs the bundled model in {folder}, which is not there (a "
                "checkout builds it with training/toyworld/model.py; an installed package carries it, or set "
                "$PERSONALIZE_DATA); pass a diffusers folder, a hub id or a .safetensors file"
            )
        return "folder", str(folder)
    path = Path(pretrained).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ComponentsError(
                f"model.pretrained='{pretrained}' is a folder but not a diffusers model folder "
                "(expected a model_index.json in it)"
            )
        return "folder", str(path)
    if path.is_file():
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return "single_file", str(path)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ComponentsError(
                f"model.pretrained='{pretrained}' is a pickle checkpoint; pickles are never loaded. "
                "Convert it to .safetensors first (expected a .safetensors checkpoint or a diffusers folder)"
            )
        raise ComponentsError(f"model.pretrained='{pretrained}' is a file but not a .safetensors checkpoint")
    parts = pretrained.split("/")
    if len(parts) == 2 and all(parts) and not pretrained.startswith((".", "~")):
        return "hub", pretrained
    raise ComponentsError(
        f"model.pretrained='{pretrained}' was not found: expected an existing diffusers folder, "
        f"a .safetensors checkpoint, a hub id like 'org/name', or {TOY!r}"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so an offline machine fails at once instead of retrying."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def pipeline_profile(index: dict, location: str):
    """The family (`personalize.profiles`) of a diffusers pipeline from its `model_index.json`: SDXL base by its
    class; an SDXL refiner (img2img, no first text encoder) is refused; anything else loads as SD 1.x/2.x, as
    before SDXL was supported."""
    name = str(index.get("_class_name", ""))
    no_first_encoder = (index.get("text_encoder") or [None])[0] is None
    if "XL" in name and (name not in PIPELINE_CLASSES or no_first_encoder):
        raise ComponentsError(
            f"model '{location}' is a {name} (an SDXL refiner or another SDXL pipeline without a first text "
            "encoder); expected an SDXL base (StableDiffusionXLPipeline) or an SD 1.x/2.x model. The refiner is "
            "not supported")
    return PIPELINE_CLASSES.get(name, SD1)


def _family_kwargs(profile, kwargs: dict) -> dict:
    """`kwargs` less what the family's pipeline does not take (SDXL has no safety checker)."""
    return {k: v for k, v in kwargs.items() if "safety_checker" not in k or "safety_checker" in profile.parts}


def _from_pretrained(location: str, local_files_only: bool, kwargs: dict):
    import diffusers

    index = diffusers.DiffusionPipeline.load_config(location, local_files_only=local_files_only,
                                                    revision=kwargs.get("revision"))
    profile = pipeline_profile(index, location)
    cls = getattr(diffusers, profile.pipeline_class)
    return cls.from_pretrained(location, local_files_only=local_files_only, **_family_kwargs(profile, kwargs))


def _load_hub(repo_id: str, local_files_only: bool, kwargs: dict):
    try:  # the cache first: works offline for models downloaded before
        return _from_pretrained(repo_id, True, kwargs)
    except ComponentsError:
        raise
    except (OSError, ValueError) as err:
        cached_error = err
    if local_files_only:
        raise ComponentsError(
            f"hub model '{repo_id}' is not in the local cache and model.local_files_only is set; "
            f"download it first or pass a local diffusers folder ({cached_error})"
        )
    if not hub_reachable():
        raise ComponentsError(
            f"hub model '{repo_id}' is not cached and the hub cannot be reached from this machine; "
            "pass a local diffusers folder or a .safetensors checkpoint"
        )
    try:
        return _from_pretrained(repo_id, False, kwargs)
    except ComponentsError:
        raise
    except (OSError, ValueError) as err:
        raise ComponentsError(f"could not load hub model '{repo_id}': {err}") from err


def checkpoint_profile(path: str):
    """The family of an original-layout (LDM/SGM) single-file checkpoint, from its tensor names only (read off
    the safetensors header, nothing loaded): SDXL base when it has `conditioner.embedders.1.*` (OpenCLIP
    ViT-bigG beside CLIP ViT-L at embedders.0), as diffusers' `infer_diffusers_model_type` decides; an SDXL
    refiner (OpenCLIP at embedders.0 alone) is refused; anything else SD 1.x/2.x."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
        raise ComponentsError(f"could not read single-file checkpoint '{path}': {err}") from err
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return PIPELINE_CLASSES["StableDiffusionXLPipeline"]
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise ComponentsError(f"single-file checkpoint '{path}' is an SDXL refiner (OpenCLIP only); expected an "
                              "SDXL base or an SD 1.x/2.x checkpoint. The refiner is not supported")
    return SD1


def _load_single_file(path: str, config: str | None, local_files_only: bool, kwargs: dict):
    import diffusers

    if not local_files_only and ((config is not None and Path(config).is_dir()) or not hub_reachable()):
        local_files_only = True  # a local config folder never needs the hub; an unreachable hub fails at once
    profile = checkpoint_profile(path)
    try:
        return getattr(diffusers, profile.pipeline_class).from_single_file(
            path, config=config, local_files_only=local_files_only, **_family_kwargs(profile, kwargs)
        )
    except Exception as err:  # diffusers raises many types here (KeyError, ValueError, OSError, SafetensorError)
        raise ComponentsError(
            f"could not load single-file checkpoint '{path}': {err}. Expected an original-layout Stable Diffusion "
            "checkpoint; set model.single_file_config to a diffusers folder of the same model type when the "
            "layout cannot be inferred offline"
        ) from err


def base_profile(pretrained: str):
    """The profile of a base before its weights load (`personalize.profiles`), never from the network: the bundled
    model by name, a folder or cached hub model by its `model_index.json`, a single file by its tensor names.
    SD 1.x and 2.x are told apart only once the text encoder loads (this returns SD 1.x for both: the same
    family); a hub model that is not cached is taken for SD 1.x/2.x, as before SDXL."""
    import diffusers

    bundled = profile_for(pretrained)
    if bundled.model_dir is not None:
        return bundled
    kind, location = resolve_pretrained(pretrained)
    if kind == "single_file":
        return checkpoint_profile(location)
    try:
        index = diffusers.DiffusionPipeline.load_config(location, local_files_only=True)
    except (OSError, ValueError):
        return SD1
    return pipeline_profile(index, location)


def load_components(
    pretrained: str = TOY,
    *,
    revision: str | None = None,
    variant: str | None = None,
    local_files_only: bool = False,
    single_file_config: str | None = None,
    dtype: torch.dtype | None = None,
    safety_checker: bool = False,
) -> Components:
    """Load all parts of a Stable Diffusion model; see the module docstring for what `pretrained` may be."""
    kind, location = resolve_pretrained(pretrained)
    kwargs: dict = {"dtype": dtype} if dtype is not None else {}
    if not safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if kind == "folder":
        try:
            pipe = _from_pretrained(location, True, {"revision": revision, "variant": variant, **kwargs})
        except ComponentsError:
            raise
        except (OSError, ValueError) as err:
            raise ComponentsError(f"could not load diffusers folder '{location}': {err}") from err
    elif kind == "hub":
        pipe = _load_hub(location, local_files_only, {"revision": revision, "variant": variant, **kwargs})
    else:
        pipe = _load_single_file(location, single_file_config, local_files_only, kwargs)
    if safety_checker and getattr(pipe, "safety_checker", None) is None:
        raise ComponentsError(f"a safety checker was asked for, but model '{pretrained}' has none")
    profile = profile_for(pretrained, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
    return Components(source=pretrained, **{name: getattr(pipe, name, None) for name in profile.parts},
                      pipeline_config={name: pipe.config[name] for name in profile.pipeline_options})


def components_from_config(model_cfg, dtype: torch.dtype | None = None) -> Components:
    """`load_components` with the fields of a `config.ModelConfig`."""
    return load_components(
        model_cfg.pretrained, revision=model_cfg.revision, variant=model_cfg.variant,
        local_files_only=model_cfg.local_files_only, single_file_config=model_cfg.single_file_config,
        dtype=dtype,
    )
