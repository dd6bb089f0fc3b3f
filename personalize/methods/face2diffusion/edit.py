"""Face2Diffusion at inference: a generation edit (`personalize.pipeline.Edit`) that puts a face where the prompt
says "f l", and the per-person file that keeps a face's two vectors without the encoder.

    pipe.generate("a photo of f l smiling",
                  edits={"face2diffusion": {"encoder": "face2diffusion.safetensors", "face": ["photo.png"]}})
    save_person("alice.f2d.safetensors", ...)                  # then {"person": ["alice.f2d.safetensors"]}

Faces: one for every prompt, or one per prompt. A face photo is an aligned square crop (the encoder's input,
resized to its size; real photos are aligned first, inference_f2d.py's face_alignment step). The prompt is
encoded with the two vectors replacing the input hidden states at "f l" (`inject.py`); the negative/unconditional
branch is encoded normally, as in the official pipeline call.

The vectors bypass the position embedding, so an A1111/ComfyUI textual-inversion embedding made from them does
not reproduce Face2Diffusion: the person file is read only here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from personalize.artifacts import Artifact, ArtifactError, load_artifact, make_metadata
from personalize.atomic import atomic_save_file
from personalize.face import MAX_PIXELS
from personalize.methods.base import MethodError
from personalize.methods.face2diffusion import inject
from personalize.methods.face2diffusion.encoder import INJECT_RULE, FaceEncoder, loaded

PERSON_SUFFIX = ".f2d.safetensors"
NEEDS_ENCODER = ("a face photo needs the Face2Diffusion encoder (face_encoder / --face-encoder: a "
                 "face2diffusion.safetensors, trained or converted with `personalize convert --face2diffusion`)")
MIN_PHOTO = 16  # a photo to detect a face in: at least this many pixels a side


class FaceError(MethodError):
    """A face photo or person file that cannot be used."""


@dataclass
class Face:
    """One identity: its two vectors (W,) each, and a name for the image settings."""

    first: torch.Tensor
    last: torch.Tensor
    name: str


def read_photo(photo, face_size: int, detector=None) -> tuple[np.ndarray, str]:
    """A path or PIL image -> (uint8 (S, S, 3), name). With a `detector` (`personalize.face`) any photo of a face:
    its largest face aligned onto the template (inference_f2d.py's alignment step); without one the photo must
    already be an aligned square crop. Clear errors for what cannot be read or holds no face."""
    from PIL import Image

    from personalize.photos import PhotoError, open_photo

    name = Path(photo).name if isinstance(photo, (str, Path)) else "photo"
    try:  # the one opener: size before decoding, EXIF orientation (a phone's portrait upright), any mode -> RGB
        im = open_photo(photo, "face photo", MAX_PIXELS, name)
    except PhotoError as err:
        raise FaceError(str(err)) from err
    w, h = im.size
    if detector is not None:
        if min(w, h) < MIN_PHOTO:
            raise FaceError(f"face photo {name}: {w}x{h} is too small to hold a face; expected at least "
                            f"{MIN_PHOTO}x{MIN_PHOTO}")
        from personalize.face import detect_and_align

        im = Image.fromarray(detect_and_align(np.asarray(im), detector, face_size, name).crop)
    elif w != h or w < face_size // 2:
        raise FaceError(f"face photo {name}: {w}x{h}; expected an aligned square face crop of at least "
                        f"{face_size // 2}x{face_size // 2} (the encoder reads {face_size}x{face_size}), or a "
                        "face detector to find and align the face")
    if im.size != (face_size, face_size):
        im = im.resize((face_size, face_size), Image.BICUBIC)
    digest = hashlib.sha256(np.asarray(im).tobytes()).hexdigest()[:12]
    return np.asarray(im), f"{name}#{digest}"


def encode_faces(encoder: FaceEncoder, photos: list, check=None, crops: list | None = None,
                 detector=None) -> list[Face]:
    """Photos -> Faces in one encoder call (each photo aligned by `detector` first, if given);
    `check(arrays, names)` (uint8 (S, S, 3) each) may refuse one (the toy face check); `crops` (a list) receives
    what the encoder read."""
    arrays, names = zip(*(read_photo(p, encoder.face_size, detector) for p in photos))
    if crops is not None:
        crops.extend(arrays)
    if check is not None:
        check(list(arrays), list(names))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, S, S)
    first, last = encoder(x)
    return [Face(f.float().cpu(), l.float().cpu(), n) for f, l, n in zip(first, last, names)]


def save_person(path: str | Path, face: Face, base_model: str, source: str = "") -> Path:
    """`<name>.f2d.safetensors`: tensors f2d.token_first, f2d.token_last (W,) float32 and their rule."""
    path = Path(path)
    if not path.name.endswith(PERSON_SUFFIX):
        raise FaceError(f"person file {path.name!r}: the name must end in {PERSON_SUFFIX}")
    meta = make_metadata("face2diffusion", base_model, [], "{}", "f2d_identity", identifier=inject.IDENTIFIER,
                         inject=INJECT_RULE, exp="null", face=face.name, encoder=source)
    return atomic_save_file({"f2d.token_first": face.first.float().contiguous(),
                             "f2d.token_last": face.last.float().contiguous()}, path, meta)


def load_person(source: str | Path | Artifact) -> Face:
    art = loaded(source)
    path = art.path
    if art.method != "face2diffusion" or art.kind != "f2d_identity":
        raise ArtifactError(f"{path}: not a Face2Diffusion person file (method {art.method!r}, weights "
                            f"{art.kind!r}); expected a {PERSON_SUFFIX} file written by save_person / the app")
    if art.metadata.get("inject") != INJECT_RULE:
        raise ArtifactError(f"{path}: injection rule {art.metadata.get('inject')!r}, expected {INJECT_RULE!r}")
    return Face(art.weights["f2d.token_first"], art.weights["f2d.token_last"], Path(art.path).name)


class FaceEdit:
    """The generation edit: faces (one, or one per prompt) into every prompt's "f l"."""

    known_words = tuple(inject.IDENTIFIER.split())

    def __init__(self, encoder: FaceEncoder | None, photos: list = (), people: list[Face] = (), check=None,
                 detector=None):
        if not photos and not people:
            raise FaceError("the face edit needs a face photo or a person file")
        if photos and encoder is None:
            raise FaceError(NEEDS_ENCODER)
        self.crops: list[np.ndarray] = []  # what the encoder read of each photo (the app's preview)
        self.faces = list(people) + (encode_faces(encoder, list(photos), check, self.crops, detector)
                                     if photos else [])
        self.by_prompt: dict[str, Face] = {}

    def bind(self, prompts: list[str]) -> None:
        """Pair one face with each prompt of a job that will be generated in several calls (the batch command),
        remembered by prompt; with one face there is nothing to pair."""
        if len(self.faces) > 1:
            if len(self.faces) != len(prompts):
                raise FaceError(f"{len(self.faces)} faces for {len(prompts)} prompts: give one face, or one per "
                                "prompt")
            if len(set(prompts)) == len(prompts):  # repeated prompts: faces in order, in one call
                self.by_prompt = dict(zip(prompts, self.faces))

    def check(self, sd, prompts: list[str]) -> None:
        """One face for every prompt, or one per prompt (in this call, or paired by `bind`)."""
        if len(self.faces) > 1 and len(self.faces) != len(prompts) and not all(p in self.by_prompt for p in prompts):
            raise FaceError(f"{len(self.faces)} faces for {len(prompts)} prompts: give one face, or one per prompt")
        width = sd.text_encoder.get_input_embeddings().weight.shape[1]
        if self.faces[0].first.shape[-1] != width:
            raise FaceError(f"the face vectors have width {self.faces[0].first.shape[-1]}, the text encoder {width}: "
                            "use an encoder trained for this model family")
        inject.identifier_positions(sd.tokenizer, prompts)

    def call_kwargs(self, sd, call: dict) -> tuple[dict, callable]:
        prompts = call["prompt"]
        if prompts is None:
            raise FaceError("the face edit needs the prompt as text: apply it before an edit that encodes prompts")
        faces = self.faces * len(prompts) if len(self.faces) == 1 else self._faces_for(prompts)
        ids, positions = inject.identifier_positions(sd.tokenizer, prompts)
        te = sd.text_encoder
        dtype, device = te.dtype, te.device
        first = torch.stack([f.first for f in faces]).to(device, dtype)  # (B, W)
        last = torch.stack([f.last for f in faces]).to(device, dtype)
        with torch.no_grad():
            embeds = inject.encode(te, ids.to(device), first, last, positions)  # (B, 77, W)
        # diffusers encodes the negative prompt (or "") as text: the unconditional branch has no face (official)
        return {k: v for k, v in call.items() if k != "prompt"} | {"prompt": None, "prompt_embeds": embeds}, _nothing

    def _faces_for(self, prompts: list[str]) -> list[Face]:
        if len(prompts) == len(self.faces):
            return self.faces
        if all(p in self.by_prompt for p in prompts):
            return [self.by_prompt[p] for p in prompts]
        raise FaceError(f"{len(self.faces)} faces for a call of {len(prompts)} prompts: give one face, or one per prompt")

    def describe(self) -> dict:
        return {"face": [f.name for f in self.faces]}

    def preview(self):
        """The crop the encoder read of the first photo (PIL image): what the app shows beside an upload."""
        from PIL import Image

        if not self.crops:
            raise FaceError("the face edit has no photo to preview (a person file has no crop)")
        return Image.fromarray(self.crops[0])

    def label(self) -> str:
        return "Face: " + ", ".join(f.name for f in self.faces)


def _nothing() -> None:
    return None


@dataclass
class FaceOptions:
    """`make_edit("face2diffusion", {...}, profile)`: an encoder file and photos, and/or person files. `detector`:
    how a photo's face is found and aligned (`personalize.face.resolve_detector`: a model pack folder or .onnx,
    "cascade", "none", or a detector already made); "" is the base's default (`Profile.face_detector`: "none" on
    the toy world, whose photos are aligned crops checked by its `face_check`, insightface's default pack
    elsewhere). Without `encoder`, the base's shipped encoder (`Profile.face_encoder`) is used where it has one.
    `file`: an encoder or a person file, told apart by its kind (one choice for both, as the app offers).
    `base`: the base's name, read when no profile is given (older callers)."""

    encoder: str | Artifact = ""  # a file, or its loaded artifact (read once)
    face: list = field(default_factory=list)
    person: list = field(default_factory=list)
    base: str = ""
    detector: object = ""
    file: str | Artifact = ""


def _sort_file(o: FaceOptions) -> FaceOptions:
    """`file` put where its kind says: a person file into `person` (then no photo), an encoder into `encoder`."""
    if not o.file:
        return o
    art = o.file if isinstance(o.file, Artifact) else load_artifact(o.file)
    name = Path(art.path).name
    if art.kind == "f2d_identity":
        if _listed(o.face):
            raise FaceError(f"{name} is a person file: it needs no photo (choose an encoder to use the photo, or "
                            "leave the photo out)")
        return replace(o, file="", person=_listed(o.person) + [art])
    if not _listed(o.face):
        raise FaceError(f"{name} is a face encoder: give a face photo to go with it")
    return replace(o, file="", encoder=art)


def _listed(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, Path, Artifact)) or hasattr(value, "size") else list(value)


