"""Measuring a personalization regularizer's effect in the toy world (ClassDiffusion, SuDe).

The subject is the quickstart's: a yellow circle with an outline, a detail its captions never name.
Its example images are all large, plain circles; the composition prompts ask for what they never show (small,
stripes, dots) on fixed seeds, and the judge scores each image:

  - composition: the fraction of asked attributes (size, texture, background) the image has;
  - fidelity:    cosine similarity of the judge's embedding to the mean embedding of the subject images
                 (it also drops when an image follows the prompt: small or striped is further from the
                 large plain examples), and `look`, the fraction of images that keep the subject's own
                 attributes (circle, yellow, outline); `category`, the fraction that are circles.

The second subject (`subject="face"`) is one photo of a held-out face identity (never trained on); its
compositions ask for expressions, accessories and backgrounds, and fidelity is the cosine of the judge's
identity embedding (face shape, skin, hair) to the photo's. Scores are Judge B's (the evaluator).

`compare(arms, ...)` trains each arm (a `method:` section) on the same images and seeds and returns the scores.
"""

from __future__ import annotations

import random
from pathlib import Path

from personalize.toyworld import world as w

SUBJECT = w.Obj("circle", "yellow", "large", "plain", outline=True)
EXAMPLE_BACKGROUNDS = ["white", "gray", "pink", "black", "white"]
COMPOSITIONS = {  # prompt with {} for the trigger -> attributes the judge should see
    "a small {} circle on a black background": {"size": "small", "background": "black"},
    "a small {} circle with stripes on a pink background": {"size": "small", "texture": "stripes",
                                                            "background": "pink"},
    "a large {} circle with dots on a gray background": {"texture": "dots", "background": "gray"},
    "a large {} circle with stripes on a white background": {"texture": "stripes", "background": "white"},
    "a small {} circle with dots on a white background": {"size": "small", "texture": "dots",
                                                          "background": "white"},
}


def write_subject(folder: str | Path, n: int = 5, trigger: str = "sks", seed: int = 0, captions: bool = True) -> Path:
    """n renders of the subject, one per background, captioned 'a large <trigger> circle on a <bg> background'
    (`captions=False`: no caption files, so data.instance_prompt applies)."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, bg in enumerate((EXAMPLE_BACKGROUNDS * 2)[:n]):
        scene = w.Scene("object", bg, [SUBJECT], jitter=(rng.randint(-2, 2), rng.randint(-2, 2)))
        w.render(scene).save(folder / f"{i}.png")
        (folder / f"{i}.txt").unlink(missing_ok=True)
        if captions:
            (folder / f"{i}.txt").write_text(f"a large {trigger} circle on a {bg} background\n")
    return folder


FACE_IDENTITY = sorted(w.HELD_OUT_IDENTITIES)[3]
FACE_COMPOSITIONS = {
    "a photo of a smiling {} person on a green background": {"expression": "smiling", "face_background": "green"},
    "a photo of a surprised {} person on a white background": {"expression": "surprised",
                                                               "face_background": "white"},
    "a photo of a neutral {} person wearing a hat on a gray background": {"accessory": "hat",
                                                                          "face_background": "gray"},
    "a photo of a smiling {} person wearing glasses on a blue background": {"expression": "smiling",
                                                                            "accessory": "glasses"},
}


def write_face(folder: str | Path) -> Path:
    """One photo of the held-out identity FACE_IDENTITY, neutral, on blue, without caption files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0.txt").unlink(missing_ok=True)
    w.render(w.Scene("face", "blue", identity=FACE_IDENTITY)).save(folder / "0.png")
    return folder


def face_scores(judge, images, expected: list[dict], subject_images) -> dict[str, float]:
    preds = judge.predict(images)
    asked = [(p.get(k) == v) for p, e in zip(preds, expected) for k, v in e.items()]
    ref = judge.identity_embedding(subject_images).mean(0)
    return {"composition": sum(asked) / len(asked),
            "identity": float((judge.identity_embedding(images) @ (ref / ref.norm())).mean()),
            "category": sum(p["kind"] == "face" for p in preds) / len(preds)}


def scores(judge, images, expected: list[dict], subject_images) -> dict[str, float]:
    """Composition and fidelity of `images` (one expected-attribute dict per image)."""
    preds = judge.predict(images)
    asked = [(p.get(k) == v) for p, e in zip(preds, expected) for k, v in e.items()]
    center = judge.embed(subject_images).mean(0)
    center = center / center.norm()
    look = [p.get("shape") == "circle" and p.get("color") == "yellow" and p.get("outline") == "yes" for p in preds]
    return {"composition": sum(asked) / len(asked),
            "fidelity": float((judge.embed(images) @ center).mean()),
            "look": sum(look) / len(look),
            "category": sum(p.get("shape") == "circle" for p in preds) / len(preds)}


def evaluate(pipe, judge, trigger: str, subject_images, seeds: int = 8, steps: int = 25,
             guidance: float = 5.0, subject: str = "circle") -> dict[str, float]:
    compositions, scorer = (FACE_COMPOSITIONS, face_scores) if subject == "face" else (COMPOSITIONS, scores)
    prompts = [p.replace("{}", trigger) for p in compositions]
    images = [g.image for g in pipe.generate(prompts, num_images=seeds, seed=1000, steps=steps,
                                             guidance_scale=guidance)]
    expected = [e for e in compositions.values() for _ in range(seeds)]
    return scorer(judge, images, expected, subject_images)


def compare(arms: dict[str, dict], out: str | Path, train: dict, n_images: int = 5, seeds: int = 8,
            trigger: str = "sks", instance_prompt: str | None = None,
            data: dict | None = None, subject: str = "circle") -> dict[str, dict[str, float]]:
    """Train every arm (name -> `method:` section) on the same subject images; score each artifact.
    `instance_prompt` (e.g. 'a {} circle') replaces the images' captions, as DreamBooth's one prompt does;
    `data` adds other data keys (class_prompt, num_class_images for prior preservation)."""
    from PIL import Image

    from personalize.config import load_config
    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge
    from personalize.trainer import train as run_training

    out = Path(out)
    folder = (write_face(out / "subject") if subject == "face"
              else write_subject(out / "subject", n_images, trigger, captions=instance_prompt is None))
    subject_images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
    judge, results = Judge.load("b"), {}  # the evaluator; no method here trains against it
    for name, method in arms.items():
        data_section = {"instance_data_dir": str(folder), "instance_prompt": instance_prompt,
                        "class_data_dir": str(out / "class")} | (data or {})
        cfg = load_config([], {"data": data_section,
                               "train": {"output_dir": str(out / name), "report_to": "none",
                                         "checkpointing_steps": 100_000} | train,
                               "method": method})
        artifact = run_training(cfg).artifact
        pipe = load_pipeline("toyworld", device="cpu")
        pipe.add_artifact(str(artifact))
        results[name] = evaluate(pipe, judge, trigger, subject_images, seeds, subject=subject)
    return results


def arms_from_config(path: str | Path) -> tuple[dict[str, dict], dict, str | None]:
    """A regularizer's config -> arms {base, regularized} (the same base options), train section, prompt.
    The base arm is the config's `method.base` section (`{name: <base>, <its options>}`) trained alone."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text())
    method = raw["method"]
    base = method["base"] if isinstance(method["base"], dict) else {"name": method["base"]}
    return {"base": dict(base), "regularized": method}, raw.get("train", {}), raw.get("data", {}).get("instance_prompt")
