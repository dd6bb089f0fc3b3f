"""Artifact files: safetensors only, one file per trained concept, atomic writes.

Our files carry string metadata: `method`, `format_version`, `base_model`, `tokens` (JSON list of triggers),
`config` (JSON), `weights` (the kind of the non-token tensors, "none" when there are none), plus method-specific
fields. This module reads and writes tensors and metadata and knows no method: the token embeddings are the one
shared layout (key = trigger word, float32 `[n_vectors, width]`; an embedding-only file is `<trigger>.safetensors`
and loads in diffusers `load_textual_inversion`, AUTOMATIC1111 and ComfyUI); every other tensor belongs to the
method named in the metadata, which owns its kinds and their apply/undo (the personalization bases: `delta`, new
values of named parameters, and `lora`, the diffusers/peft layout). A new kind (an encoder's weights, identity
vectors) needs no change here.
Files without our metadata are read as third-party embeddings (diffusers `learned_embeds`, A1111/kohya
single-key or `emb_params`, SDXL `clip_l`/`clip_g`) or third-party LoRA files, labelled with the registry names
in `FOREIGN_EMBEDDING` / `FOREIGN_LORA`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from personalize.atomic import atomic_save_file
from personalize.errors import PersonalizeError

FORMAT_VERSION = "1"
TRIGGER_RE = re.compile(r"^[A-Za-z0-9._-]+$")
KIND_RE = re.compile(r"^[a-z0-9_]+$")
PICKLE_SUFFIXES = (".pt", ".bin", ".ckpt", ".pth", ".pkl")
SDXL_KEYS = ("clip_l", "clip_g")
# CLIP reads 77 tokens, two of them start and end: more vectors than that can never reach the model, and a huge
# table only makes every prompt slow (a 10,000-vector file took 533 s for one 2-step image)
MAX_VECTORS = 75
FOREIGN_EMBEDDING = "textual_inversion"  # the method whose `apply` reads a third-party embedding file
FOREIGN_LORA = "lora"  # ... and a third-party LoRA file (kind "lora")


class ArtifactError(PersonalizeError):
    """An artifact file that cannot be read, written or applied; the message says what was expected."""


@dataclass
class Artifact:
    """A loaded artifact: the token embeddings, the method's other tensors and their kind, and the metadata."""

    path: str
    method: str
    metadata: dict[str, str]
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # trigger -> (n_vectors, width)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's tensors, by key
    kind: str = "none"  # what `weights` are, as the method names it ("delta", "lora", ...)

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def triggers(self) -> list[str]:
        return list(self.embeddings)

    def __repr__(self) -> str:
        """One line (the tensors are summarized by count and size, not printed)."""
        n = sum(t.numel() for t in [*self.embeddings.values(), *self.weights.values()])
        return (f"Artifact({self.name!r}, method={self.method!r}, triggers={self.triggers}, kind={self.kind!r}, "
                f"tensors={len(self.embeddings) + len(self.weights)} ({n:,} values), "
                f"base_model={self.metadata.get('base_model', '?')!r}, path={self.path!r})")


@dataclass
class ArtifactContent:
    """What a training method's `artifact()` returns: the file name (without suffix) and what it holds."""

    name: str
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    kind: str = "none"
    metadata: dict[str, str] = field(default_factory=dict)  # method-specific fields


# ---------------------------------------------------------------------------------------------- writing


def check_trigger(trigger: str) -> str:
    if not TRIGGER_RE.match(trigger or ""):
        raise ArtifactError(f"trigger {trigger!r} must be non-empty and use only letters, digits, '.', '_' or '-'")
    return trigger


def make_metadata(method: str, base_model: str, tokens: list[str], config: str | dict = "{}",
                  weights: str = "none", **extra: str) -> dict[str, str]:
    if not KIND_RE.match(weights or ""):
        raise ArtifactError(f"weights kind {weights!r} must be a lower-case name (letters, digits, '_'), e.g. 'delta'")
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
                  weights: dict | None = None, kind: str = "none", config: str | dict = "{}",
                  **extra: str) -> Path:
    """Write a combined artifact: embeddings (trigger keys) + the method's tensors of one `kind`."""
    embeddings, weights = embeddings or {}, weights or {}
    for trigger in embeddings:
        check_trigger(trigger)
    if bool(weights) != (kind != "none"):
        raise ArtifactError(f"weights kind {kind!r} with {len(weights)} weight tensors: a kind names the weights "
                            "when there are some, 'none' when there are none")
    clash = set(embeddings) & set(weights)
    if clash:
        raise ArtifactError(f"trigger names clash with weight keys: {sorted(clash)}")
    meta = make_metadata(method, base_model, list(embeddings), config, kind, **extra)
    tensors = {k: v.float() for k, v in embeddings.items()} | dict(weights)
    if not tensors:
        raise ArtifactError("nothing to save: no embeddings or weight tensors given")
    return atomic_save_file(tensors, path, meta)


def save_content(path: str | Path, method: str, base_model: str, content: ArtifactContent,
                 config: str | dict = "{}") -> Path:
    """`save_artifact` for what a training method's `artifact()` returned."""
    return save_artifact(path, method, base_model, embeddings=content.embeddings, weights=content.weights,
                         kind=content.kind, config=config, **content.metadata)


