"""Measuring content suppression (SuppressEOT) in the toy world.

Each case is a prompt that names an attribute the toy model reliably draws and that the user wants gone, the
words to suppress, the judge's head and value that detect it, and the attributes the prompt keeps. The same
prompts and seeds are generated under several arms (no suppression, a plain negative prompt, SWR, SWR+ITO); for
each arm the result is the detection rate of the suppressed attribute and the rate of each kept attribute,
pooled over the cases.

    from personalize.eval.suppression import CASES, ARMS, measure
    measure(load_pipeline("toyworld"), Judge.load("b"), CASES, ARMS, seeds=12)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    prompt: str
    words: str  # what to suppress: a word or span of the prompt
    gone: tuple[str, str]  # (judge head, value) that detects it
    keep: dict = field(default_factory=dict)  # judge head -> value the prompt asks for and should keep


def _texture_cases() -> list[Case]:
    """One seen (shape, color) pair per shape, each with stripes and with dots; kept: an object of that color."""
    pairs = [("circle", "red"), ("square", "blue"), ("triangle", "yellow"), ("cross", "green")]
    return [Case(f"a large {color} {shape} with {texture}", texture, ("texture", texture),
                 {"kind": "object", "color": color, "shape": shape})
            for shape, color in pairs for texture in ("stripes", "dots")]


def _accessory_cases() -> list[Case]:
    """Faces with glasses or a hat (the held-out 'surprised wearing a hat' left out); kept: a face, the expression."""
    return [Case(f"a photo of a {e} person wearing {a}", a.split()[-1], ("accessory", a.split()[-1]),
                 {"kind": "face", "expression": e})
            for e in ("neutral", "smiling", "surprised") for a in ("glasses", "a hat") if (e, a) != ("surprised", "a hat")]


def _new_texture_cases() -> list[Case]:
    """Prompts the effect test never uses (for re-measuring it): other seen (shape, color) pairs, a size and a
    background; kept: an object of that color and the background."""
    pairs = [("circle", "blue"), ("square", "yellow"), ("triangle", "red"), ("cross", "purple")]
    return [Case(f"a {size} {color} {shape} with {texture} on a {bg} background", texture, ("texture", texture),
                 {"kind": "object", "color": color, "shape": shape, "background": bg})
            for (shape, color), size, bg in zip(pairs, ("small", "large", "large", "small"),
                                                ("black", "gray", "white", "pink"))
            for texture in ("stripes", "dots")]


def _new_accessory_cases() -> list[Case]:
    """Faces on a named background (the effect test's prompts name none); kept: a face, the expression, the
    background."""
    return [Case(f"a photo of a {e} person wearing {a} on a {bg} background", a.split()[-1],
                 ("accessory", a.split()[-1]), {"kind": "face", "expression": e, "face_background": bg})
            for e, a, bg in (("neutral", "glasses", "green"), ("smiling", "a hat", "blue"),
                             ("surprised", "glasses", "white"), ("smiling", "glasses", "gray"),
                             ("neutral", "a hat", "white"))]


CASES = {"texture": _texture_cases(), "accessory": _accessory_cases()}
NEW_CASES = {"texture": _new_texture_cases(), "accessory": _new_accessory_cases()}
ARMS = {  # arm -> generate() keyword arguments (edits as their plain description); "{words}" is the case's words
    "none": {},
    "negative_prompt": {"negative_prompt": "{words}"},
    "swr": {"edits": {"suppress_eot": {"words": "{words}", "suppress_mode": "swr"}}},
    "swr+ito": {"edits": {"suppress_eot": {"words": "{words}", "suppress_mode": "swr+ito"}}},
}


def _fill(kwargs, words: str):
    """`kwargs` with "{words}" filled in, in nested descriptions too."""
    if isinstance(kwargs, dict):
        return {k: _fill(v, words) for k, v in kwargs.items()}
    return kwargs.replace("{words}", words) if isinstance(kwargs, str) else kwargs


def measure(pipe, judge, cases: list[Case], arms: dict[str, dict], seeds: int | list[int] = 12, steps: int = 25,
            guidance: float = 5.0) -> dict[str, dict[str, float]]:
    """arm -> {"suppressed": detection rate of the suppressed attribute, "kept:<head>": rate of each kept
    attribute, "kept": rate of images with every kept attribute}, pooled over `cases` (seeds 0..seeds-1, or the
    listed seeds)."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    results = {}
    for arm, kwargs in arms.items():
        gone, kept_all, kept = [], [], {}
        for case in cases:
            images = pipe.generate(case.prompt, seed=seeds, steps=steps, guidance_scale=guidance,
                                   **_fill(kwargs, case.words))
            for pred in judge.predict([g.image for g in images]):
                gone.append(pred.get(case.gone[0]) == case.gone[1])
                hits = {head: pred.get(head) == value for head, value in case.keep.items()}
                kept_all.append(all(hits.values()))
                for head, hit in hits.items():
                    kept.setdefault(head, []).append(hit)
        results[arm] = {"suppressed": sum(gone) / len(gone), "kept": sum(kept_all) / len(kept_all)}
        results[arm] |= {f"kept:{head}": sum(v) / len(v) for head, v in kept.items()}
    return results


def measure_sets(pipe, judge, cases: list[Case], arms: dict[str, dict], sets: int = 5, per_set: int = 8,
                 first_seed: int = 5000, progress: bool = False) -> list[dict]:
    """Rows {"arm", "seed": set index, rates...} for `stats.effects`: set k draws every case with sampling seeds
    first_seed + k * per_set + (0..per_set-1), the same in every arm (so arms are paired by set)."""
    from personalize.eval.effects import grid

    def one_set(k):
        start = first_seed + k * per_set
        return measure(pipe, judge, cases, arms, list(range(start, start + per_set)))
    return grid(list(range(sets)), one_set, progress, desc="seed sets")
