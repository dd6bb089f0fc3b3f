"""Concept images for training: folders, captions, crops and flips, class-prior images.

Images are png/jpg/jpeg/webp; EXIF orientation is applied and transparency is flattened onto white. A caption
comes from a `.txt` file beside the image (kohya/A1111 convention) or else from the prompt or templates in
the config; `{}` in it stands for the method's trigger.

Every random choice (which image, crop, flip, template, rescale) is a pure function of the run seed and the
sample's position in the stream of samples, so a run resumed at step N draws exactly the batches an
uninterrupted run draws (`PositionSampler`), on any number of processes.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from personalize.errors import PersonalizeError, read_text

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_SUFFIX = ".txt"
# Caption templates for `{}` = the trigger. Our own short lists, in the spirit of textual inversion's
# object/style templates (Gal et al. 2022, sec. 4).
TEMPLATES = {
    "object": [
        "a photo of a {}", "a close-up photo of a {}", "a picture of the {}", "a photo of one {}",
        "a cropped photo of a {}", "a good photo of the {}", "a bright photo of a {}", "a photo of my {}",
    ],
    "style": [
        "a painting in the style of {}", "an image in the style of {}", "a picture in the style of {}",
        "artwork in the style of {}", "a rendition in the style of {}", "a drawing in the style of {}",
    ],
}


class DataError(PersonalizeError):
    """A training-image folder or file that cannot be used; the message names it."""


# ------------------------------------------------------------------------------------------- files


def _bundled(folder: Path) -> Path:
    """A relative `assets/examples/...` that is not here is the bundled example (personalize.resources), so the
    toy configs and the README's commands run from any folder with an installed package."""
    if folder.is_dir() or folder.is_absolute() or folder.parts[:2] != ("assets", "examples"):
        return folder
    from personalize.resources import asset

    bundled = asset(*folder.parts[1:])
    return bundled if bundled.is_dir() else folder


def list_images(folder: str | Path | None, what: str = "data.instance_data_dir") -> list[Path]:
    """The images of a folder, sorted. Caption `.txt` files and hidden files are allowed beside them; any other
    file is an error (a `.heic` or `.gif` the user expects to train on must not be dropped silently)."""
    if folder is None:
        raise DataError(f"{what} is not set; expected a folder of png/jpg/jpeg/webp images")
    folder = _bundled(Path(folder).expanduser())
    if not folder.is_dir():
        raise DataError(f"{what}={str(folder)!r} is not a folder; expected a folder of png/jpg/jpeg/webp images")
    images, others = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.append(path)
        elif suffix != CAPTION_SUFFIX:
            others.append(path.name)
    if others:
        raise DataError(
            f"{what}={str(folder)!r} holds files that are not images: {others[:5]}; expected only "
            f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images and .txt captions (move or convert the others)"
        )
    if not images:
        raise DataError(f"{what}={str(folder)!r} has no images; expected png/jpg/jpeg/webp files")
    return images


def load_image(path: str | Path):
    """Open an image fully (so a truncated file fails here), EXIF-rotated, RGB: `personalize.photos.open_photo`."""
    from personalize.photos import PhotoError, open_photo

    try:
        return open_photo(path, "image")
    except PhotoError as err:
        raise DataError(str(err)) from err


def read_caption(image_path: Path, default: str | list[str] | None) -> str | list[str]:
    """The `.txt` caption beside an image, else `default` (a prompt, or a list of templates)."""
    txt = image_path.with_suffix(CAPTION_SUFFIX)
    if txt.is_file():
        text = read_text(txt, "caption").strip()
        if text:
            return text
    if default is None:
        raise DataError(
            f"image {str(image_path)!r} has no caption: give data.instance_prompt (or templates) in the config "
            f"or a {txt.name} file beside it"
        )
    return default


# ------------------------------------------------------------------------------------------- transforms


