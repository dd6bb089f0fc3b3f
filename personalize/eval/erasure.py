"""Concept erasure measured in the toy world: erase a shape, then score direct prompts, other shapes and two-object
scenes with Judge B (the evaluator; no erasure method trains against it).

The probe prompts here were not used to choose the toy recipes (configs/toyworld/esd.yaml, abo.yaml): those were
chosen on training seed 100 with other color/background pairings and sampling seeds 11000+ (docs/effects.md,
"Concept erasure"). `measure` trains each arm on each training seed and returns rows for
`personalize.eval.stats` (paired by seed against the base model, arm "base").
"""

from __future__ import annotations

from pathlib import Path

from personalize.profiles import TOY
from personalize.toyworld import world as w

SAMPLING = {"steps": 25, "guidance_scale": 5.0}
PAIRINGS = [("blue", "gray"), ("red", "pink"), ("yellow", "white"), ("purple", "black")]  # (color, background)
ACCESSORIES = ["glasses", "hat"]
FACE_SETTINGS = [("neutral", "blue"), ("smiling", "green"), ("surprised", "white"), ("neutral", "gray")]


def attribute(concept: str) -> str:
    """The judge's attribute the concept is a value of: shape, color or accessory."""
    for attr, values in (("shape", w.SHAPES), ("color", list(w.COLORS)), ("accessory", ACCESSORIES)):
        if concept in values:
            return attr
    raise ValueError(f"the toy-world erasure probes know the shapes {w.SHAPES}, the colors {list(w.COLORS)} and "
                     f"the accessories {ACCESSORIES}; got {concept!r}")


def probes(concept: str) -> dict[str, list[tuple[str, dict]]]:
    """{probe: [(prompt, what the judge should see)]} for erasing `concept`, a shape, a color or an accessory:
    the concept in direct prompts, the other shapes (colors), and "a <color> <shape> and a <color> <shape>"
    scenes whose left object carries the concept (probes pairs_other_object: the right one stays;
    pairs_erased_object: the left); for an accessory, `_face_probes`."""
    attr = attribute(concept)
    if attr == "accessory":
        return _face_probes(concept)
    values = w.SHAPES if attr == "shape" else list(w.COLORS)
    others = [v for v in values if v != concept]
    return _probes(concept, others if attr == "shape" else others[:3], attr)


def _face_probes(concept: str) -> dict[str, list[tuple[str, dict]]]:
    """For an accessory: faces wearing it (direct), wearing the other one (other_accessories), and the
    expression asked beside it (face_kept: the rest of the face stays)."""
    other = next(a for a in ACCESSORIES if a != concept)
    wearing = {a: w.WEARING[a].strip() for a in ACCESSORIES}  # "wearing glasses"
    faces = lambda acc: [(e, bg) for e, bg in FACE_SETTINGS if (e, acc) != w.HELD_OUT_FACE]  # noqa: E731
    return {"direct": [(f"a photo of a {e} person {wearing[concept]} on a {bg} background", {"accessory": concept})
                       for e, bg in faces(concept)],
            "other_accessories": [(f"a photo of a {e} person {wearing[other]} on a {bg} background",
                                   {"accessory": other}) for e, bg in faces(other)],
            "face_kept": [(f"a photo of a {e} person {wearing[concept]} on a {bg} background", {"expression": e})
                          for e, bg in faces(concept)]}


def _object(attr: str, value: str, other: str) -> tuple[str, str]:
    """(shape, color) of an object whose `attr` is `value`; `other` fills the remaining attribute."""
    return (value, other) if attr == "shape" else (other, value)


def _probes(concept: str, others: list[str], attr: str) -> dict[str, list[tuple[str, dict]]]:
    fill = [c for c, _ in PAIRINGS] if attr == "shape" else ["circle", "square", "cross", "triangle"]
    ok = lambda shape, color: (shape, color) not in w.HELD_OUT_OBJECTS  # noqa: E731
    direct = [(f"a {c} {s} on a {b} background", {attr: concept})
              for f, (_, b) in zip(fill, PAIRINGS) for s, c in [_object(attr, concept, f)] if ok(s, c)]
    other = [(f"a {c} {s} on a {b} background", {attr: o})
             for o in others for f, (_, b) in zip(fill, PAIRINGS) for s, c in [_object(attr, o, f)] if ok(s, c)]
    pairs, right_attr = [], f"right_{attr}"
    for k, o in enumerate(others * 2):
        (s1, c1), (s2, c2) = _object(attr, concept, fill[k % 4]), _object(attr, o, fill[(k + 1) % 4])
        if ok(s1, c1) and ok(s2, c2) and len(pairs) < 4:
            pairs.append((f"a {c1} {s1} and a {c2} {s2}", {right_attr: o}))
    erased = [(p, {f"left_{attr}": concept}) for p, _ in pairs]
    return {"direct": direct, "other_shapes" if attr == "shape" else "other_colors": other,
            "pairs_other_object": pairs, "pairs_erased_object": erased}


