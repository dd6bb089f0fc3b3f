"""`personalize convert`: the one place a pickle is read, with `torch.load(weights_only=True)` (`load_weights_only`,
also what converts the official Face2Diffusion weights: methods/face2diffusion/convert.py).

Turns third-party `.pt`/`.bin` embeddings into our `<trigger>.safetensors`:
  - AUTOMATIC1111 `.pt`: {"string_to_param": {"*": (n, width)}, "name": trigger, ...}
  - diffusers `learned_embeds.bin`: {"<token>": (width,) or (n, width)}
  - kohya `.pt`: {"emb_params": (n, width)}
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from personalize.artifacts import save_embedding
from personalize.errors import PersonalizeError


def load_weights_only(path: str | Path) -> object:
    """`torch.load(weights_only=True)` on CPU: tensors, containers and numbers only. A pickle that names any other
    global (a class, a function: code) is refused, as is a missing or corrupt file, with one error naming it."""
    path = Path(path)
    if not path.is_file():
        raise PersonalizeError(f"file to convert not found: {path}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for unsafe globals, RuntimeError/EOFError for bad files
        raise PersonalizeError(f"{path} could not be read as a weights-only torch file (a pickle that holds "
                               f"code is never loaded): {err}") from err


def read_pickled_embedding(path: Path) -> tuple[str | None, torch.Tensor]:
    data = load_weights_only(path)
    if isinstance(data, torch.Tensor):
        return None, data
    if not isinstance(data, dict):
        raise PersonalizeError(f"{path} holds a {type(data).__name__}, expected a dict of embedding tensors")
    if "string_to_param" in data:
        params = data["string_to_param"]
        return data.get("name"), params["*"] if "*" in params else next(iter(params.values()))
    if "emb_params" in data:
        return None, data["emb_params"]
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:
        return next(iter(tensors.items()))
    raise PersonalizeError(f"{path} matches no known embedding layout (keys: {sorted(map(str, data))[:5]})")


def convert(path: str | Path, out_dir: str | Path | None = None, token: str | None = None,
            force: bool = False) -> Path:
    """Convert one pickled embedding; returns the written `<trigger>.safetensors`."""
    path = Path(path)
    name, vectors = read_pickled_embedding(path)
    trigger = token or re.sub(r"[^A-Za-z0-9._-]", "", name or "") or path.stem
    out = Path(out_dir) if out_dir else path.parent
    target = out / f"{trigger}.safetensors"
    if target.exists() and not force:
        raise PersonalizeError(f"{target} already exists; pass --force to overwrite it")
    vectors = vectors.detach().float()
    return save_embedding(target, trigger, vectors if vectors.ndim == 2 else vectors.reshape(-1, vectors.shape[-1]),
                          "textual_inversion", base_model="unknown", source=f"converted from {path.name}")
