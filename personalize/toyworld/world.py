"""The toy world: procedural 32x32 scenes with captions from a small grammar, deterministic.

Three kinds of scene, each a `Scene` of known attributes, drawn at 4x and downsampled (anti-aliased edges):
  - object: one shape (4) x color (6) x size (2) on a background (4), with a texture always named in the
    caption when present ("with stripes", "striped", "with dots", "spotted"), and a contrasting *outline*
    named in half of the captions of the objects that have one ("outlined", "with an outline");
  - pair: two small objects, left and right, "a red circle and a blue square";
  - face: identity = face shape (3) x skin (4) x hair color (4) x hair style (3) = 144 identities (16 held out),
    expression (neutral / smiling / surprised), accessory (none / hat / glasses), background; 60 % of face
    captions describe part of the appearance ("with short red hair, a round face and tan skin").
Captions mix the plain grammar with the phrasings of Stable Diffusion users and textual inversion's templates
("a photo of a ...", "a rendering of ...", synonyms, a comma word order); `HELD_OUT_PREFIXES` never appear in
training. Some (shape, color) pairs, 16 identities and one face combination are held out of training to
measure composition.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np

SIZE = 32
SS = 4  # supersampling factor for drawing
SHAPES = ["circle", "square", "triangle", "cross"]
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225), "yellow": (240, 215, 40),
          "purple": (150, 60, 200), "orange": (245, 140, 30)}
SIZES = ["small", "large"]
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128), "pink": (250, 185, 200)}
TEXTURES = ["plain", "stripes", "dots"]
FACE_BACKGROUNDS = {"blue": (90, 140, 230), "green": (110, 190, 110), "white": (245, 245, 245),
                    "gray": (128, 128, 128)}
FACE_SHAPES = ["round", "long", "square"]
SKINS = {"light": (250, 220, 190), "tan": (225, 180, 130), "brown": (170, 115, 70), "dark": (100, 65, 40)}
HAIR_COLORS = {"black": (25, 25, 25), "brown": (110, 65, 30), "blonde": (235, 200, 90), "red": (190, 60, 25)}
HAIR_STYLES = ["short", "long", "bald"]
EXPRESSIONS = ["neutral", "smiling", "surprised"]
ACCESSORIES = ["none", "hat", "glasses"]
# held out of training: composition is measured on these
HELD_OUT_OBJECTS = {("circle", "purple"), ("square", "orange"), ("triangle", "green"), ("cross", "blue")}
HELD_OUT_FACE = ("surprised", "hat")
N_IDENTITIES = len(FACE_SHAPES) * len(SKINS) * len(HAIR_COLORS) * len(HAIR_STYLES)  # 144
HELD_OUT_IDENTITIES = set(range(0, N_IDENTITIES, 9))  # 16 identities never seen in training


def identity_parts(identity: int) -> dict[str, str]:
    i = identity
    shape, i = FACE_SHAPES[i % 3], i // 3
    skin, i = list(SKINS)[i % 4], i // 4
    hair_color, i = list(HAIR_COLORS)[i % 4], i // 4
    return {"face_shape": shape, "skin": skin, "hair_color": hair_color, "hair_style": HAIR_STYLES[i % 3]}


def identity_target(identity: int) -> dict[str, str]:
    """The judges' head targets of a face identity: a face with its four appearance attributes."""
    if not 0 <= identity < N_IDENTITIES:
        raise ValueError(f"the toy world's identities are 0..{N_IDENTITIES - 1}, got {identity}")
    return {"kind": "face"} | identity_parts(identity)


@dataclass
class Obj:
    shape: str
    color: str
    size: str = "large"
    texture: str = "plain"
    outline: bool = False


@dataclass
class Scene:
    kind: str  # object | pair | face
    background: str
    objects: list[Obj] = field(default_factory=list)
    identity: int = -1
    expression: str = "neutral"
    accessory: str = "none"
    jitter: tuple[int, int] = (0, 0)

    def labels(self) -> dict:
        out = asdict(self)
        if self.kind == "face":
            out |= identity_parts(self.identity)
        return out


