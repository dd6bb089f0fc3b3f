"""How well the toy model draws its world, per the judge: the figures of assets/toyworld/README.md.

    python -m personalize.eval.evaluate [--model assets/toyworld] [--per-prompt 4] [--steps 25]

Suites (prompts with known answers, fixed seeds), scored by Judge B (the evaluator; `--judge a` for A):
  objects_seen / objects_heldout  single objects: shape and color right (held-out pairs never in training);
  faces                           expression and accessory right;
  pairs                           both named objects present (either side);
  texture                         "with stripes"/"with dots" prompts show that texture, plain prompts none;
  objects_phrasings               "a photo of a red circle", "a rendering of ...": SD users' phrasings, shape
                                  and color right;
  objects_heldout_phrasings       the same with prefixes never used in training (world.HELD_OUT_PREFIXES);
  faces_phrasings                 "a portrait of a smiling person wearing glasses": expression and accessory;
  identity_words                  the 16 held-out identities described in words ("... with short red hair,
                                  a round face and tan skin"): face shape, skin, hair color and style all right;
  outline_words                   "a large red circle with an outline" / "an outlined ...": outline drawn.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random

from personalize.toyworld import world as w

SUITES = ["objects_seen", "objects_heldout", "faces", "pairs", "texture", "objects_phrasings",
          "objects_heldout_phrasings", "faces_phrasings", "identity_words", "outline_words"]
# the acceptance of each suite (issue 4's five, toy world 1.1's others); measured values in assets/toyworld/README.md
ACCEPTANCE = {"objects_seen": 0.90, "objects_heldout": 0.70, "faces": 0.85, "pairs": 0.70, "texture": 0.80,
              "objects_phrasings": 0.90, "objects_heldout_phrasings": 0.80, "faces_phrasings": 0.85,
              "identity_words": 0.80, "outline_words": 0.85}
SD_PREFIXES = ["a photo of", "a picture of", "an image of", "a rendering of", "a close-up photo of",
               "a good photo of", "a drawing of"]


def describe(identity: int) -> str:
    """An identity in words: 'with short red hair, a round face and tan skin' (bald: eyebrows name the color)."""
    return w.with_parts([x for group in w.appearance_groups(identity) for x in group]).lstrip()


def _phrasing_suites(suite: str, rng) -> list[tuple[str, dict]]:
    seen = [c for c in itertools.product(w.SHAPES, w.COLORS) if c not in w.HELD_OUT_OBJECTS]
    if suite in ("objects_phrasings", "objects_heldout_phrasings"):
        prefixes = SD_PREFIXES if suite == "objects_phrasings" else w.HELD_OUT_PREFIXES
        return [(w.with_prefix(prefixes[i % len(prefixes)], f"{c} {s}"), {"kind": "object", "shape": s, "color": c})
                for i, (s, c) in enumerate(seen)]
    if suite == "faces_phrasings":
        out = []
        for i, (expr, acc) in enumerate(itertools.product(w.EXPRESSIONS, w.ACCESSORIES)):
            if (expr, acc) != w.HELD_OUT_FACE:
                prefix = ["a portrait of", "a close-up photo of", "a picture of"][i % 3]
                out.append((f"{prefix} a {expr} person{w.WEARING.get(acc, '')}",
                            {"kind": "face", "expression": expr, "accessory": acc}))
        return out
    if suite == "identity_words":
        out = []
        for i, identity in enumerate(sorted(w.HELD_OUT_IDENTITIES)):
            expr, bg = w.EXPRESSIONS[i % 3], list(w.FACE_BACKGROUNDS)[i % 4]
            parts = w.identity_parts(identity)
            out.append((f"a photo of a {expr} person {describe(identity)} on a {bg} background",
                        {"kind": "face"} | parts))
        return out
    if suite == "outline_words":
        return [(f"a large {c} {s} with an outline on a {rng.choice(list(w.BACKGROUNDS))} background" if i % 2
                 else f"an outlined {c} {s}", {"kind": "object", "outline": "yes"})
                for i, (s, c) in enumerate(rng.sample(seen, 10))]
    raise ValueError(f"unknown suite {suite!r}; known: {SUITES}")


def suite_prompts(suite: str, seed: int = 0) -> list[tuple[str, dict]]:
    """(prompt, expected judge attributes) for one suite."""
    rng = random.Random(seed)
    bg = lambda: rng.choice(list(w.BACKGROUNDS))  # noqa: E731
    combos = list(itertools.product(w.SHAPES, w.COLORS))
    if suite in ("objects_seen", "objects_heldout"):
        held = suite == "objects_heldout"
        return [(f"a large {c} {s} on a {bg()} background", {"kind": "object", "shape": s, "color": c})
                for s, c in combos if ((s, c) in w.HELD_OUT_OBJECTS) == held]
    if suite == "faces":
        out = []
        for expr, acc in itertools.product(w.EXPRESSIONS, w.ACCESSORIES):
            if (expr, acc) == w.HELD_OUT_FACE:
                continue
            wear = w.WEARING.get(acc, "")
            face_bg = rng.choice(list(w.FACE_BACKGROUNDS))
            out.append((f"a photo of a {expr} person{wear} on a {face_bg} background",
                        {"kind": "face", "expression": expr, "accessory": acc}))
        return out
    if suite == "pairs":
        seen = [c for c in combos if c not in w.HELD_OUT_OBJECTS]
        out = []
        for _ in range(12):
            (s1, c1), (s2, c2) = rng.sample(seen, 2)
            out.append((f"{w.article(c1)} {c1} {s1} and {w.article(c2)} {c2} {s2} on a {bg()} background",
                        {"kind": "pair", "objects": sorted([(s1, c1), (s2, c2)])}))
        return out
    if suite == "texture":
        out = []
        for s, c in rng.sample([x for x in combos if x not in w.HELD_OUT_OBJECTS], 6):
            for texture in w.TEXTURES:
                suffix = {"stripes": " with stripes", "dots": " with dots"}.get(texture, "")
                out.append((f"a large {c} {s}{suffix} on a {bg()} background", {"kind": "object", "texture": texture}))
        return out
    return _phrasing_suites(suite, rng)


def generate(pipe, prompts: list[str], per_prompt: int, seed: int, steps: int, guidance: float) -> list:
    """Images for each prompt x seeds seed..seed+per_prompt-1 (CPU generators), in prompt-major order."""
    import torch

    images = []
    for i in range(0, len(prompts), 8):
        chunk = [p for p in prompts[i:i + 8] for _ in range(per_prompt)]
        gens = [torch.Generator().manual_seed(seed + k) for _ in prompts[i:i + 8] for k in range(per_prompt)]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens).images
    return images


def score(suite: str, predictions: list[dict], expected: list[dict]) -> float:
    """Fraction of images right on every attribute the suite asks for."""
    def right(p, e):
        if e["kind"] == "pair":
            return p["kind"] == "pair" and sorted([(p["left_shape"], p["left_color"]),
                                                   (p["right_shape"], p["right_color"])]) == e["objects"]
        return all(p.get(k) == v for k, v in e.items())
    return sum(right(p, e) for p, e in zip(predictions, expected)) / len(expected)


def evaluate(pipe, judge, suites=SUITES, per_prompt: int = 4, seed: int = 0, steps: int = 25,
             guidance: float = 5.0) -> dict[str, float]:
    out = {}
    for suite in suites:
        pairs = suite_prompts(suite)
        prompts = [p for p, _ in pairs]
        expected = [e for _, e in pairs for _ in range(per_prompt)]
        images = generate(pipe, prompts, per_prompt, seed, steps, guidance)
        out[suite] = score(suite, judge.predict(images), expected)
    return out


def agreement(pipe, judge_a, judge_b, n: int = 500, seed: int = 7, steps: int = 25,
              guidance: float = 5.0) -> dict[str, float]:
    """Per head, how often the two judges agree on n generated images (random training-distribution
    captions); a head counts on the images both judges see as its kind of scene."""
    rng = random.Random(seed)
    prompts = [w.caption(w.sample_scene(rng), rng) for _ in range(n)]
    images = generate(pipe, prompts, 1, seed, steps, guidance)
    a, b = judge_a.predict(images), judge_b.predict(images)
    heads = sorted({k for p in a + b for k in p})
    out = {}
    for head in heads:
        both = [(x[head], y[head]) for x, y in zip(a, b) if head in x and head in y]
        out[head] = sum(x == y for x, y in both) / len(both) if both else float("nan")
    return out


def load_stock_pipeline(model: str):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    from personalize.profiles import toy_model_dir
    from personalize.cpu import TOY_THREADS, configure_threads
    from personalize.toyworld.judge import Judge

    configure_threads(TOY_THREADS)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(toy_model_dir()))
    parser.add_argument("--judge", default="b", help='"b" (the evaluator), "a", or a judge folder')
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--suites", nargs="*", default=SUITES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agreement", type=int, default=0, metavar="N",
                        help="instead: per-head agreement of Judge A and Judge B on N generated images")
    args = parser.parse_args()
    if args.agreement:
        result = agreement(load_stock_pipeline(args.model), Judge.load("a"), Judge.load("b"), args.agreement,
                           steps=args.steps, guidance=args.guidance)
        print(json.dumps(result, indent=1))
        return
    result = evaluate(load_stock_pipeline(args.model), Judge.load(args.judge), args.suites, args.per_prompt,
                      seed=args.seed, steps=args.steps, guidance=args.guidance)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
