"""Face data for both training stages: a folder of identities, or the toy world's faces (drawn on the fly).

A folder (`method.data: path/to/ids`) holds one sub-folder per person (the label is the folder), with beside
each photo optional files of the same stem:

    ids/<person>/<k>.png         the training photo (any PIL-readable image; .png .jpg .jpeg .webp)
    ids/<person>/<k>.face.png    its aligned face crop, the encoder's input (default: the photo itself, resized)
    ids/<person>/<k>.mask.png    the face mask, L mode, 255 = face (default: all face, i.e. plain reconstruction)
    ids/<person>/<k>.exp.npy     float32 (exp_dim,) expression vector (needed by expression guidance)

`.npy` files are read with allow_pickle=False. Every draw is a pure function of (seed, sample index): photos are
visited in a fresh permutation each epoch and flipped horizontally at random (photo, crop and mask together).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from personalize.methods.base import MethodError
from personalize.profiles import TOY

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SIDE_FILES = (".face", ".mask")


@dataclass
class FaceItem:
    photo: Path
    label: int


def scan_folder(root: str | Path) -> tuple[list[FaceItem], list[str]]:
    """(photos, person names): every photo of every `<root>/<person>/`, sorted; a clear error when empty."""
    root = Path(root)
    if not root.is_dir():
        raise MethodError(f"method.data={str(root)!r} is not a folder: expected {TOY!r} (the bundled face data) "
                          "or a folder of identities (<person>/<k>.png, see personalize/methods/face2diffusion/data.py)")
    people = sorted(p.name for p in root.iterdir() if p.is_dir())
    items = [FaceItem(f, k) for k, person in enumerate(people) for f in sorted((root / person).iterdir())
             if f.suffix.lower() in SUFFIXES and not f.stem.endswith(SIDE_FILES)]
    if not items:
        raise MethodError(f"method.data={str(root)!r} holds no photos: expected sub-folders, one per person, of "
                          f"{'/'.join(SUFFIXES)} files")
    return items, people


def _rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) through the one opener (`personalize.photos`: EXIF orientation, 16-bit gray, size)."""
    from personalize.photos import PhotoError, open_photo

    try:
        return np.asarray(open_photo(path, "face photo"))
    except PhotoError as err:
        raise MethodError(str(err)) from err


def read_item(item: FaceItem, exp_dim: int | None) -> dict:
    """One photo with its side files, as the toy source returns it (crop and mask optional)."""
    from PIL import Image

    base = item.photo.with_suffix("")
    out = {"photo": _rgb(item.photo), "label": item.label, "face": None, "mask": None, "exp": None}
    crop = Path(f"{base}.face.png")
    if crop.exists():
        out["face"] = _rgb(crop)
    mask = Path(f"{base}.mask.png")
    if mask.exists():
        with Image.open(mask) as im:
            out["mask"] = np.asarray(im.convert("L"), np.float32) / 255.0
    exp = Path(f"{base}.exp.npy")
    if exp_dim is not None:
        if not exp.exists():
            raise MethodError(f"{exp}: missing; expression guidance needs an expression vector beside every photo "
                              "(or set method.expression_guidance: false)")
        out["exp"] = np.load(exp, allow_pickle=False).astype(np.float32).reshape(-1)
        if out["exp"].shape != (exp_dim,):
            raise MethodError(f"{exp}: expected {exp_dim} values (method.exp_dim), got shape {out['exp'].shape}")
    return out


class FolderSource:
    def __init__(self, root: str | Path, exp_dim: int | None):
        self.items, self.people = scan_folder(root)
        self.exp_dim = exp_dim

    @property
    def num_classes(self) -> int:
        return len(self.people)

    def __call__(self, seed: int, index: int) -> dict:
        n = len(self.items)
        epoch, k = divmod(index, n)
        order = list(range(n))
        random.Random(seed * 7919 + epoch).shuffle(order)
        sample = read_item(self.items[order[k]], self.exp_dim)
        sample["flip"] = random.Random(seed * 1_000_003 + index).random() < 0.5
        return sample

    def validation_photo(self):
        """The photo the validation images use when `method.validation_face` is not set: the first one."""
        return str(self.items[0].photo)