# ------------------------------------------------------------------------------------------ sampling


def sample_object(rng: random.Random, held_out: bool = False) -> Obj:
    while True:
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        if ((shape, color) in HELD_OUT_OBJECTS) == held_out:
            break
    return Obj(shape, color, rng.choice(SIZES), rng.choice(TEXTURES), rng.random() < 0.25)


def sample_scene(rng: random.Random, split: str = "train") -> Scene:
    """split "train" never yields held-out combinations; "heldout_objects"/"heldout_faces" yield only those."""
    if split == "heldout_objects":
        return Scene("object", rng.choice(list(BACKGROUNDS)), [sample_object(rng, True)], jitter=_jitter(rng))
    kind = rng.choices(["object", "pair", "face"], [0.45, 0.2, 0.35])[0]
    if split == "heldout_faces":
        kind = "face"
    if kind == "object":
        return Scene(kind, rng.choice(list(BACKGROUNDS)), [sample_object(rng)], jitter=_jitter(rng))
    if kind == "pair":
        a, b = sample_object(rng), sample_object(rng)
        while (b.shape, b.color) == (a.shape, a.color):
            b = sample_object(rng)
        objs = [Obj(o.shape, o.color, "small") for o in (a, b)]
        return Scene(kind, rng.choice(list(BACKGROUNDS)), objs, jitter=_jitter(rng))
    held = split == "heldout_faces"
    identity = rng.choice(sorted(HELD_OUT_IDENTITIES if held else set(range(N_IDENTITIES)) - HELD_OUT_IDENTITIES))
    while True:
        expression, accessory = rng.choice(EXPRESSIONS), rng.choice(ACCESSORIES)
        if (expression, accessory) != HELD_OUT_FACE or held:
            break
    return Scene("face", rng.choice(list(FACE_BACKGROUNDS)), identity=identity, expression=expression,
                 accessory=accessory, jitter=_jitter(rng, 1))


def _jitter(rng: random.Random, amount: int = 2) -> tuple[int, int]:
    return rng.randint(-amount, amount), rng.randint(-amount, amount)


# ------------------------------------------------------------------------------------------ captions


# Phrasings. Training captions mix the plain grammar ("a large red circle on a pink background") with the
# prefixes, synonyms and word orders Stable Diffusion users type and textual inversion's templates use. The
# held-out prefixes never appear in training: they measure how far phrasing generalises.
PREFIXES = ["a photo of", "a picture of", "an image of", "a rendering of", "a close-up photo of",
            "a good photo of", "a drawing of", "a photo of one", "a bright photo of", "a cropped photo of",
            "a photo of my", "a picture of the", "a good photo of the"]
FACE_PREFIXES = ["a photo of", "a portrait of", "a close-up photo of", "a picture of", "an image of"]
HELD_OUT_PREFIXES = ["a snapshot of", "a nice picture of", "an illustration of", "a clear image of"]
SIZE_WORDS = {"small": ["small", "tiny", "little"], "large": ["large", "big"]}
TEXTURE_WORDS = {"stripes": ["striped"], "dots": ["spotted", "dotted"]}  # adjective forms of "with ..."
GREY = {"gray": "grey"}
WEARING = {"hat": " wearing a hat", "glasses": " wearing glasses"}  # accessory -> its words ("none": none)


def object_phrase(o: Obj, with_size: bool = True) -> str:
    words = ([o.size] if with_size else []) + [o.color, o.shape]
    texture = {"stripes": " with stripes", "dots": " with dots"}.get(o.texture, "")
    return " ".join(words) + texture


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def with_prefix(prefix: str, phrase: str) -> str:
    """'a photo of' + 'large red circle ...' -> 'a photo of a large red circle ...' ('the'/'one'/'my' kept)."""
    if prefix.split()[-1] in ("the", "one", "my"):
        return f"{prefix} {phrase}"
    return f"{prefix} {article(phrase)} {phrase}"