def _detector(spec, default: str):
    """A detector object for the option's value (made once by the caller, e.g. the app, or here from its spec)."""
    if spec and not isinstance(spec, (str, Path)):
        return spec
    from personalize.face import detector_spec, resolve_detector

    return resolve_detector(detector_spec(spec, default))


def edit(options: dict | FaceOptions, profile=None) -> FaceEdit:
    from personalize.profiles import profile_for

    o = _sort_file(options if isinstance(options, FaceOptions) else FaceOptions(**options))
    profile = profile or profile_for(o.base)
    photos, people = _listed(o.face), [load_person(p) for p in _listed(o.person)]
    encoder = o.encoder
    if profile.face_encoder is not None:
        shipped = profile.face_encoder()
        if photos and not encoder and not shipped.exists():
            raise FaceError(f"no face encoder at {shipped} (the {profile.name} base's shipped one): "
                            f"{profile.face_encoder_howto}")
        encoder = encoder or str(shipped)
    if photos and not encoder:
        raise FaceError(NEEDS_ENCODER)
    detector = _detector(o.detector, profile.face_detector) if photos else None
    # photos taken as aligned crops are checked by the base's face check (the toy world's: Judge A)
    check = _face_check(profile.face_check, profile.name) if profile.face_check is not None and detector is None else None
    return FaceEdit(FaceEncoder.load(encoder) if photos else None, photos, people, check, detector)


def _face_check(found_in, base: str):
    def check(photos: list[np.ndarray], names: list[str]) -> None:
        for found, name in zip(found_in(photos, names), names):
            if not found:  # the file's name, without the '#<digest>' the image settings carry
                raise FaceError(f"face photo {name.rsplit('#', 1)[0]}: no face found in it (the {base} base's face check, "
                                "which reads aligned face crops; to align the face of a real photo first, pass --face-detector "
                                "cascade or an insightface model pack)")

    return check