def to_tensor(image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    import numpy as np

    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return array.float() / 127.5 - 1.0


def resize_crop(image, size: int, center_crop: bool, rng: random.Random):
    """Resize the shorter side to `size`, then crop a `size` square (center, or at a random offset)."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left = (w - size) // 2 if center_crop else rng.randint(0, w - size)
    top = (h - size) // 2 if center_crop else rng.randint(0, h - size)
    return image.crop((left, top, left + size, top + size)), (left, top)


def rescale_augment(pixels: torch.Tensor, rng: random.Random, factor: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Custom Diffusion's random rescale (train_custom_diffusion.py, `CustomDiffusionDataset`):
    with p=0.66 shrink to [size/3, size] on a blank canvas, else zoom to
    [1.2, 1.4] x size and crop. Returns the image, the latent-resolution mask of valid cells, and a prompt prefix."""
    size = pixels.shape[-1]
    latent = size // factor
    scale = rng.randint(size // 3, size) if rng.random() < 0.66 else rng.randint(int(1.2 * size), int(1.4 * size))
    scale += scale % 2  # even sizes keep the placement symmetric
    resized = torch.nn.functional.interpolate(pixels[None], size=(scale, scale), mode="bilinear",
                                              align_corners=False, antialias=scale < size)[0]
    mask = torch.zeros(latent, latent)
    if scale <= size:
        out = torch.zeros_like(pixels)
        top, left = rng.randint(0, size - scale), rng.randint(0, size - scale)
        out[:, top:top + scale, left:left + scale] = resized
        rows, cols = _valid_cells(top, scale, factor), _valid_cells(left, scale, factor)
        mask[rows, cols] = 1.0
        prefix = rng.choice(["a far away ", "very small "]) if scale < 0.6 * size else ""
    else:
        top, left = rng.randint(0, scale - size), rng.randint(0, scale - size)
        out = resized[:, top:top + size, left:left + size]
        mask[:] = 1.0
        prefix = rng.choice(["zoomed in ", "close up "])
    return out, mask, prefix


def _valid_cells(start: int, length: int, factor: int) -> slice:
    """Latent cells of an image placed at [start, start + length) pixels, one cell in from each edge as the
    official script does; at tiny sizes where that leaves nothing (ours, not the script's: at 512 px it never
    happens), the fully covered cells, or at least the cell under the image's center."""
    lo, hi = start // factor + 1, (start + length) // factor - 1
    if hi <= lo:
        lo, hi = -(-start // factor), (start + length) // factor
    if hi <= lo:
        lo = (start + length // 2) // factor
        hi = lo + 1
    return slice(lo, hi)


# ------------------------------------------------------------------------------------------- datasets


@dataclass
class Example:
    path: Path
    caption: str | list[str]  # a caption, or templates to pick from


class ConceptImages(torch.utils.data.Dataset):
    """Training images indexed by *keys* `(index, sample_seed)` from `PositionSampler`, so each sample's
    augmentation is fixed by its position in the run, not by hidden RNG state."""

    def __init__(self, examples: list[Example], resolution: int, center_crop: bool = True,
                 random_flip: bool = False, rescale: bool = False, vae_factor: int = 8, is_prior: bool = False):
        self.examples, self.resolution = examples, resolution
        self.center_crop, self.random_flip, self.rescale = center_crop, random_flip, rescale
        self.vae_factor, self.is_prior = vae_factor, is_prior
        self._images: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def deterministic_crop(self) -> bool:
        """True when an image's pixels depend only on (index, flip): latents can be cached."""
        return self.center_crop and not self.rescale

    def _image(self, index: int):
        if index not in self._images:  # few-shot sets are small: decode once
            self._images[index] = load_image(self.examples[index].path)
        return self._images[index]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, sample_seed = key
        rng = random.Random(sample_seed)
        example = self.examples[index]
        image, _ = resize_crop(self._image(index), self.resolution, self.center_crop, rng)
        flip = self.random_flip and rng.random() < 0.5
        pixels = to_tensor(image)
        if flip:
            pixels = pixels.flip(-1)
        caption = example.caption if isinstance(example.caption, str) else rng.choice(example.caption)
        latent = self.resolution // self.vae_factor
        mask, prefix = torch.ones(latent, latent), ""
        if self.rescale:
            pixels, mask, prefix = rescale_augment(pixels, rng, self.vae_factor)
        return {
            "pixel_values": pixels, "caption": prefix + caption, "mask": mask, "is_prior": self.is_prior,
            "cache_key": (int(self.is_prior), index, flip) if self.deterministic_crop else None,
        }


def collate(samples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),  # (B, 3, H, W)
        "mask": torch.stack([s["mask"] for s in samples]),  # (B, h, w) at latent resolution
        "captions": [s["caption"] for s in samples],
        "is_prior": torch.tensor([s["is_prior"] for s in samples]),
        "cache_keys": [s["cache_key"] for s in samples],
    }


class PositionSampler(torch.utils.data.Sampler):
    """Yields batches of keys `(index, sample_seed)` for micro-batches `start, start+1, ...` of this rank.

    Sample position p (over all ranks) belongs to epoch p // n and picks `perm_epoch[p % n]`; the permutation
    and the sample seed depend only on (seed, p). Rank r takes positions ((m * world + r) * batch + j)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start = rank, world, start
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=gen).tolist()}
        return self._perms[epoch]

    def keys(self, micro: int) -> list[tuple[int, int]]:
        first = (micro * self.world + self.rank) * self.batch_size
        return [(self._perm(p // self.n)[p % self.n], self.seed * 7_919 + p * 104_729 + 1)
                for p in range(first, first + self.batch_size)]

    def __iter__(self):
        micro = self.start
        while True:
            yield self.keys(micro)
            micro += 1

    def __len__(self) -> int:  # infinite stream; DataLoader only needs a number
        return math.floor(1e12)


def examples_from_folder(folder, default_caption, what: str) -> list[Example]:
    """Every image of `folder` with its caption, each image opened once up front: a corrupt file is an error
    before training starts (with few-shot sets every image matters, so none is dropped silently)."""
    paths = list_images(folder, what)
    for path in paths:
        load_image(path)
    return [Example(p, read_caption(p, default_caption)) for p in paths]


def missing_class_images(folder: str | Path, num: int) -> list[int]:
    """Indices of `class-#####.png` files still to generate so that `folder` holds `num` class images."""
    folder = Path(folder)
    have = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()) if folder.is_dir() else 0
    todo = [i for i in range(num) if not (folder / f"class-{i:05d}.png").exists()]
    return todo[: max(0, num - have)]


def generate_class_images(components, folder: str | Path, prompt: str, indices: list[int], seed: int,
                          steps: int, rank: int = 0, world: int = 1, device="cpu") -> None:
    """Prior-preservation images (DreamBooth, Ruiz et al. 2023, sec. 3.3) made with the *base* model at its
    default guidance, image i from seed + i; each rank makes every world-th one; each file written atomically."""
    from tqdm.auto import tqdm

    from personalize.atomic import atomic_path

    if not prompt:
        raise DataError("data.class_prompt is needed to generate class images for prior preservation")
    pipe = components.pipeline().to(device)
    pipe.set_progress_bar_config(disable=True)
    mine = indices[rank::world]
    for i in tqdm(mine, desc=f"class images ({prompt!r})", disable=rank != 0 or not mine):
        gen = torch.Generator().manual_seed(seed + i)
        image = pipe(prompt, num_inference_steps=steps, generator=gen).images[0]
        with atomic_path(Path(folder) / f"class-{i:05d}.png") as tmp:
            image.save(tmp, format="PNG")