def _pick(rng: random.Random, canonical: str, synonyms: list[str], p_canonical: float = 0.5) -> str:
    return canonical if rng.random() < p_canonical else rng.choice(synonyms)


def _varied_object(o: Obj, rng: random.Random, keep_size: bool, bg: str) -> str:
    """One object, in a random phrasing: synonyms, adjective or 'with' forms, the outline named half the
    time it is drawn, and sometimes the comma order 'a circle, red, large, on a black background'."""
    size = [_pick(rng, o.size, SIZE_WORDS[o.size])] if keep_size else []
    adjectives, suffixes = [], []
    if o.texture != "plain":
        if rng.random() < 0.6:
            suffixes.append(o.texture)  # "with stripes" / "with dots"
        else:
            adjectives.append(rng.choice(TEXTURE_WORDS[o.texture]))
    if o.outline and rng.random() < 0.5:
        if rng.random() < 0.5:
            adjectives.append("outlined")
        else:
            suffixes.append("an outline")
    if rng.random() < 0.1:  # comma order
        parts = [o.color] + size + [f"with {' and '.join(suffixes)}"] * bool(suffixes) + adjectives
        return f"{o.shape}, " + ", ".join(parts) + ("," + bg if bg else "")
    text = " ".join(size + adjectives + [o.color, o.shape])
    if suffixes:
        text += " with " + " and ".join(suffixes)
    return text + bg


def appearance_groups(identity: int) -> list[list[str]]:
    """An identity's appearance in words, by group: [hair], [face shape], [skin]; a bald head names the hair
    color by the eyebrows: [["red eyebrows", "a bald head"], ["a round face"], ["tan skin"]]."""
    p = identity_parts(identity)
    hair = ([f"{p['hair_color']} eyebrows", "a bald head"] if p["hair_style"] == "bald"
            else [f"{p['hair_style']} {p['hair_color']} hair"])
    return [hair, [f"{article(p['face_shape'])} {p['face_shape']} face"], [f"{p['skin']} skin"]]


def with_parts(parts: list[str]) -> str:
    """['short red hair', 'a round face', 'tan skin'] -> ' with short red hair, a round face and tan skin'."""
    return " with " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1])


def _face_description(scene: Scene, rng: random.Random) -> str:
    """' with short red hair and a round face' (a random subset, random order), or '' (40 %)."""
    if rng.random() < 0.4:
        return ""
    groups = appearance_groups(scene.identity)
    parts = [x for group in groups if rng.random() < 0.75 for x in group] or rng.choice(groups)
    rng.shuffle(parts)
    return with_parts(parts)


def caption(scene: Scene, rng: random.Random | None = None, prefixes: list[str] | None = None) -> str:
    """The canonical caption; with `rng`, a random training phrasing: size and background sometimes left out
    (texture never is), prefixes ('a photo of ...'), synonyms, the appearance of faces and the outline named
    in a share of captions. `prefixes` replaces the training prefixes (e.g. HELD_OUT_PREFIXES)."""
    if rng is None:
        return _canonical(scene)
    keep = lambda p: rng.random() < p  # noqa: E731
    background = GREY.get(scene.background, scene.background) if keep(0.3) else scene.background
    bg = f" on a {background} background" if keep(0.7) else ""
    if scene.kind == "object":
        phrase = _varied_object(scene.objects[0], rng, keep(0.7), bg)
        return with_prefix(rng.choice(prefixes or PREFIXES), phrase) if keep(0.55) else f"{article(phrase)} {phrase}"
    if scene.kind == "pair":
        a, b = scene.objects
        phrase = f"{a.color} {a.shape} and {article(b.color)} {b.color} {b.shape}{bg}"
        return with_prefix(rng.choice(prefixes or PREFIXES), phrase) if keep(0.4) else f"{article(phrase)} {phrase}"
    acc = WEARING.get(scene.accessory, "")
    prefix = "a photo of" if keep(0.5) and not prefixes else rng.choice(prefixes or FACE_PREFIXES)
    return f"{prefix} a {scene.expression} person{_face_description(scene, rng)}{acc}{bg}"


