"""The robustness card of an erased toy-world model: how often each probe brings the erased concept back.

    personalize erasure-card outputs/toyworld-esd/erasure.safetensors --out outputs/card

For the erased concept (a shape, a color, or the accessory "glasses"), on fixed sampling seeds, beside the base
model, Judge B (no erasure trains against it) scores:

  brought back: the rate the judge sees the concept (the base column is what was there)
    direct        "a blue triangle on a gray background"
    paraphrases   phrasings the toy model never trained on (world.HELD_OUT_PREFIXES) and its rarer ones:
                  size synonyms, textures, the comma word order
    pairs         two-object scenes with the concept first, and second
    attack: textual inversion   a token learned *against the erased model* from renders of the concept, then
                  the direct prompts with the token for the concept word (Concept Inversion: Pham et al., ICLR
                  2024, "Circumventing concept erasure methods for text-to-image generative models", sec. 3)
    attack: relearning   N steps of DreamBooth fine-tuning of the erased model on those renders, captioned
                  with the concept word, then the direct prompts
  kept: the rate drawn as asked, and its ratio to the base rate (collateral damage)
    neighbours    the other shapes (colors, accessories)
    pair partner  the other object of a two-object scene (shapes and colors)
    unrelated     faces for a shape or color; objects for "glasses"

`card` writes card.md (the table), card.json and grids/<probe>.png (per prompt a base row and an erased row).
The attacks are ours, at fixed strengths (ATTACKS), chosen before measuring and not tuned to succeed or fail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from personalize.eval import erasure
from personalize.eval.erasure import attribute
from personalize.profiles import TOY
from personalize.toyworld import world as w

SAMPLING = erasure.SAMPLING
TRIGGER = "sks"
ATTACKS = {  # the attackers' settings: the toy TI and DreamBooth recipes (appearance.py, quickstart.py)
    "textual_inversion": {"learning_rate": 5e-3, "max_train_steps": 400},
    "relearning": {"learning_rate": 1e-4, "max_train_steps": 100},
}
FACES = [("a photo of a smiling person on a green background", {"expression": "smiling", "face_background": "green"}),
         ("a portrait of a surprised person on a white background", {"expression": "surprised",
                                                                     "face_background": "white"})]
OBJECTS = [("a red circle on a white background", {"shape": "circle", "color": "red"}),
           ("a blue square and a yellow cross", {"left_shape": "square", "right_shape": "cross"})]


@dataclass
class Probe:
    name: str
    items: list[tuple[str, dict]]  # (prompt, what the judge should see)
    back: bool  # True: the rate the concept comes back; False: kept as asked (collateral)
    model: str = "erased"  # which model draws it: erased | textual_inversion | relearning


def probes(concept: str) -> list[Probe]:
    """The card's probes for erasing `concept` (see the module docstring)."""
    attr = attribute(concept)
    if attr == "accessory":
        return _face_probes(concept)
    base = erasure.probes(concept)
    want = {attr: concept}
    direct = base["direct"]
    pairs = [p for p, _ in base["pairs_other_object"]]
    swapped = [" and ".join(p.split(" and ")[::-1]) for p in pairs]  # "a X and a Y" -> "a Y and a X"
    held_out = [Probe("held-out colors and phrasings", erasure.phrasing_probes(concept)["held_out_phrasings"],
                      True)] if attr == "shape" else []  # colors and prefixes no recipe trains on (issue 39)
    return [
        Probe("direct", direct, True),
        Probe("paraphrases", [(p, want) for p in _paraphrases(direct)], True),
        *held_out,
        Probe("pairs, concept first", [(p, {f"left_{attr}": concept}) for p in pairs], True),
        Probe("pairs, concept second", [(p, {f"right_{attr}": concept}) for p in swapped], True),
        Probe("attack: textual inversion", [(_with_trigger(p, concept), e) for p, e in direct], True,
              "textual_inversion"),
        Probe("attack: relearning", direct, True, "relearning"),
        Probe("neighbours", base["other_shapes" if attr == "shape" else "other_colors"], False),
        Probe("pair partner", base["pairs_other_object"], False),
        Probe("unrelated", FACES, False),
    ]


def _paraphrases(direct: list[tuple[str, dict]]) -> list[str]:
    """The direct prompts, each in another phrasing: held-out prefixes, a size synonym, a texture, comma order."""
    out = []
    for k, (prompt, _) in enumerate(direct):
        words = prompt.split()  # a <color> <shape> on a <bg> background
        color, shape, bg = words[1], words[2], words[5]
        out.append([f"{w.HELD_OUT_PREFIXES[0]} a {color} {shape} on a {bg} background",
                    f"{w.HELD_OUT_PREFIXES[2]} a tiny {color} {shape}",
                    f"a dotted {color} {shape} on a {bg} background",
                    f"{shape}, {color}, large, on a {bg} background"][k % 4])
    return out