def phrasing_probes(shape: str) -> dict[str, list[tuple[str, dict]]]:
    """For a shape erased by its bare name (issue 39): `held_out_phrasings`, the shape under the world's held-out
    prefixes (never in the toy model's training captions) with sizes, textures and colors no recipe names;
    `second_in_pair`, the shape named second ("a red circle and a blue triangle": the right object)."""
    if shape not in w.SHAPES:
        raise ValueError(f"phrasing probes are for the shapes {w.SHAPES}; got {shape!r}")
    others = [o for o in w.SHAPES if o != shape]
    ok = lambda s, c: (s, c) not in w.HELD_OUT_OBJECTS  # noqa: E731
    colors = [c for c in ("orange", "purple", "red", "yellow", "blue") if ok(shape, c)][:4]
    looks = ["large {c} {s}", "small {c} {s} with dots", "{c} {s} with stripes", "big {c} {s}"]
    held = [(w.with_prefix(prefix, look.format(c=c, s=shape)), {"shape": shape})
            for prefix, look, c in zip(w.HELD_OUT_PREFIXES, looks, colors)]
    firsts = [("red", others[0]), ("yellow", others[1]), ("red", others[2]), ("blue", others[0])]
    pairs = [(f"{w.article(c1)} {c1} {s1} and {w.article(c2)} {c2} {shape}", {"right_shape": shape})
             for (c1, s1), c2 in zip(firsts, colors) if ok(s1, c1)]
    return {"held_out_phrasings": held, "second_in_pair": pairs}


def score(pipe, judge, items: list[tuple[str, dict]], per_prompt: int, seed: int,
          sampling: dict = SAMPLING) -> tuple[float, list]:
    """The fraction of images the judge reads as asked, and the images; image k of a prompt uses seed `seed + k`."""
    prompts = [p for p, _ in items]
    images = [g.image for g in pipe.generate(prompts, num_images=per_prompt, seed=seed, **sampling)]
    asked = [e for _, e in items for _ in range(per_prompt)]
    return read_as_asked(judge, images, asked), images


def read_as_asked(judge, images: list, asked: list[dict]) -> float:
    """The fraction of images the judge reads with every asked {head: value}."""
    return sum(all(p.get(k) == v for k, v in e.items()) for p, e in zip(judge.predict(images), asked)) / len(asked)


def rates(pipe, judge, concept: str, per_prompt: int, seed: int, phrasings: bool = False) -> dict[str, float]:
    """Per probe, the fraction of images the judge reads as asked (`score`); `phrasings`: also
    `phrasing_probes` (a shape)."""
    items = probes(concept) | (phrasing_probes(concept) if phrasings else {})
    return {probe: score(pipe, judge, group, per_prompt, seed)[0] for probe, group in items.items()}


def uncond_drift(pipe, artifact: str | None, n: int = 4, seed: int = 0) -> float:
    """||eps(x_t, "") - eps*(x_t, "")|| / ||eps*(x_t, "")|| of the erased model against the base (the artifact
    removed again after), on `n` fixed noise latents at the DDIM timesteps 999 .. 1 of a 25-step schedule,
    averaged: how far the unconditional prediction (what every prompt's guidance starts from) moved."""
    import torch

    from personalize.methods.blocks import encode_prompts

    sd = pipe.sd
    gen = torch.Generator().manual_seed(seed)
    size = sd.unet.config.sample_size
    x = torch.randn(n, sd.unet.config.in_channels, size, size, generator=gen)
    ts = torch.linspace(999, 1, n).long()
    with torch.no_grad():
        cond = encode_prompts(sd.tokenizer, sd.text_encoder, [""] * n, sd.device)  # (n, 77, width)
        pipe.set_artifacts([])
        ref = sd.unet(x, ts, cond).sample
        pipe.set_artifacts([artifact] if artifact else [])
        ours = sd.unet(x, ts, cond).sample
        pipe.set_artifacts([])
    return float(((ours - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).mean())


def train_arm(config_path: str, seed: int, out: Path, overrides: dict | None = None) -> Path:
    """Train one erasure config (a toy recipe) with training seed `seed`; the artifact's path."""
    from personalize.config import load_config
    from personalize.trainer import train

    cfg = load_config([config_path], {"train": {"output_dir": str(out), "seed": seed, "report_to": "none",
                                                "checkpointing_steps": 100_000}} | (overrides or {}))
    return train(cfg).artifact


def measure(arms: dict[str, str], concept: str, seeds: list[int], out: str | Path, per_prompt: int = 4,
            sample_seed: int = 9000, progress: bool = True, base: bool = True, phrasings: bool = False,
            overrides: dict | None = None) -> list[dict]:
    """rows {"arm", "seed", probe rates...}: the base model once per training seed (the same sampling seeds;
    `base=False` leaves it out), then every arm (name -> config path) trained on that seed."""
    from tqdm.auto import tqdm

    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    judge, rows, out = Judge.load("b"), [], Path(out)
    pipe = load_pipeline(TOY, device="cpu")
    for seed in tqdm(seeds, desc="training seeds", disable=not progress):
        if base:
            rows.append({"arm": "base", "seed": seed} | rates(pipe, judge, concept, per_prompt,
                                                              sample_seed + 100 * seed, phrasings)
                        | {"uncond_drift": 0.0})
        for arm, config_path in arms.items():
            artifact = str(train_arm(config_path, seed, out / f"{arm}-{seed}", (overrides or {}).get(arm)))
            drift = uncond_drift(pipe, artifact)
            pipe.set_artifacts([artifact])
            rows.append({"arm": arm, "seed": seed}
                        | rates(pipe, judge, concept, per_prompt, sample_seed + 100 * seed, phrasings)
                        | {"uncond_drift": drift})
            pipe.set_artifacts([])
    return rows