def _canonical(scene: Scene) -> str:
    bg = f" on a {scene.background} background"
    if scene.kind == "object":
        phrase = object_phrase(scene.objects[0])
        return f"{article(phrase)} {phrase}{bg}"
    if scene.kind == "pair":
        a, b = scene.objects
        return f"{article(a.color)} {a.color} {a.shape} and {article(b.color)} {b.color} {b.shape}{bg}"
    return f"a photo of a {scene.expression} person{WEARING.get(scene.accessory, '')}{bg}"


# ------------------------------------------------------------------------------------------ drawing


def _shape_mask(draw_fn, shape: str, cx: float, cy: float, r: float) -> None:
    if shape == "circle":
        draw_fn("ellipse", [cx - r, cy - r, cx + r, cy + r])
    elif shape == "square":
        k = r * 0.85
        draw_fn("rectangle", [cx - k, cy - k, cx + k, cy + k])
    elif shape == "triangle":
        draw_fn("polygon", [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)])
    elif shape == "cross":
        w = r * 0.38
        draw_fn("rectangle", [cx - w, cy - r, cx + w, cy + r])
        draw_fn("rectangle", [cx - r, cy - w, cx + r, cy + w])


def _draw_object(canvas, o: Obj, cx: float, cy: float, background: str) -> None:
    from PIL import Image, ImageDraw

    r = (5.0 if o.size == "small" else 10.0) * SS
    cx, cy = cx * SS, cy * SS
    mask = Image.new("L", canvas.size, 0)
    md = ImageDraw.Draw(mask)
    _shape_mask(lambda kind, xy: getattr(md, kind)(xy, fill=255), o.shape, cx, cy, r)
    if o.outline:  # the hidden detail: a ring in the background's opposite tone, never captioned
        ring = Image.new("L", canvas.size, 0)
        rd = ImageDraw.Draw(ring)
        _shape_mask(lambda kind, xy: getattr(rd, kind)(xy, fill=255), o.shape, cx, cy, r + 1.6 * SS)
        tone = (20, 20, 20) if sum(BACKGROUNDS.get(background, (128,) * 3)) > 380 else (245, 245, 245)
        canvas.paste(tone, (0, 0), ring)
    color = COLORS[o.color]
    canvas.paste(color, (0, 0), mask)
    if o.texture != "plain":
        dark = tuple(int(c * 0.45) for c in color)
        pattern = Image.new("L", canvas.size, 0)
        pd = ImageDraw.Draw(pattern)
        step = 6 * SS  # coarse enough to survive the VAE's 4x4 cells: 3-pixel bands, dots 6 pixels apart
        if o.texture == "stripes":
            for y in range(0, canvas.size[1], step):
                pd.rectangle([0, y, canvas.size[0], y + step // 2 - 1], fill=255)
        else:
            for y in range(step // 2, canvas.size[1], step):
                for x in range(step // 2 - SS, canvas.size[0], step):
                    pd.ellipse([x - SS * 1.3, y - SS * 1.3, x + SS * 1.3, y + SS * 1.3], fill=255)
        pattern = Image.fromarray(np.minimum(np.asarray(pattern), np.asarray(mask)))
        canvas.paste(dark, (0, 0), pattern)


def _draw_face(canvas, scene: Scene) -> None:
    from PIL import ImageDraw

    p = identity_parts(scene.identity)
    d = ImageDraw.Draw(canvas)
    s = SS
    cx, cy = (16 + scene.jitter[0]) * s, (17 + scene.jitter[1]) * s
    hw, hh = {"round": (8, 8), "long": (6.5, 10), "square": (8, 8.5)}[p["face_shape"]]
    hair = HAIR_COLORS[p["hair_color"]]
    if p["hair_style"] == "long":  # hair behind the head, down past the chin
        d.rectangle([cx - (hw + 2.5) * s, cy - (hh + 1) * s, cx + (hw + 2.5) * s, cy + (hh + 2) * s], fill=hair)
    box = [cx - hw * s, cy - hh * s, cx + hw * s, cy + hh * s]
    skin = SKINS[p["skin"]]
    if p["face_shape"] == "square":
        d.rounded_rectangle(box, radius=2 * s, fill=skin)
    else:
        d.ellipse(box, fill=skin)
    if p["hair_style"] != "bald":  # hair on top, plus short sides
        d.chord([cx - (hw + 0.8) * s, cy - (hh + 1.5) * s, cx + (hw + 0.8) * s, cy + (hh * 0.4) * s], 180, 360, fill=hair)
        if p["hair_style"] == "short":
            d.rectangle([cx - (hw + 0.8) * s, cy - hh * 0.4 * s, cx - (hw - 0.8) * s, cy + 1 * s], fill=hair)
            d.rectangle([cx + (hw - 0.8) * s, cy - hh * 0.4 * s, cx + (hw + 0.8) * s, cy + 1 * s], fill=hair)
    ey, ex = cy - 1 * s, 3 * s
    for sx in (-1, 1):  # eyebrows in the hair color: it stays visible on bald heads and under hats
        d.rectangle([cx + sx * ex - 1.8 * s, ey - 3.4 * s, cx + sx * ex + 1.8 * s, ey - 2.4 * s], fill=hair)
    for sx in (-1, 1):
        d.ellipse([cx + sx * ex - 1 * s, ey - 1 * s, cx + sx * ex + 1 * s, ey + 1 * s], fill=(20, 20, 20))
    my = cy + 4 * s
    if scene.expression == "neutral":
        d.rectangle([cx - 3 * s, my - 0.6 * s, cx + 3 * s, my + 0.6 * s], fill=(90, 30, 30))
    elif scene.expression == "smiling":  # a wide, thick smile
        d.chord([cx - 4.5 * s, my - 3 * s, cx + 4.5 * s, my + 2.5 * s], 0, 180, fill=(150, 20, 20))
    else:  # surprised: a big open mouth
        d.ellipse([cx - 2 * s, my - 1.5 * s, cx + 2 * s, my + 2.8 * s], fill=(60, 10, 10))
    if scene.accessory == "glasses":
        for sx in (-1, 1):
            d.rectangle([cx + sx * ex - 2.4 * s, ey - 2 * s, cx + sx * ex + 2.4 * s, ey + 2 * s],
                        outline=(15, 15, 15), width=int(1.2 * s))
        d.line([cx - 1 * s, ey, cx + 1 * s, ey], fill=(15, 15, 15), width=int(1.2 * s))
    elif scene.accessory == "hat":
        top = cy - (hh + 1.5) * s
        d.rectangle([cx - (hw + 3) * s, top - 1 * s, cx + (hw + 3) * s, top + 1 * s], fill=(40, 40, 120))
        d.rectangle([cx - hw * 0.8 * s, top - 6 * s, cx + hw * 0.8 * s, top], fill=(40, 40, 120))


def render(scene: Scene):
    """Scene -> PIL RGB 32x32."""
    from PIL import Image

    bg = (FACE_BACKGROUNDS if scene.kind == "face" else BACKGROUNDS)[scene.background]
    canvas = Image.new("RGB", (SIZE * SS, SIZE * SS), bg)
    jx, jy = scene.jitter
    if scene.kind == "object":
        _draw_object(canvas, scene.objects[0], 16 + jx, 16 + jy, scene.background)
    elif scene.kind == "pair":
        for o, x in zip(scene.objects, (8, 24)):
            _draw_object(canvas, o, x + jx * 0.5, 16 + jy, scene.background)
    else:
        _draw_face(canvas, scene)
    return canvas.resize((SIZE, SIZE), Image.LANCZOS)


def make_dataset(n: int, seed: int, split: str = "train", vary_captions: bool = True):
    """n scenes -> (uint8 images (n, 32, 32, 3), captions, scenes)."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, split) for _ in range(n)]
    captions = [caption(s, rng if vary_captions else None) for s in scenes]
    images = np.stack([np.asarray(render(s)) for s in scenes])
    return images, captions, scenes
