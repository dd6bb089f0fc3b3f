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


def probes(shape: str) -> dict[str, list[tuple[str, dict]]]:
    """{probe: [(prompt, what the judge should see)]} for erasing `shape`: the shape itself, every other shape,
    and "a <color> <shape> and a <color> <other>" scenes (the other object, on the right; and the erased one)."""
    others = [s for s in w.SHAPES if s != shape]
    allowed = [(c, b) for c, b in PAIRINGS if (shape, c) not in w.HELD_OUT_OBJECTS]
    direct = [(f"a {c} {shape} on a {b} background", {"shape": shape}) for c, b in allowed]
    other = [(f"a {c} {s} on a {b} background", {"shape": s}) for s in others for c, b in PAIRINGS
             if (s, c) not in w.HELD_OUT_OBJECTS]
    pairs = [(f"a {c} {shape} and a {d} {s}", {"right_shape": s})
             for (c, _), (d, _), s in zip(PAIRINGS, PAIRINGS[1:] + PAIRINGS[:1], others * 2)]
    pairs_erased = [(p, {"left_shape": shape}) for p, _ in pairs]
    return {"direct": direct, "other_shapes": other, "pairs_other_object": pairs, "pairs_erased_object": pairs_erased}


def rates(pipe, judge, shape: str, per_prompt: int, seed: int) -> dict[str, float]:
    """Per probe, the fraction of images the judge reads as asked; image k of a prompt uses seed `seed + k`."""
    out = {}
    for probe, items in probes(shape).items():
        prompts = [p for p, _ in items]
        images = [g.image for g in pipe.generate(prompts, num_images=per_prompt, seed=seed, **SAMPLING)]
        preds = judge.predict(images)
        asked = [e for _, e in items for _ in range(per_prompt)]
        out[probe] = sum(all(p.get(k) == v for k, v in e.items()) for p, e in zip(preds, asked)) / len(preds)
    return out


def train_arm(config_path: str, seed: int, out: Path, overrides: dict | None = None) -> Path:
    """Train one erasure config (a toy recipe) with training seed `seed`; the artifact's path."""
    from personalize.config import load_config
    from personalize.trainer import train

    cfg = load_config([config_path], {"train": {"output_dir": str(out), "seed": seed, "report_to": "none",
                                                "checkpointing_steps": 100_000}} | (overrides or {}))
    return train(cfg).artifact


def measure(arms: dict[str, str], shape: str, seeds: list[int], out: str | Path, per_prompt: int = 4,
            sample_seed: int = 9000, progress: bool = True) -> list[dict]:
    """rows {"arm", "seed", probe rates...}: the base model once per training seed (the same sampling seeds),
    then every arm (name -> config path) trained on that seed."""
    from tqdm.auto import tqdm

    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    judge, rows, out = Judge.load("b"), [], Path(out)
    pipe = load_pipeline("toyworld", device="cpu")
    for seed in tqdm(seeds, desc="training seeds", disable=not progress):
        rows.append({"arm": "base", "seed": seed} | rates(pipe, judge, shape, per_prompt, sample_seed + 100 * seed))
        for arm, config_path in arms.items():
            artifact = train_arm(config_path, seed, out / f"{arm}-{seed}")
            pipe.set_artifacts([str(artifact)])
            rows.append({"arm": arm, "seed": seed} | rates(pipe, judge, shape, per_prompt, sample_seed + 100 * seed))
            pipe.set_artifacts([])
    return rows
