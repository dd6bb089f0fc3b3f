"""Artifact files (DESIGN sec. 4): safetensors only, one file per trained concept, atomic writes.

Our files carry string metadata: `method`, `format_version`, `base_model`, `tokens` (JSON list of triggers),
`config` (JSON), `weights` ("none" | "delta" | "lora"), plus method-specific fields.
  - token embeddings: key = trigger word, float32 `[n_vectors, width]`. An embedding-only file is named
    `<trigger>.safetensors` and loads in diffusers `load_textual_inversion`, AUTOMATIC1111 and ComfyUI;
  - weight delta: keys `unet.<parameter>` / `text_encoder.<parameter>` holding the *new values* of the changed
    parameters only (exact to apply and to undo);
  - LoRA: the diffusers/peft layout that `load_lora_weights` reads.
Files without our metadata are read as third-party embeddings (diffusers `learned_embeds`, A1111/kohya
single-key or `emb_params`, SDXL `clip_l`/`clip_g`) or third-party LoRA files.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from personalize.errors import PersonalizeError

FORMAT_VERSION = "1"
TRIGGER_RE = re.compile(r"^[A-Za-z0-9._-]+$")
PICKLE_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth", ".pkl")
WEIGHT_KINDS = ("none", "delta", "lora")
DELTA_PREFIXES = ("unet.", "text_encoder.")
SDXL_KEYS = ("clip_l", "clip_g")


class ArtifactError(PersonalizeError):
    """An artifact file that cannot be read, written or applied; the message says what was expected."""


@dataclass
class Artifact:
    """A loaded artifact: what to add to a pipeline, and where it came from."""

    path: str
    method: str
    metadata: dict[str, str]
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # trigger -> (n_vectors, width)
    delta: dict[str, torch.Tensor] = field(default_factory=dict)  # "unet.<param>" -> new value
    lora: dict[str, torch.Tensor] = field(default_factory=dict)  # diffusers/kohya LoRA state dict

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def triggers(self) -> list[str]:
        return list(self.embeddings)


# ----------------------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_save_file(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
    if bad:
        raise ArtifactError(f"safetensors metadata values must be strings; not strings: {bad}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


# ---------------------------------------------------------------------------------------------- writing


def check_trigger(trigger: str) -> str:
    if not TRIGGER_RE.match(trigger or ""):
        raise ArtifactError(f"trigger {trigger!r} must be non-empty and use only letters, digits, '.', '_' or '-'")
    return trigger


def make_metadata(method: str, base_model: str, tokens: list[str], config: str | dict = "{}",
                  weights: str = "none", **extra: str) -> dict[str, str]:
    if weights not in WEIGHT_KINDS:
        raise ArtifactError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
    return {
        "method": method, "format_version": FORMAT_VERSION, "base_model": base_model,
        "tokens": json.dumps(tokens), "config": config if isinstance(config, str) else json.dumps(config),
        "weights": weights, **{k: str(v) for k, v in extra.items()},
    }


def save_embedding(out: str | Path, trigger: str, vectors: torch.Tensor, method: str, base_model: str,
                   config: str | dict = "{}", **extra: str) -> Path:
    """Write `<trigger>.safetensors` (into `out` if it is a folder) with one key, the trigger, float32 [n, width]."""
    check_trigger(trigger)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2:
        raise ArtifactError(f"embedding for {trigger!r} must be [n_vectors, width], got shape {tuple(vectors.shape)}")
    out = Path(out)
    path = out if out.suffix == ".safetensors" else out / f"{trigger}.safetensors"
    meta = make_metadata(method, base_model, [trigger], config, "none", **extra)
    return atomic_save_file({trigger: vectors.float()}, path, meta)


def save_artifact(path: str | Path, method: str, base_model: str, *, embeddings: dict | None = None,
                  delta: dict | None = None, lora: dict | None = None, config: str | dict = "{}",
                  **extra: str) -> Path:
    """Write a combined artifact: embeddings (trigger keys) + a weight delta or a LoRA state dict."""
    embeddings, delta, lora = embeddings or {}, delta or {}, lora or {}
    if delta and lora:
        raise ArtifactError("an artifact holds either a weight delta or a LoRA, not both")
    for trigger in embeddings:
        check_trigger(trigger)
    bad = [k for k in delta if not k.startswith(DELTA_PREFIXES)]
    if bad:
        raise ArtifactError(f"weight-delta keys must start with {DELTA_PREFIXES}; got {bad[:3]}")
    clash = set(embeddings) & (set(delta) | set(lora))
    if clash:
        raise ArtifactError(f"trigger names clash with weight keys: {sorted(clash)}")
    weights = "delta" if delta else "lora" if lora else "none"
    meta = make_metadata(method, base_model, list(embeddings), config, weights, **extra)
    tensors = {k: v.float() for k, v in embeddings.items()} | dict(delta) | dict(lora)
    if not tensors:
        raise ArtifactError("nothing to save: no embeddings, delta or LoRA tensors given")
    return atomic_save_file(tensors, path, meta)


# ---------------------------------------------------------------------------------------------- reading


def _check_safetensors_file(path: Path) -> None:
    if not path.exists():
        raise ArtifactError(f"artifact file not found: {path}")
    if not path.is_file():
        raise ArtifactError(f"artifact path is not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte header length, then the JSON header; its first byte can be anything (even 0x80)
    looks_safetensors = len(head) == 9 and head[8:9] == b"{"
    is_pickle = not looks_safetensors and (head[:2] == b"PK" or head[:1] == b"\x80")
    if path.suffix.lower() in PICKLE_SUFFIXES or is_pickle:
        raise ArtifactError(
            f"{path} is a pickle file, which is never loaded (it can run code). "
            f"Convert it first: personalize convert {path}"
        )
    if path.suffix.lower() != ".safetensors" or not looks_safetensors:
        raise ArtifactError(f"{path} is not a safetensors file (expected a .safetensors artifact)")


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    _check_safetensors_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # SafetensorError, OSError: corrupt or truncated file
        raise ArtifactError(f"{path} is not a readable safetensors file: {err}") from err
    return tensors, metadata


def _ours(path: Path, tensors: dict, meta: dict) -> Artifact:
    from personalize.methods import METHODS

    method = meta["method"]
    if method not in METHODS:
        raise ArtifactError(f"{path}: unknown method {method!r} in metadata; known methods: {', '.join(METHODS)}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION!r}")
    try:
        triggers = json.loads(meta.get("tokens", "[]"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: metadata 'tokens' is not a JSON list: {err}") from err
    missing = [t for t in triggers if t not in tensors]
    if missing:
        raise ArtifactError(f"{path}: metadata lists tokens {missing} that have no tensor in the file")
    embeddings = {t: tensors[t] for t in triggers}
    rest = {k: v for k, v in tensors.items() if k not in embeddings}
    weights = meta.get("weights", "none")
    if weights not in WEIGHT_KINDS:
        raise ArtifactError(f"{path}: metadata weights={weights!r}, expected one of {WEIGHT_KINDS}")
    if weights == "none" and rest:
        raise ArtifactError(f"{path}: tensors {sorted(rest)[:3]} are neither listed tokens nor weights")
    return Artifact(str(path), method, meta, embeddings,
                    delta=rest if weights == "delta" else {}, lora=rest if weights == "lora" else {})


def _foreign_embedding(path: Path, tensors: dict, width: int | None) -> tuple[str, torch.Tensor]:
    """Third-party embedding files -> (trigger, vectors). A1111 uses the file name as the trigger."""
    if set(tensors) & set(SDXL_KEYS):
        sizes = {k: tuple(v.shape)[-1] for k, v in tensors.items() if k in SDXL_KEYS}
        match = [k for k, n in sizes.items() if n == width]
        if not match:
            raise ArtifactError(
                f"{path} is an SDXL embedding with parts {sizes}; none matches this text encoder's width {width}"
            )
        return path.stem, tensors[match[0]]
    if "emb_params" in tensors:  # kohya / A1111 safetensors
        return path.stem, tensors["emb_params"]
    if "string_to_param.*" in tensors:  # A1111 .pt flattened into safetensors
        return path.stem, tensors["string_to_param.*"]
    if len(tensors) == 1:  # diffusers learned_embeds: the key is the placeholder token
        key, value = next(iter(tensors.items()))
        return (path.stem if key == "*" else key), value
    raise ArtifactError(
        f"{path} has no 'method' metadata and its keys {sorted(tensors)[:5]} match no known embedding or LoRA format"
    )


LORA_KEY_RE = re.compile(r"lora[._](up|down|A|B)\.|^lora_(unet|te\d?)_")


def is_lora_state_dict(tensors: dict) -> bool:
    """diffusers/peft (`.lora_A.`, `.lora.down.`) or kohya (`lora_unet_...lora_down`) key names."""
    return any(LORA_KEY_RE.search(k) for k in tensors)


def load_artifact(path: str | Path, width: int | None = None, token: str | None = None) -> Artifact:
    """Read an artifact (ours or third-party). `width` checks embeddings against the text encoder;
    `token` renames a single-embedding file's trigger (as diffusers' `load_textual_inversion(token=)`)."""
    path = Path(path)
    tensors, meta = read_safetensors(path)
    if "method" in meta:
        art = _ours(path, tensors, meta)
    elif is_lora_state_dict(tensors):
        art = Artifact(str(path), "lora", meta, lora=tensors)
    else:
        trigger, vectors = _foreign_embedding(path, tensors, width)
        art = Artifact(str(path), "textual_inversion", meta, embeddings={trigger: vectors})
    if token is not None:
        if len(art.embeddings) != 1:
            raise ArtifactError(f"token={token!r} renames one embedding, but {path} has {len(art.embeddings)}")
        art.embeddings = {token: next(iter(art.embeddings.values()))}
    art.embeddings = {t: (v[None] if v.ndim == 1 else v).float() for t, v in art.embeddings.items()}
    if width is not None:
        check_width(art, width)
    return art


def check_width(art: Artifact, width: int) -> None:
    for trigger, vectors in art.embeddings.items():
        if vectors.ndim != 2 or vectors.shape[1] != width:
            family = {768: "SD 1.x", 1024: "SD 2.x"}.get(int(vectors.shape[-1]), "another model")
            raise ArtifactError(
                f"{art.path}: embedding {trigger!r} has width {vectors.shape[-1]} ({family}), but the loaded text "
                f"encoder has width {width}; use an embedding trained for this model family"
            )
