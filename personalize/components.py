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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from personalize.artifacts import PICKLE_SUFFIXES
from personalize.errors import PersonalizeError
from personalize.profiles import TOY, profile_for

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

    @property
    def width(self) -> int:
        """Token-embedding width of the text encoder (768 for SD1, 1024 for SD2)."""
        return self.text_encoder.get_input_embeddings().weight.shape[1]

    def as_pipeline_kwargs(self) -> dict:
        return {
            "tokenizer": self.tokenizer, "text_encoder": self.text_encoder, "vae": self.vae,
            "unet": self.unet, "scheduler": self.scheduler, "safety_checker": self.safety_checker,
            "feature_extractor": self.feature_extractor,
            "requires_safety_checker": self.safety_checker is not None,
        }


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


def _from_pretrained(location: str, local_files_only: bool, kwargs: dict):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(location, local_files_only=local_files_only, **kwargs)


def _load_hub(repo_id: str, local_files_only: bool, kwargs: dict):
    try:  # the cache first: works offline for models downloaded before
        return _from_pretrained(repo_id, True, kwargs)
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
    except (OSError, ValueError) as err:
        raise ComponentsError(f"could not load hub model '{repo_id}': {err}") from err


def _load_single_file(path: str, config: str | None, local_files_only: bool, kwargs: dict):
    from diffusers import StableDiffusionPipeline

    if not local_files_only and ((config is not None and Path(config).is_dir()) or not hub_reachable()):
        local_files_only = True  # a local config folder never needs the hub; an unreachable hub fails at once
    try:
        return StableDiffusionPipeline.from_single_file(
            path, config=config, local_files_only=local_files_only, **kwargs
        )
    except Exception as err:  # diffusers raises many types here (KeyError, ValueError, OSError, SafetensorError)
        raise ComponentsError(
            f"could not load single-file checkpoint '{path}': {err}. Expected an original-layout Stable Diffusion "
            "checkpoint; set model.single_file_config to a diffusers folder of the same model type when the "
            "layout cannot be inferred offline"
        ) from err


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
        except (OSError, ValueError) as err:
            raise ComponentsError(f"could not load diffusers folder '{location}': {err}") from err
    elif kind == "hub":
        pipe = _load_hub(location, local_files_only, {"revision": revision, "variant": variant, **kwargs})
    else:
        pipe = _load_single_file(location, single_file_config, local_files_only, kwargs)
    if safety_checker and pipe.safety_checker is None:
        raise ComponentsError(f"a safety checker was asked for, but model '{pretrained}' has none")
    return Components(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, unet=pipe.unet,
        scheduler=pipe.scheduler, source=pretrained, safety_checker=pipe.safety_checker,
        feature_extractor=getattr(pipe, "feature_extractor", None),
    )


def components_from_config(model_cfg, dtype: torch.dtype | None = None) -> Components:
    """`load_components` with the fields of a `config.ModelConfig`."""
    return load_components(
        model_cfg.pretrained, revision=model_cfg.revision, variant=model_cfg.variant,
        local_files_only=model_cfg.local_files_only, single_file_config=model_cfg.single_file_config,
        dtype=dtype,
    )
