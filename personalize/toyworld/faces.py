"""Toy-world face photos for Face2Diffusion: each with its identity, its face mask and its expression vector.

The mask is exact: the scene is drawn on two different backgrounds and every pixel that changes is background
(the face, hair, hat and glasses are foreground, as a face parser's head silhouette would be). The expression
vector is the one-hot of the scene's expression (3 values; the toy stand-in for a 3D face model's expression
coefficients). `write_face_folder` writes the layout the method reads from a real dataset:

    ids/<person>/<k>.png         the photo
    ids/<person>/<k>.mask.png    L mode, 255 = face (optional: all face)
    ids/<person>/<k>.exp.npy     float32 (exp_dim,) expression vector (optional; needed for expression guidance)
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from personalize.toyworld import world as w

TRAIN_IDENTITIES = sorted(set(range(w.N_IDENTITIES)) - w.HELD_OUT_IDENTITIES)  # 128
HELD_OUT = sorted(w.HELD_OUT_IDENTITIES)  # 16, never seen by either training stage


def expression_vector(expression: str) -> np.ndarray:
    out = np.zeros(len(w.EXPRESSIONS), np.float32)
    out[w.EXPRESSIONS.index(expression)] = 1.0
    return out


def face_scene(identity: int, rng: random.Random, expression: str | None = None, accessory: str | None = None,
               background: str | None = None) -> w.Scene:
    """A face of `identity`; what is not given is drawn (never the held-out surprised-with-hat combination)."""
    while True:
        e = expression or rng.choice(w.EXPRESSIONS)
        a = accessory or rng.choice(w.ACCESSORIES)
        if (e, a) != w.HELD_OUT_FACE or (expression and accessory):
            break
    bg = background or rng.choice(list(w.FACE_BACKGROUNDS))
    return w.Scene("face", bg, identity=identity, expression=e, accessory=a, jitter=(rng.randint(-1, 1),
                                                                                      rng.randint(-1, 1)))


def render_with_mask(scene: w.Scene) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (32, 32, 3) photo, float32 (32, 32) mask in [0, 1], 1 = face)."""
    import dataclasses

    photo = np.asarray(w.render(scene))
    others = [b for b in w.FACE_BACKGROUNDS if b != scene.background]
    diffs = [np.abs(photo.astype(np.float32) - np.asarray(w.render(dataclasses.replace(scene, background=b)), np.float32))
             for b in others[:2]]
    change = np.maximum(*diffs).max(axis=2)  # (32, 32) how much the pixel follows the background
    mask = 1.0 - np.clip(change / 40.0, 0.0, 1.0)  # edge pixels, blended with the background, are partial
    return photo, mask.astype(np.float32)


def sample(identities: list[int], seed: int, index: int, with_mask: bool = True) -> dict:
    """Sample `index` of a stream: a pure function of (seed, index) (the mask costs two more renders)."""
    rng = random.Random(seed * 1_000_003 + index)
    k = rng.randrange(len(identities))
    scene = face_scene(identities[k], rng)
    photo, mask = render_with_mask(scene) if with_mask else (np.asarray(w.render(scene)), None)
    return {"photo": photo, "mask": mask, "exp": expression_vector(scene.expression), "label": k,
            "identity": identities[k], "flip": rng.random() < 0.5}


def write_face_folder(out: str | Path, identities: list[int], per_identity: int, seed: int = 0) -> Path:
    """The folder layout above, for `per_identity` photos of each identity (person folder = its number)."""
    from PIL import Image

    out = Path(out)
    rng = random.Random(seed)
    for identity in identities:
        folder = out / f"{identity:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_identity):
            scene = face_scene(identity, rng)
            photo, mask = render_with_mask(scene)
            Image.fromarray(photo).save(folder / f"{k}.png")
            Image.fromarray((mask * 255).round().astype(np.uint8), "L").save(folder / f"{k}.mask.png")
            np.save(folder / f"{k}.exp.npy", expression_vector(scene.expression))
    return out


def held_out_photo(identity: int, expression: str = "neutral", accessory: str = "none",
                   background: str = "white") -> np.ndarray:
    """The one photo a new person gives: uint8 (32, 32, 3), centred."""
    scene = w.Scene("face", background, identity=identity, expression=expression, accessory=accessory)
    return np.asarray(w.render(scene))


def faces_found(photos: list[np.ndarray]) -> list[bool]:
    """The toy world's face detector: Judge A (loaded once) reads each photo as a face scene."""
    from PIL import Image

    from personalize.toyworld.judge import Judge

    return [p["kind"] == "face" for p in Judge.load("a").predict([Image.fromarray(x) for x in photos])]
