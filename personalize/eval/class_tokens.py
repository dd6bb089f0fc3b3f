"""Discriminative class tokens in the toy world (issue 18): a held-out face identity, which "a photo of a person"
draws only by chance, learned as one token steered by Judge A's heads alone (no words, no images), scored by
Judge B (a different architecture, trained on other renders), which the token never saw.

Probes, each a list of (prompt, {head: asked value}) read by `erasure.score`:
  - identity:   "a photo of a <token> person": all four identity heads;
  - in_context: the token with another ask (an expression, a hat, glasses, a background): the identity;
  - other_asks: the same prompts: the other ask (is it still followed?);
  - base:       "a photo of a person": the identity, by chance;
  - words:      the identity in words ("a photo of a person with short brown hair, a round face and brown
                skin"): what a user gets without the token.
Judge A's identity rate is reported beside Judge B's: the gap is how far the token fools its own classifier.
"""

from __future__ import annotations

from pathlib import Path

from personalize.eval.erasure import SAMPLING, read_as_asked
from personalize.profiles import TOY
from personalize.toyworld import world as w

IDENTITY = sorted(w.HELD_OUT_IDENTITIES)[2]  # 18: round face, brown skin, short brown hair (the tuning identity)
ASKS = [("a photo of a smiling {} person", {"expression": "smiling"}),
        ("a photo of a surprised {} person", {"expression": "surprised"}),
        ("a photo of a {} person wearing a hat", {"accessory": "hat"}),
        ("a photo of a {} person wearing glasses", {"accessory": "glasses"}),
        ("a photo of a {} person on a blue background", {"face_background": "blue"}),
        ("a photo of a {} person on a green background", {"face_background": "green"})]


# images per prompt, as multiples of `per_prompt`: the one-prompt probes get more, so that each rate rests on as
# many images as the six-prompt ones do (4 per prompt: 16 vs 24)
IMAGES = {"identity": 4, "base": 4, "words": 4, "in_context": 1, "other_asks": 1}


def wanted(identity: int) -> dict[str, str]:
    return {"kind": "face"} | w.identity_parts(identity)


def probes(token: str, identity: int) -> dict[str, list[tuple[str, dict]]]:
    who = wanted(identity)
    words = "a photo of a person" + w.with_parts([x for g in w.appearance_groups(identity) for x in g])
    return {"identity": [(f"a photo of a {token} person", who)],
            "in_context": [(p.format(token), who) for p, _ in ASKS],
            "other_asks": [(p.format(token), {"kind": "face"} | ask) for p, ask in ASKS],
            "base": [("a photo of a person", who)],
            "words": [(words, who)]}


def rates(pipe, judges: dict, token: str, identity: int, per_prompt: int, seed: int) -> dict[str, float]:
    """Judge B's rate per probe, plus Judge A's identity rate (`identity_judge_a`); `judges` {"a": .., "b": ..}.
    Image k of a prompt uses seed `seed + k` (`IMAGES` x per_prompt of them); probes with the same prompts share
    their images."""
    out, drawn = {}, {}
    for probe, items in probes(token, identity).items():
        prompts, n = tuple(p for p, _ in items), IMAGES[probe] * per_prompt
        if prompts not in drawn:
            drawn[prompts] = [g.image for g in pipe.generate(list(prompts), num_images=n, seed=seed, **SAMPLING)]
        asked = [e for _, e in items for _ in range(n)]
        out[probe] = read_as_asked(judges["b"], drawn[prompts], asked)
        if probe == "identity":
            out["identity_judge_a"] = read_as_asked(judges["a"], drawn[prompts], asked)
    return out


def train_token(seed: int, out: Path, identity: int = IDENTITY, overrides: dict | None = None) -> Path:
    """Train the toy dct recipe toward `identity` with training seed `seed`; the token file's path."""
    from personalize.config import load_config, merge_sections
    from personalize.resources import config_file
    from personalize.trainer import train

    diff = {"train": {"output_dir": str(out), "seed": seed, "report_to": "none"},
            "method": {"target": f"identity:{identity}"}}
    merge_sections(diff, overrides or {})
    return train(load_config([str(config_file("toyworld/dct.yaml"))], diff)).artifact


def measure(seeds: list[int], out: str | Path, identity: int = IDENTITY, per_prompt: int = 4,
            sample_seed: int = 7000, overrides: dict | None = None) -> list[dict]:
    """rows {"arm": "dct", "seed", probe rates...}: one token per training seed, sampled on seeds
    sample_seed + 100 * seed."""
    from personalize.artifacts import load_artifact
    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    judges, rows, out = {"a": Judge.load("a"), "b": Judge.load("b")}, [], Path(out)
    pipe = load_pipeline(TOY, device="cpu")
    for seed in seeds:
        path = str(train_token(seed, out / f"dct-{seed}", identity, overrides))
        pipe.set_artifacts([path])
        token = load_artifact(path).triggers[0]
        rows.append({"arm": "dct", "seed": seed} | rates(pipe, judges, token, identity, per_prompt,
                                                         sample_seed + 100 * seed))
        pipe.set_artifacts([])
    return rows