# ---------------------------------------------------------------------------------------------- reading


def trained_on(art: Artifact) -> str:
    """The first caption (or else the instance prompt) an artifact's training used, from its metadata; '' if
    unknown. Captions beside the images win, as they did in training."""
    try:
        data = json.loads(art.metadata.get("config") or "{}").get("data") or {}
        prompt = data.get("instance_prompt")
    except (ValueError, AttributeError):  # a foreign file's `config` that is not ours
        prompt = None
    return str(art.metadata.get("example_caption") or prompt or "")


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
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION!r}")
    try:
        triggers = json.loads(meta.get("tokens", "[]"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: metadata 'tokens' is not a JSON list: {err}") from err
    if not isinstance(triggers, list) or not all(isinstance(t, str) for t in triggers):
        raise ArtifactError(f"{path}: metadata 'tokens' must be a JSON list of trigger words, got {triggers!r}")
    _check_config(path, meta)
    missing = [t for t in triggers if t not in tensors]
    if missing:
        raise ArtifactError(f"{path}: metadata lists tokens {missing} that have no tensor in the file")
    embeddings = {t: tensors[t] for t in triggers}
    rest = {k: v for k, v in tensors.items() if k not in embeddings}
    kind = meta.get("weights", "none")
    if kind == "none" and rest:
        raise ArtifactError(f"{path}: tensors {sorted(rest)[:3]} are neither listed tokens nor weights")
    return Artifact(str(path), meta["method"], meta, embeddings, weights=rest, kind=kind)


def _check_config(path: Path, meta: dict) -> None:
    """The `config` metadata, when present, is the JSON object of a training config (sections are objects)."""
    if "config" not in meta:
        return
    try:
        config = json.loads(meta["config"])
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: metadata 'config' is not JSON: {err}") from None
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise ArtifactError(f"{path}: metadata 'config' must be a JSON object of config sections (objects), got "
                            f"{str(meta['config'])[:80]!r}")


def _check_tensors(art: "Artifact") -> None:
    """Embeddings are [n, width] with 1..MAX_VECTORS rows; every floating tensor is finite."""
    for trigger, vectors in art.embeddings.items():
        if vectors.ndim not in (1, 2) or vectors.ndim == 2 and not 1 <= vectors.shape[0] <= MAX_VECTORS:
            raise ArtifactError(f"{art.path}: embedding {trigger!r} has shape {tuple(vectors.shape)}; expected "
                                f"[n_vectors, width] with 1 to {MAX_VECTORS} vectors (what CLIP's 77-token context "
                                "can hold)")
    for name, tensor in {**art.embeddings, **art.weights}.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(f"{art.path}: tensor {name!r} holds NaN or Inf values; the file is broken "
                                "(retrain or re-export it)")


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
    else:  # a third-party file: its family from its layout
        meta = meta | {"family": foreign_family(tensors)}
        if is_lora_state_dict(tensors):
            art = Artifact(str(path), FOREIGN_LORA, meta, weights=tensors, kind="lora")
        else:
            trigger, vectors = _foreign_embedding(path, tensors, width)
            art = Artifact(str(path), FOREIGN_EMBEDDING, meta, embeddings={trigger: vectors})
    _check_tensors(art)
    if token is not None:
        if len(art.embeddings) != 1:
            raise ArtifactError(f"token={token!r} renames one embedding, but {path} has {len(art.embeddings)}")
        art.embeddings = {token: next(iter(art.embeddings.values()))}
    art.embeddings = {t: (v[None] if v.ndim == 1 else v).float() for t, v in art.embeddings.items()}
    if width is not None:
        check_width(art, width)
    return art


# key prefixes only SDXL files have: its second text encoder (kohya, diffusers) and kohya's SDXL UNet names, which
# are the original SGM UNet's (input_blocks/middle_block/output_blocks; kohya's SD 1.x/2.x files use diffusers'
# down_blocks/mid_block/up_blocks)
SDXL_ONLY_PREFIXES = ("lora_te2_", "text_encoder_2.", "te2.", "lora_unet_input_blocks_", "lora_unet_middle_block_",
                      "lora_unet_output_blocks_")


def artifact_family(art: Artifact) -> str:
    """The model family a file was made for (`personalize.profiles.Profile.family`): the `family` metadata (ours
    since SDXL; set from the layout when a third-party file is read); our files from before SDXL: "sd"."""
    return art.metadata.get("family", "sd")


def foreign_family(tensors: dict) -> str:
    """A third-party file's family by its layout: SDXL for an embedding with a `clip_g` part or a LoRA with a key
    of `SDXL_ONLY_PREFIXES`, else SD 1.x/2.x."""
    if "clip_g" in tensors or any(k.startswith(SDXL_ONLY_PREFIXES) for k in tensors):
        return "sdxl"
    return "sd"


def check_width(art: Artifact, width: int) -> None:
    for trigger, vectors in art.embeddings.items():
        if vectors.ndim != 2 or vectors.shape[1] != width:
            family = {768: "SD 1.x", 1024: "SD 2.x"}.get(int(vectors.shape[-1]), "another model")
            raise ArtifactError(
                f"{art.path}: embedding {trigger!r} has width {vectors.shape[-1]} ({family}), but the loaded text "
                f"encoder has width {width}; use an embedding trained for this model family"
            )