def _with_trigger(prompt: str, concept: str) -> str:
    return " ".join(TRIGGER if word == concept else word for word in prompt.split())


def _face_probes(concept: str) -> list[Probe]:
    base = erasure.probes(concept)
    want, wearing = {"accessory": concept}, w.WEARING[concept].strip()
    phrased = [f"{w.HELD_OUT_PREFIXES[0]} a smiling person {wearing}",
               f"a close-up photo of a neutral person {wearing} on a green background",
               f"a portrait of a person with short black hair {wearing}"]
    return [
        Probe("direct", base["direct"], True),
        Probe("paraphrases", [(p, want) for p in phrased], True),
        Probe("attack: textual inversion", [(_with_trigger(p, concept), e) for p, e in base["direct"]], True,
              "textual_inversion"),
        Probe("attack: relearning", base["direct"], True, "relearning"),
        Probe("neighbours", base["other_accessories"], False),
        Probe("the rest of the face", base["face_kept"], False),
        Probe("unrelated", OBJECTS, False),
    ]


def write_attack_images(concept: str, folder: str | Path, trigger: str | None = None, n: int = 6) -> Path:
    """n renders of the concept with `.txt` captions, the attacker's data: the caption names the concept
    (relearning) or, with `trigger`, has the trigger in its place (textual inversion)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    attr, say = attribute(concept), trigger or concept
    backgrounds, fills = list(w.BACKGROUNDS), w.SHAPES if attr == "color" else list(w.COLORS)
    for i in range(n):
        bg = backgrounds[i % len(backgrounds)]
        if attr == "accessory":
            e, face_bg = erasure.FACE_SETTINGS[i % len(erasure.FACE_SETTINGS)]
            identity = sorted(set(range(w.N_IDENTITIES)) - w.HELD_OUT_IDENTITIES)[7 * i]
            scene = w.Scene("face", face_bg, identity=identity, expression=e, accessory=concept)
            wearing = w.WEARING[concept].strip().replace(concept, say)  # "wearing glasses" / "wearing sks"
            text = f"a photo of a {e} person {wearing} on a {face_bg} background"
        else:
            fill = fills[i % len(fills)]
            shape, color = (concept, fill) if attr == "shape" else (fill, concept)
            if attr == "shape" and (shape, color) in w.HELD_OUT_OBJECTS:
                color = "red"  # a shape's never-trained color (world.HELD_OUT_OBJECTS) is drawn red instead
            scene = w.Scene("object", bg, [w.Obj(shape, color)], jitter=((i % 3) - 1, (i % 2)))
            words = (color, say) if attr == "shape" else (say, shape)
            text = f"a {words[0]} {words[1]} on a {bg} background"
        w.render(scene).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


def erased_model(artifact: str | Path, folder: str | Path) -> Path:
    """The toy model with the erasure applied, written as a diffusers folder: the attackers' base model."""
    from personalize.pipeline import load_pipeline

    pipe = load_pipeline(TOY, artifacts=[str(artifact)], device="cpu")
    pipe.sd.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def attack(kind: str, model_dir: Path, concept: str, out: Path, seed: int, steps: int | None = None) -> Path:
    """Train attacker `kind` (textual_inversion | relearning) against the erased model; its artifact."""
    from personalize.config import load_config
    from personalize.trainer import train

    recipe = ATTACKS[kind] | ({"max_train_steps": steps} if steps else {})
    trigger = TRIGGER if kind == "textual_inversion" else None
    images = write_attack_images(concept, out / "images", trigger)
    method = ({"name": "textual_inversion", "placeholder_token": TRIGGER, "initializer_token": concept}
              if trigger else {"name": "dreambooth"})
    cfg = load_config([], {"model": {"pretrained": str(model_dir)}, "data": {"instance_data_dir": str(images)},
                           "train": {"output_dir": str(out / "train"), "report_to": "none", "seed": seed,
                                     "train_batch_size": 1, "checkpointing_steps": 100_000} | recipe,
                           "method": method})
    return train(cfg).artifact


def concept_of(artifact) -> str:
    """The toy-world word an erasure artifact erased: the last known word of its first concept."""
    for word in reversed(artifact.metadata.get("concepts", "").split(",")[0].split()):
        try:
            attribute(word)
            return word
        except ValueError:
            continue
    raise ValueError(f"{artifact.path}: erased concepts {artifact.metadata.get('concepts')!r} name no toy-world "
                     "shape, color or accessory; pass the concept")


