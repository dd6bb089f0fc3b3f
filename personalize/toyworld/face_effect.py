"""Face2Diffusion in the toy world (issue 19): one photo of a held-out person (16 identities neither training
stage ever drew) -> that person in new prompts, scored by Judge B (which no stage trained against).

Each identity gives one photo: neutral, no accessory, white background. Probes, each a list of
(prompt, {head: asked value}) per identity:
  - identity:        "<prefix> f l": all four identity heads right;
  - in_context:      "f l" with another ask (an expression, a hat, glasses, a background): the identity;
  - other_asks:      the same prompts: is the ask followed;
  - leak_expression: the prompts asking another expression: the photo's expression (neutral) instead;
  - leak_background: the prompts asking another background: the photo's background (white) instead;
  - base:            "<prefix> a person": the identity by chance (about 1/144).
Measurement prompts use the prefixes "a portrait of" / "a picture of"; `TUNING` ("a photo of") is the set
recipes were chosen on.
"""

from __future__ import annotations

from pathlib import Path

from personalize.toyworld import faces
from personalize.toyworld import world as w
from personalize.toyworld.erasure import SAMPLING, read_as_asked

PHOTO = {"expression": "neutral", "accessory": "none", "background": "white"}
ASKS = [("{a} a smiling f l", {"expression": "smiling"}), ("{b} a surprised f l", {"expression": "surprised"}),
        ("{a} f l wearing a hat", {"accessory": "hat"}), ("{b} f l wearing glasses", {"accessory": "glasses"}),
        ("{a} f l on a blue background", {"face_background": "blue"}),
        ("{b} f l on a green background", {"face_background": "green"})]
MEASURE = {"a": "a portrait of", "b": "a picture of"}
TUNING = {"a": "a photo of", "b": "a photo of"}
IMAGES = {"identity": 4, "base": 4}  # per_prompt multiples for the one-prompt probes (6-prompt ones: 1)


def probes(identity: int, prefixes: dict = MEASURE) -> dict[str, list[tuple[str, dict]]]:
    who = {"kind": "face"} | w.identity_parts(identity)
    asks = [(p.format(**prefixes), ask) for p, ask in ASKS]
    expression = [(p, {"expression": PHOTO["expression"]}) for p, ask in asks if "expression" in ask]
    background = [(p, {"face_background": PHOTO["background"]}) for p, ask in asks if "face_background" in ask]
    return {"identity": [(f"{prefixes['a']} f l", who)],
            "in_context": [(p, who) for p, _ in asks],
            "other_asks": [(p, {"kind": "face"} | ask) for p, ask in asks],
            "leak_expression": expression, "leak_background": background,
            "base": [(f"{prefixes['a']} a person", who)]}


def photo(identity: int):
    from PIL import Image

    return Image.fromarray(faces.held_out_photo(identity, **PHOTO))


def rates(pipe, judge, identity: int, per_prompt: int, seed: int, prefixes: dict = MEASURE,
          face_kw: dict | None = None) -> dict[str, float]:
    """Judge's rate per probe for one identity; `face_kw` is what `generate` gets for the face (edits=[a face
    edit], or person=...); None generates without a face. Probes with the same prompts share images."""
    out, drawn = {}, {}
    for probe, items in probes(identity, prefixes).items():
        prompts, n = tuple(p for p, _ in items), IMAGES.get(probe, 1) * per_prompt
        if prompts not in drawn:
            kw = face_kw if "f l" in prompts[0] else None
            drawn[prompts] = [g.image for g in pipe.generate(list(prompts), num_images=n, seed=seed, **SAMPLING,
                                                             **(kw or {}))]
        out[probe] = read_as_asked(judge, drawn[prompts], [e for _, e in items for _ in range(n)])
    return out


def measure_encoder(encoder: str | Path, per_prompt: int = 2, sample_seed: int = 7000,
                    prefixes: dict = MEASURE, identities: list[int] = faces.HELD_OUT, judge: str = "b") -> dict:
    """Mean rates over the held-out identities for one encoder file (each identity its own sampling seeds)."""
    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    from personalize.methods.face2diffusion.edit import FaceEdit
    from personalize.methods.face2diffusion.encoder import FaceEncoder

    pipe, j, enc = load_pipeline("toyworld", device="cpu"), Judge.load(judge), FaceEncoder.load(encoder)
    rows = [rates(pipe, j, i, per_prompt, sample_seed + 10 * k, prefixes, {"edits": [FaceEdit(enc, [photo(i)])]})
            for k, i in enumerate(identities)]
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