class BundledSource:
    """A bundled face dataset's training identities (the toy world's: never its 16 held out), each draw a new
    photo. `faces` is what `personalize.profiles.bundled_face_data` returns."""

    def __init__(self, faces, with_mask: bool = True):
        self.faces, self.identities, self.with_mask = faces, faces.TRAIN_IDENTITIES, with_mask

    def validation_photo(self):
        """A held-out identity's photo (one the encoder never trains on) for the validation images."""
        from PIL import Image

        return Image.fromarray(self.faces.held_out_photo(self.faces.HELD_OUT[0]))

    @property
    def num_classes(self) -> int:
        return len(self.identities)

    def __call__(self, seed: int, index: int) -> dict:
        return self.faces.sample(self.identities, seed, index, self.with_mask) | {"face": None}


def make_source(data: str, exp_dim: int | None, with_mask: bool = True):
    from personalize.profiles import bundled_face_data

    faces = bundled_face_data(data)
    return BundledSource(faces, with_mask) if faces is not None else FolderSource(data, exp_dim)


def to_pixels(array: np.ndarray, size: int, flip: bool) -> torch.Tensor:
    """uint8 (H, W, 3) -> (3, size, size) in [-1, 1] (bicubic resize when the size differs)."""
    x = torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
    if x.shape[1:] != (size, size):
        x = F.interpolate(x[None], (size, size), mode="bicubic", align_corners=False)[0].clamp(-1, 1)
    return x.flip(-1) if flip else x


def batches(source, seed: int, batch_size: int, start: int, rank: int, world: int, make):
    """Batch k (from `start`) of rank `rank` out of `world`: `make(samples)` of the source's samples at positions
    (k * world + rank) * batch_size + i, so a resumed run (start = its step) sees the same batches."""
    k = start
    while True:
        first = (k * world + rank) * batch_size
        yield make([source(seed, first + i) for i in range(batch_size)]) | {"index": first}
        k += 1


def face_batch(samples: list[dict], face_size: int) -> dict:
    """What stage 1 needs: {"faces" (B, 3, S, S), "labels" (B,)}."""
    return {"faces": torch.stack([to_pixels(s["face"] if s["face"] is not None else s["photo"], face_size,
                                            s["flip"]) for s in samples]),
            "labels": torch.tensor([s["label"] for s in samples])}


def face_mask(mask: np.ndarray | None, shape: tuple[int, int], latent_size: int, dilation: int = 0) -> torch.Tensor:
    """A photo's face mask (H, W) in [0, 1] (None: all face) -> (1, h, w): widened by `dilation` pixels (a square
    max filter: a face parser's mask "dilated slightly", ours), then area-downsampled to the latent grid."""
    m = torch.ones(shape) if mask is None else torch.from_numpy(mask).float()
    m = m[None, None]  # (1, 1, H, W)
    if dilation > 0:
        m = F.max_pool2d(m, 2 * dilation + 1, stride=1, padding=dilation)
    return F.adaptive_avg_pool2d(m, latent_size)[0]  # (1, h, w)


def collate(samples: list[dict], resolution: int, face_size: int, latent_size: int, dilation: int = 0) -> dict:
    """{"pixels" (B, 3, R, R), "faces" (B, 3, S, S), "mask" (B, 1, h, w) dilated by `dilation` pixels and
    area-downsampled, "exp" (B, E) or None, "labels" (B,)}."""
    pixels = torch.stack([to_pixels(s["photo"], resolution, s["flip"]) for s in samples])
    if face_size == resolution and all(s["face"] is None for s in samples):
        faces = pixels  # the photo is the crop: converted once
    else:
        faces = face_batch(samples, face_size)["faces"]
    masks = []
    for s in samples:
        m = face_mask(s["mask"], s["photo"].shape[:2], latent_size, dilation)
        masks.append(m.flip(-1) if s["flip"] else m)
    exp = None if samples[0]["exp"] is None else torch.stack([torch.as_tensor(s["exp"]) for s in samples])
    return {"pixels": pixels, "faces": faces, "mask": torch.stack(masks), "exp": exp,
            "labels": torch.tensor([s["label"] for s in samples])}
