"""A classifier's own preprocessing, differentiable, so the cross-entropy's gradient reaches the generated image.

DCT scores images the frozen model generated with a pretrained classifier and backpropagates into the token
(Schwartz et al., ICCV 2023, sec. 3; the official run.py does this with kornia). The preprocessing is read from
the classifier's Hugging Face image-processor config (`preprocessor_config.json`): resize (to height x width, or
the shortest edge), center crop, normalize. Images come in as (B, 3, H, W) floats in [0, 1], already rescaled,
so `do_rescale` does not apply. Resampling follows the config's PIL filter: bicubic and bilinear through
`torch.nn.functional.interpolate(antialias=True)`, which uses PIL's kernels; lanczos, box and hamming fall back
to bicubic (close, not identical).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PIL_FILTERS = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bicubic", 5: "bicubic"}


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int] | None = None  # (height, width) to resize to
    shortest_edge: int | None = None  # or: the short side to this, the aspect kept
    crop: tuple[int, int] | None = None  # (height, width) center crop
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    mode: str = "bicubic"

    @classmethod
    def from_config(cls, cfg: dict) -> Preprocess:
        """From an image-processor config dict (ViTImageProcessor, CLIPImageProcessor, ConvNext...)."""
        size, edge = None, None
        if cfg.get("do_resize", True) and cfg.get("size") is not None:
            s = cfg["size"]
            if isinstance(s, int):
                size = (s, s)
            elif "height" in s:
                size = (int(s["height"]), int(s["width"]))
            elif "shortest_edge" in s:
                edge = int(s["shortest_edge"])
            else:
                raise ValueError(f"image processor size {s!r}: expected height/width or shortest_edge")
        crop = None
        if cfg.get("do_center_crop") and cfg.get("crop_size") is not None:
            c = cfg["crop_size"]
            crop = (c, c) if isinstance(c, int) else (int(c["height"]), int(c["width"]))
        normalize = cfg.get("do_normalize", True)
        return cls(size, edge, crop, tuple(cfg.get("image_mean", (0.5,) * 3)) if normalize else (0.0,) * 3,
                   tuple(cfg.get("image_std", (0.5,) * 3)) if normalize else (1.0,) * 3,
                   PIL_FILTERS.get(int(cfg.get("resample", 3)), "bicubic"))

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        if self.shortest_edge is None:
            return height, width
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.shortest_edge * long / short)  # as transformers' get_resize_output_image_size
        return (self.shortest_edge, new_long) if height <= width else (new_long, self.shortest_edge)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, h, w) normalized, differentiable."""
        h, w = self.target_size(*images.shape[-2:])
        x = images
        if (h, w) != tuple(images.shape[-2:]):
            antialias = self.mode != "nearest"
            x = torch.nn.functional.interpolate(x, size=(h, w), mode=self.mode, antialias=antialias,
                                                **({} if self.mode == "nearest" else {"align_corners": False}))
        if self.crop is not None:
            ch, cw = self.crop
            top, left = (x.shape[-2] - ch) // 2, (x.shape[-1] - cw) // 2
            x = x[..., max(top, 0):max(top, 0) + ch, max(left, 0):max(left, 0) + cw]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        return (x - mean) / std
