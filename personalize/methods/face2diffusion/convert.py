"""The official Face2Diffusion weights (mapooon/Face2Diffusion) as one of our encoder files.

The release ships two pickles, `msid.pt` (the MSID encoder, src/msid.py `msid_base_patch8_112`) and `mapping.pt`
(`IMG2TEXTwithEXP(384*4, 384*4, 768)`, src/modules.py); inference_f2d.py loads each with
`load_state_dict` straight from the unpickled file, so they are bare state dicts of those modules. `convert_official` reads
them weights-only (a pickle that holds code is refused), loads them strictly into our models at the official sizes
(model.py: same key names and shapes) and writes `face2diffusion.safetensors` (encoder.py's format), with the
source files' sha256 and the licence of the weights in its metadata.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from personalize.artifacts import ArtifactContent
from personalize.errors import PersonalizeError
from personalize.methods.face2diffusion import encoder

LICENCE = "CC BY-NC-SA 4.0 (Face2Diffusion official weights: non-commercial, share-alike)"
BASE_MODEL = "CompVis/stable-diffusion-v1-4"  # what inference_f2d.py runs the official weights on
RELEASE = "mapooon/Face2Diffusion"
OUT_NAME = "face2diffusion.safetensors"
# a key only the other file has: the two paths given the wrong way round
OTHER_FILE_KEY = {"msid": ("null_exp", "mapping.pt"), "mapping": ("pos_embed", "msid.pt")}


def official_state_dict(data: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one official file. Besides the bare state dict the release ships, our tolerance (unverified
    whether any copy of the official files needs it): a dict holding it under "state_dict" (a training
    checkpoint), and keys that all start with "module." (saved from `nn.DataParallel`), which is stripped."""
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data:
        raise PersonalizeError(f"{path} holds a {type(data).__name__}, expected the state dict (a dict of "
                               "tensors) that inference_f2d.py loads")
    if all(isinstance(k, str) and k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    bad = [str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise PersonalizeError(f"{path}: entries {bad[:3]} are not named tensors; expected a state dict")
    return data


def load_official(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    """`encoder.load_strict` on one official state dict: every key and shape checked, the first misfit named."""
    key, other = OTHER_FILE_KEY[prefix]
    if key in state and key not in module.state_dict():
        raise PersonalizeError(f"{path} holds the {'mapping' if prefix == 'msid' else 'MSID'} weights ({key}): "
                               f"give the two files in the order msid.pt, mapping.pt (this one looks like {other})")
    own = module.state_dict()
    for name, value in state.items():  # shapes first, worded for the official file (no metadata to check here)
        if name in own and value.shape != own[name].shape:
            raise PersonalizeError(f"{path}: {name} has shape {tuple(value.shape)}, the official {prefix} model "
                                   f"expects {tuple(own[name].shape)}")
    encoder.load_strict(module, {f"{prefix}.{k}": v for k, v in state.items()}, prefix, path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def output_path(msid_pt: str | Path, out: str | Path | None) -> Path:
    """`out` if it names a .safetensors file, else `face2diffusion.safetensors` in the folder `out` (default: the
    folder of msid.pt)."""
    if out is None:
        return Path(msid_pt).parent / OUT_NAME
    out = Path(out)
    return out if out.suffix == ".safetensors" and not out.is_dir() else out / OUT_NAME


def official_encoder(msid_pt: Path, mapping_pt: Path) -> encoder.FaceEncoder:
    """Both files read weights-only and loaded strictly into MSIDEncoder / MappingNetwork at the official sizes."""
    from personalize.convert import load_weights_only
    from personalize.methods.face2diffusion.model import MappingConfig, MappingNetwork, MSIDConfig, MSIDEncoder

    states = {p: official_state_dict(load_weights_only(p), p) for p in (msid_pt, mapping_pt)}
    msid, mapping = MSIDEncoder(MSIDConfig()), MappingNetwork(MappingConfig())
    load_official(msid, states[msid_pt], "msid", msid_pt)
    load_official(mapping, states[mapping_pt], "mapping", mapping_pt)
    return encoder.FaceEncoder(msid, mapping).eval().requires_grad_(False)


def convert_official(msid_pt: str | Path, mapping_pt: str | Path, out_path: str | Path | None = None,
                     force: bool = False) -> Path:
    """Write the official `msid.pt` + `mapping.pt` as one encoder file (what `FaceEncoder.load` reads); returns its
    path (`output_path`). Everything is read and checked before the file is written, atomically; an existing file
    is kept unless `force`. The tensors are the official ones as loaded into our modules (float32 parameters,
    BatchNorm's int64 `num_batches_tracked` as is)."""
    from personalize.artifacts import save_content

    msid_pt, mapping_pt = Path(msid_pt), Path(mapping_pt)
    target = output_path(msid_pt, out_path)
    if target.exists() and not force:
        raise PersonalizeError(f"{target} already exists; pass --force to overwrite it")
    enc = official_encoder(msid_pt, mapping_pt)
    source = {"release": RELEASE, **{role: {"file": p.name, "sha256": sha256(p)}
                                     for role, p in (("msid", msid_pt), ("mapping", mapping_pt))}}
    meta = enc.metadata() | {"source": json.dumps(source), "licence": LICENCE}
    content = ArtifactContent(target.stem, {}, enc.tensors(), "f2d_encoder", meta)
    return save_content(target, "face2diffusion", BASE_MODEL, content)

