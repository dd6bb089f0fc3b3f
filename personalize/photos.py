"""The one opener for every photo the project reads: training and class images, face photos, face datasets and
the images an evaluation scores.

    image = open_photo("subject/0.jpg", "image")          # PIL RGB, upright, 8 bits a channel

Rules, the same everywhere:
- the size is checked from the header, before anything is decoded (a decompression bomb never reaches memory);
- the file is decoded fully here, so a truncated file fails now and not mid-training;
- the EXIF Orientation tag is applied (a phone's portrait photo is read upright);
- every mode becomes 8-bit RGB: transparency is composited on white, and 16-bit grayscale (PNG/TIFF, Pillow's
  `I;16*` and `I` modes) is scaled by 255/65535. Pillow's own `convert("RGB")` clips those values at 255,
  which turns a typical 16-bit photo near-white. 32-bit float images (mode F) are refused: no range is agreed.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from personalize.errors import PersonalizeError

MAX_PIXELS = 100_000_000  # 10,000 x 10,000; a 24-megapixel camera photo passes, Pillow's bomb limit is 179M
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # read as 0..65535 grayscale


class PhotoError(PersonalizeError):
    """An image file that cannot be read: missing, not an image, truncated, or too large."""


def photo_name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "photo"


def open_photo(source, what: str = "image", max_pixels: int | None = None, name: str | None = None):
    """A path or an open PIL image -> a decoded PIL image in RGB, upright by its EXIF orientation. Errors say
    "<what> <name>: ..." (`what`: "image", "face photo", ...; `name`: default the path)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    name, max_pixels = name or photo_name(source), max_pixels or MAX_PIXELS
    try:
        with Image.open(source) if isinstance(source, (str, Path)) else nullcontext(source) as im:  # the caller's
            w, h = im.size
            if w * h > max_pixels:
                raise PhotoError(f"{what} {name}: {w}x{h} is larger than {max_pixels:,} pixels; expected a "
                                 "smaller image (downscale it)")
            im.load()
            image = ImageOps.exif_transpose(im)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        if isinstance(err, PhotoError):
            raise
        raise PhotoError(f"{what} {name}: not a readable image ({err}); fix or remove it") from err
    try:
        return to_rgb(image)
    except PhotoError as err:
        raise PhotoError(f"{what} {name}: {err}") from None


def to_rgb(image, background=(255, 255, 255)):
    """Any Pillow mode -> RGB: alpha (RGBA, LA, P with transparency) composited on `background`, 16-bit
    grayscale scaled to 8 bits, the rest by Pillow's conversion."""
    import numpy as np
    from PIL import Image

    if image.mode == "F":  # floats: no agreed range (0..1? 0..255? HDR?), so no guess
        raise PhotoError("mode 'F' (32-bit float) is not supported; expected an 8- or 16-bit image (PNG, JPEG, "
                         "WebP, TIFF)")
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.int64).clip(0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # rounded, 65535 -> 255
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")
