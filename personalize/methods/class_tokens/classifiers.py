"""Steering classifiers for discriminative class tokens: any `transformers` image classifier, or the toy world's
judge heads.

A `Classifier` maps generated images (B, 3, H, W) in [0, 1] to logits per head, {head: (B, n_classes)},
differentiably (DCT backpropagates its cross-entropy into the token; Schwartz et al., ICCV 2023, sec. 3), and
resolves a target to {head: class index}. A Hugging Face classifier has one head, "logits", labelled from
`config.id2label`; its preprocessing is read from the image-processor config beside it. The toy world's judge
has one head per attribute; an identity target names four of them (face shape, skin, hair color, hair style).
The model is frozen (`requires_grad_(False)`, eval mode): the official code left its ViT-L trainable and so
accumulated ~300M unused parameter gradients every backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from personalize.methods.base import MethodError


@dataclass
class Classifier:
    name: str
    model: torch.nn.Module
    labels: dict[str, list[str]]  # head -> class names, by index
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]]  # images in [0, 1] -> {head: logits}

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward(images)

    def target(self, spec) -> dict[str, int]:
        """{head: index} for `spec`: a class index, a label (or its first comma-separated synonym, any case), or
        {head: label} for a classifier with several heads."""
        if isinstance(spec, dict):
            return {head: self._index(head, value) for head, value in spec.items()}
        if len(self.labels) != 1:
            raise MethodError(f"classifier {self.name!r} has heads {sorted(self.labels)}: give the target as "
                              "{head: label}")
        head = next(iter(self.labels))
        return {head: self._index(head, spec)}

    def _index(self, head: str, value) -> int:
        if head not in self.labels:
            raise MethodError(f"classifier {self.name!r} has no head {head!r}; heads: {sorted(self.labels)}")
        names = self.labels[head]
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            if not 0 <= int(value) < len(names):
                raise MethodError(f"class index {value} is outside 0..{len(names) - 1} of {self.name!r}")
            return int(value)
        want = str(value).strip().lower()
        for k, label in enumerate(names):
            if want in (label.lower(), label.split(",")[0].strip().lower()):
                return k
        shown = ", ".join(repr(n) for n in names[:8]) + (" ..." if len(names) > 8 else "")
        raise MethodError(f"no class {value!r} in {self.name!r} (head {head!r}); classes: {shown}")


def class_name(label: str) -> str:
    """The word a prompt uses for a label: its first comma-separated synonym, lower case, '_' as spaces
    ('tiger cat' for ImageNet's 'tiger cat', 'tabby, tabby cat' -> 'tabby'), as the official code does."""
    return label.split(",")[0].strip().lower().replace("_", " ")


def hf_classifier(location: str, local_files_only: bool = True) -> Classifier:
    """An `AutoModelForImageClassification` from a local folder or hub id, with its image processor's
    preprocessing made differentiable (`personalize.methods.class_tokens.preprocess`)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from personalize.methods.class_tokens.preprocess import Preprocess

    model = AutoModelForImageClassification.from_pretrained(location, local_files_only=local_files_only)
    model.requires_grad_(False).eval()
    pre = Preprocess.from_config(AutoImageProcessor.from_pretrained(location, local_files_only=local_files_only)
                                 .to_dict())
    labels = [model.config.id2label[k] for k in range(model.config.num_labels)]

    def forward(images: torch.Tensor) -> dict[str, torch.Tensor]:
        dtype = next(model.parameters()).dtype
        return {"logits": model(pixel_values=pre(images.float()).to(dtype)).logits.float()}  # (B, n_classes)

    return Classifier(location, model, {"logits": labels}, forward)


def bundled_classifier(name: str) -> Classifier | None:
    """A classifier bundled with the project (`personalize.profiles.bundled_classifier`: the toy world's Judge A
    and Judge B, one head per attribute), or None when `name` names none."""
    from personalize.profiles import bundled_classifier as parts_of

    parts = parts_of(name)
    return None if parts is None else Classifier(parts["name"], parts["net"], parts["heads"], parts["forward"])


def identity_target(identity: int) -> dict[str, str]:
    """The bundled judges' head target of a toy-world face identity: a face with its four appearance attributes."""
    from personalize.profiles import identity_target as target

    try:
        return target(identity)
    except ValueError as err:
        raise MethodError(f"method.target='identity:{identity}': {err}") from None
