"""The toy world's judges: two networks of different architectures with a head per attribute each, trained
on differently augmented procedural images.

  - Judge A (`JudgeNet`, assets/toyworld_judge): a small CNN; a *training signal* (methods may optimise it);
  - Judge B (`JudgeBNet`, assets/toyworld_judge_b): a residual network; the *evaluator* of every
    effect and quality suite, so no score is read off the network a method trained against.

    judge = Judge.load("b")                   # or "a", or a folder
    judge.predict(images)                     # [{"kind": "object", "shape": "circle", ...}, ...]
    judge.embed(images)                       # (N, 256) unit vectors: the toy analogue of CLIP-I / DINO
    judge.identity_embedding(images)          # (N, 14) unit vectors: the toy analogue of ArcFace

Heads apply to one kind of scene each (object heads to single objects, face heads to faces, pair heads to
two-object scenes); `predict` returns the heads of the kind it sees. Trained by training/toyworld/judge.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from personalize.toyworld import world as w

KINDS = ["object", "pair", "face"]
HEADS = {  # head -> (classes, the kind of scene it applies to)
    "kind": (KINDS, None),
    "shape": (w.SHAPES, "object"), "color": (list(w.COLORS), "object"), "size": (w.SIZES, "object"),
    "background": (list(w.BACKGROUNDS), "object"), "texture": (w.TEXTURES, "object"),
    "outline": (["no", "yes"], "object"),
    "left_shape": (w.SHAPES, "pair"), "left_color": (list(w.COLORS), "pair"),
    "right_shape": (w.SHAPES, "pair"), "right_color": (list(w.COLORS), "pair"),
    "pair_background": (list(w.BACKGROUNDS), "pair"),
    "face_shape": (w.FACE_SHAPES, "face"), "skin": (list(w.SKINS), "face"),
    "hair_color": (list(w.HAIR_COLORS), "face"), "hair_style": (w.HAIR_STYLES, "face"),
    "expression": (w.EXPRESSIONS, "face"), "accessory": (w.ACCESSORIES, "face"),
    "face_background": (list(w.FACE_BACKGROUNDS), "face"),
}
IDENTITY_HEADS = ["face_shape", "skin", "hair_color", "hair_style"]


def scene_targets(scene: w.Scene) -> dict[str, int]:
    """Class index per head for one scene; heads of other kinds are absent."""
    labels = scene.labels()
    out = {"kind": KINDS.index(scene.kind)}
    if scene.kind == "object":
        o = scene.objects[0]
        values = {"shape": o.shape, "color": o.color, "size": o.size, "background": scene.background,
                  "texture": o.texture, "outline": "yes" if o.outline else "no"}
    elif scene.kind == "pair":
        a, b = scene.objects
        values = {"left_shape": a.shape, "left_color": a.color, "right_shape": b.shape, "right_color": b.color,
                  "pair_background": scene.background}
    else:
        values = {k: labels[k] for k in IDENTITY_HEADS} | {
            "expression": scene.expression, "accessory": scene.accessory, "face_background": scene.background}
    out |= {head: HEADS[head][0].index(value) for head, value in values.items()}
    return out


class JudgeNet(nn.Module):
    """Conv backbone (32 -> 16 -> 8 -> 4) with a spatial flatten (left/right matters), a 256-d embedding."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.MaxPool2d(2))

        self.backbone = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.Flatten(),
                                      nn.Linear(128 * 16, 256), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(256, len(classes)) for name, (classes, _) in HEADS.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats = self.backbone(x)  # (B, 256)
        return feats, {name: head(feats) for name, head in self.heads.items()}


