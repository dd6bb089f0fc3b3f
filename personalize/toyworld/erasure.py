"""Concept erasure measured in the toy world: erase a shape, then score direct prompts, other shapes and two-object
scenes with Judge B (the evaluator; no erasure method trains against it).

The probe prompts here were not used to choose the toy recipes (configs/toyworld/esd.yaml, abo.yaml): those were
chosen on training seed 100 with other color/background pairings and sampling seeds 11000+ (docs/effects.md,
"Concept erasure"). `measure` trains each arm on each training seed and returns rows for
`personalize.toyworld.stats` (paired by seed against the base model, arm "base").
"""

from __future__ import annotations

from pathlib import Path

from personalize.toyworld import world as w

SAMPLING = {"steps": 25, "guidance_scale": 5.0}
PAIRINGS = [("blue", "gray"), ("red", "pink"), ("yellow", "white"), ("purple", "black")]  # (color, background)
ACCESSORIES = ["glasses", "hat"]
FACE_SETTINGS = [("neutral", "blue"), ("smiling", "green"), ("surprised", "white"), ("neutral", "gray")]


def probes(concept: str) -> dict[str, list[tuple[str, dict]]]:
    """{probe: [(prompt, what the judge should see)]} for erasing `concept`, a shape or a color: the concept in
    direct prompts, the other shapes (colors), and "a <color> <shape> and a <color> <shape>" scenes whose left
    object carries the concept (probes pairs_other_object: the right one stays; pairs_erased_object: the left)."""
    if concept in w.SHAPES:
        return _probes(concept, [s for s in w.SHAPES if s != concept], "shape")
    if concept in w.COLORS:
        return _probes(concept, [c for c in w.COLORS if c != concept][:3], "color")
    if concept in ACCESSORIES:
        return _face_probes(concept)
    raise ValueError(f"the toy-world erasure probes know the shapes {w.SHAPES}, the colors {list(w.COLORS)} and "
                     f"the accessories {ACCESSORIES}; got {concept!r}")


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


def rates(pipe, judge, concept: str, per_prompt: int, seed: int) -> dict[str, float]:
    """Per probe, the fraction of images the judge reads as asked; image k of a prompt uses seed `seed + k`."""
    out = {}
    for probe, items in probes(concept).items():
        prompts = [p for p, _ in items]
        images = [g.image for g in pipe.generate(prompts, num_images=per_prompt, seed=seed, **SAMPLING)]
        preds = judge.predict(images)
        asked = [e for _, e in items for _ in range(per_prompt)]
        out[probe] = sum(all(p.get(k) == v for k, v in e.items()) for p, e in zip(preds, asked)) / len(preds)
    return out


def uncond_drift(pipe, artifact: str | None, n: int = 4, seed: int = 0) -> float:
    """||eps(x_t, "") - eps*(x_t, "")|| / ||eps*(x_t, "")|| of the erased model against the base (the artifact
    removed again after), on `n` fixed noise latents at the DDIM timesteps 999 .. 1 of a 25-step schedule,
    averaged: how far the unconditional prediction (what every prompt's guidance starts from) moved."""
    import torch

    sd = pipe.sd
    gen = torch.Generator().manual_seed(seed)
    size = sd.unet.config.sample_size
    x = torch.randn(n, sd.unet.config.in_channels, size, size, generator=gen)
    ts = torch.linspace(999, 1, n).long()
    ids = sd.tokenizer([""] * n, padding="max_length", max_length=sd.tokenizer.model_max_length,
                       return_tensors="pt").input_ids
    with torch.no_grad():
        cond = sd.text_encoder(ids)[0]
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
            sample_seed: int = 9000, progress: bool = True, base: bool = True) -> list[dict]:
    """rows {"arm", "seed", probe rates...}: the base model once per training seed (the same sampling seeds;
    `base=False` leaves it out), then every arm (name -> config path) trained on that seed."""
    from tqdm.auto import tqdm

    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    judge, rows, out = Judge.load("b"), [], Path(out)
    pipe = load_pipeline("toyworld", device="cpu")
    for seed in tqdm(seeds, desc="training seeds", disable=not progress):
        if base:
            rows.append({"arm": "base", "seed": seed} | rates(pipe, judge, concept, per_prompt,
                                                              sample_seed + 100 * seed) | {"uncond_drift": 0.0})
        for arm, config_path in arms.items():
            artifact = str(train_arm(config_path, seed, out / f"{arm}-{seed}"))
            drift = uncond_drift(pipe, artifact)
            pipe.set_artifacts([artifact])
            rows.append({"arm": arm, "seed": seed} | rates(pipe, judge, concept, per_prompt, sample_seed + 100 * seed)
                        | {"uncond_drift": drift})
            pipe.set_artifacts([])
    return rows