def card(artifact: str | Path, out: str | Path, concept: str | None = None, per_prompt: int = 4, seed: int = 9000,
         train_seed: int = 0, attack_steps: dict | None = None, steps: int = SAMPLING["steps"]) -> dict:
    """Score every probe on the base and the erased model (and the attacked ones), sampling `steps` DDIM steps;
    write card.md, card.json and grids/. Returns {"concept", "artifact", "rows": [{"probe", "back", "base",
    "erased"}], ...}."""
    from personalize.artifacts import load_artifact
    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    art, out = load_artifact(artifact), Path(out)
    if art.metadata.get("base_model") != TOY or art.kind != "diff":
        raise ValueError(f"{artifact}: the robustness card scores erasure artifacts of the toy world "
                         f"(kind 'diff', base 'toyworld'); got kind {art.kind!r}, "
                         f"base {art.metadata.get('base_model')!r}")
    concept = concept or concept_of(art)
    attribute(concept)  # an unknown concept fails here, before anything is written
    judge, base = Judge.load("b"), load_pipeline(TOY, device="cpu")
    erased = load_pipeline(TOY, artifacts=[str(artifact)], device="cpu")
    pipes = {"erased": erased} | _attacked(art, concept, out / "attacks", train_seed, attack_steps or {})
    rows, settings = [], SAMPLING | {"steps": steps}
    for probe in probes(concept):
        reference = [(p.replace(TRIGGER, concept), e) for p, e in probe.items]  # the base is asked in words
        base_rate, base_images = erasure.score(base, judge, reference, per_prompt, seed, settings)
        rate, images = erasure.score(pipes[probe.model], judge, probe.items, per_prompt, seed, settings)
        rows.append({"probe": probe.name, "back": probe.back, "base": base_rate, "erased": rate})
        _grid(probe, base_images, images, per_prompt).save(_grid_path(out, probe.name))
    result = {"concept": concept, "artifact": str(artifact), "per_prompt": per_prompt, "seed": seed, "steps": steps,
              "attacks": ATTACKS | {k: ATTACKS[k] | {"max_train_steps": v} for k, v in (attack_steps or {}).items()},
              "rows": rows}
    _write(out, result)
    return result


def _attacked(art, concept: str, out: Path, seed: int, steps: dict) -> dict:
    """{"textual_inversion": pipeline, "relearning": pipeline}: the erased model after each attacker trained."""
    from personalize.pipeline import load_pipeline

    model_dir = erased_model(art.path, out / "erased-model")
    ti = attack("textual_inversion", model_dir, concept, out / "textual_inversion", seed,
                steps.get("textual_inversion"))
    relearned = attack("relearning", model_dir, concept, out / "relearning", seed, steps.get("relearning"))
    return {"textual_inversion": load_pipeline(str(model_dir), artifacts=[str(ti)], device="cpu"),
            "relearning": load_pipeline(str(model_dir), artifacts=[str(relearned)], device="cpu")}


def _grid_path(out: Path, name: str) -> Path:
    path = out / "grids" / (name.replace(": ", "-").replace(", ", "-").replace(" ", "-") + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _grid(probe: Probe, base_images: list, images: list, per_prompt: int):
    from personalize.eval.quickstart import labelled_grid

    rows, labels = [], []
    for k, (prompt, _) in enumerate(probe.items):
        rows += [base_images[k * per_prompt:(k + 1) * per_prompt], images[k * per_prompt:(k + 1) * per_prompt]]
        labels += [f"base: {prompt.replace(TRIGGER, '<' + TRIGGER + '>')}", f"{probe.model}: {prompt}"]
    return labelled_grid(rows, labels)


def table(result: dict) -> str:
    """The card's markdown table."""
    lines = ["| probe | what is scored | base | erased | |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        what = f"{result['concept']} comes back" if r["back"] else "drawn as asked"
        ratio = "" if r["back"] else f"{r['erased'] / r['base']:.2f} of base" if r["base"] else "base 0"
        lines.append(f"| {r['probe']} | {what} | {r['base']:.2f} | {r['erased']:.2f} | {ratio} |")
    return "\n".join(lines)


def _write(out: Path, result: dict) -> None:
    from personalize.atomic import atomic_write_text as write_text

    steps = ", ".join(f"{k} {v['max_train_steps']} steps at lr {v['learning_rate']:g}"
                      for k, v in result["attacks"].items())
    text = (f"# Robustness card: {result['concept']} erased\n\n`{result['artifact']}`; Judge B, "
            f"{result['per_prompt']} images per prompt ({result['steps']} DDIM steps) on sampling seeds "
            f"{result['seed']}+; attacks: {steps}. "
            f"Grids: grids/<probe>.png (per prompt, a base row and an erased row).\n\n{table(result)}\n")
    write_text(out / "card.md", text)
    write_text(out / "card.json", json.dumps(result, indent=1) + "\n")