class _Residual(nn.Module):
    """Pre-activation residual block (He et al. 2016, "Identity mappings in deep residual networks")."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class JudgeBNet(nn.Module):
    """A residual network, unlike JudgeNet in every part: coordinate input channels (CoordConv, Liu et al.
    2018), BatchNorm instead of GroupNorm, ReLU, strided convolutions instead of max-pooling, residual
    blocks at 16x16 and 8x8, and 2x2 average pooling (left/right kept) into the 256-d embedding."""

    def __init__(self):
        super().__init__()
        ramp = torch.linspace(-1, 1, 32)
        self.register_buffer("coords", torch.stack([ramp[None].expand(32, 32), ramp[:, None].expand(32, 32)]),
                             persistent=False)  # (2, 32, 32)
        self.backbone = nn.Sequential(
            nn.Conv2d(5, 24, 3, padding=1), nn.Conv2d(24, 48, 3, stride=2, padding=1),  # (B, 48, 16, 16)
            _Residual(48), _Residual(48), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 96, 3, stride=2, padding=1),  # (B, 96, 8, 8)
            _Residual(96), _Residual(96), nn.BatchNorm2d(96), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(96 * 4, 256), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(256, len(classes)) for name, (classes, _) in HEADS.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        coords = self.coords.expand(len(x), -1, -1, -1)
        feats = self.backbone(torch.cat([x, coords], dim=1))  # (B, 256)
        return feats, {name: head(feats) for name, head in self.heads.items()}


ARCHITECTURES = {"judge_a": JudgeNet, "judge_b": JudgeBNet}
FOLDERS = {"a": "toyworld_judge", "b": "toyworld_judge_b"}


def to_input(images) -> torch.Tensor:
    """PIL images or uint8 arrays (N, 32, 32, 3) -> (N, 3, 32, 32) in [-1, 1]."""
    if isinstance(images, np.ndarray):
        array = images
    else:
        array = np.stack([np.asarray(im.convert("RGB").resize((w.SIZE, w.SIZE))) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class Judge:
    def __init__(self, net: JudgeNet):
        self.net = net.eval()

    @classmethod
    def load(cls, folder: str | Path = "a") -> "Judge":
        """"a" (Judge A), "b" (Judge B, the evaluator) or a folder; the architecture is read from the file."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from personalize.resources import asset

        folder = Path(asset(FOLDERS[folder]) if folder in FOLDERS else folder)
        path = folder / "judge.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no judge at {path}: expected a folder written by training/toyworld/judge.py")
        with safe_open(str(path), "pt") as f:
            arch = (f.metadata() or {}).get("architecture", "judge_a")
        if arch not in ARCHITECTURES:
            raise ValueError(f"{path}: unknown judge architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
        net = ARCHITECTURES[arch]()
        net.load_state_dict(load_file(str(path)))
        return cls(net)

    @property
    def architecture(self) -> str:
        return next(k for k, v in ARCHITECTURES.items() if type(self.net) is v)

    def save(self, folder: str | Path, metrics: dict | None = None) -> None:
        from personalize.atomic import atomic_save_file, atomic_write_text

        folder = Path(folder)
        atomic_save_file(self.net.state_dict(), folder / "judge.safetensors",
                         {"format": "personalize-judge", "architecture": self.architecture})
        atomic_write_text(folder / "heads.json", json.dumps({k: v[0] for k, v in HEADS.items()}, indent=1))
        if metrics is not None:
            atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=1))

    @torch.no_grad()
    def logits(self, images) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.net(to_input(images))

    def predict(self, images) -> list[dict[str, str]]:
        _, logits = self.logits(images)
        idx = {name: logit.argmax(-1).tolist() for name, logit in logits.items()}
        out = []
        for i in range(len(idx["kind"])):
            kind = KINDS[idx["kind"][i]]
            out.append({"kind": kind} | {name: HEADS[name][0][idx[name][i]] for name in HEADS
                                         if HEADS[name][1] == kind})
        return out

    def embed(self, images) -> torch.Tensor:
        feats, _ = self.logits(images)
        return torch.nn.functional.normalize(feats, dim=-1)  # (N, 256)

    def identity_embedding(self, images) -> torch.Tensor:
        _, logits = self.logits(images)
        probs = torch.cat([logits[h].softmax(-1) for h in IDENTITY_HEADS], dim=-1)  # (N, 14)
        return torch.nn.functional.normalize(probs, dim=-1)


def accuracy(predictions: list[dict], expected: list[dict]) -> dict[str, float]:
    """Per attribute named in `expected`, the fraction of images whose prediction matches."""
    keys = sorted({k for e in expected for k in e})
    return {k: float(np.mean([p.get(k) == e[k] for p, e in zip(predictions, expected) if k in e])) for k in keys}


def classifier_parts(which: str = "a") -> dict:
    """A judge ("a": Judge A, the steering classifier; "b": Judge B, the evaluator) as an image classifier's
    parts: {name, net, heads (head -> class names), forward}; `forward` takes images in [0, 1], resizes them to
    the judge's 32 px and maps them to [-1, 1], and returns {head: logits}."""
    judge = Judge.load(which)
    judge.net.requires_grad_(False).eval()

    def forward(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float()
        if tuple(x.shape[-2:]) != (w.SIZE, w.SIZE):
            x = torch.nn.functional.interpolate(x, size=(w.SIZE, w.SIZE), mode="bilinear", antialias=True)
        return judge.net(x * 2 - 1)[1]

    return {"name": f"toyworld judge {which}", "net": judge.net, "heads": {h: list(v[0]) for h, v in HEADS.items()},
            "forward": forward}
