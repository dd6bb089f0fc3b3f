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

from personalize.profiles import TOY
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


def _asked(preds, expected: list[dict]) -> dict[str, float]:
    """composition (the fraction of asked attributes the judge sees) and one `composition:<attribute>` each."""
    hits: dict[str, list[bool]] = {}
    for p, e in zip(preds, expected):
        for k, v in e.items():
            hits.setdefault(k, []).append(p.get(k) == v)
    flat = [h for v in hits.values() for h in v]
    return {"composition": sum(flat) / len(flat)} | {f"composition:{k}": sum(v) / len(v) for k, v in hits.items()}


def face_scores(judge, images, expected: list[dict], subject_images) -> dict[str, float]:
    preds = judge.predict(images)
    ref = judge.identity_embedding(subject_images).mean(0)
    return {"identity": float((judge.identity_embedding(images) @ (ref / ref.norm())).mean()),
            "category": sum(p["kind"] == "face" for p in preds) / len(preds)} | _asked(preds, expected)


def scores(judge, images, expected: list[dict], subject_images) -> dict[str, float]:
    """Composition (overall and per asked attribute) and fidelity of `images` (one expected dict per image)."""
    preds = judge.predict(images)
    center = judge.embed(subject_images).mean(0)
    center = center / center.norm()
    look = [p.get("shape") == "circle" and p.get("color") == "yellow" and p.get("outline") == "yes" for p in preds]
    return {"fidelity": float((judge.embed(images) @ center).mean()),
            "look": sum(look) / len(look),
            "category": sum(p.get("shape") == "circle" for p in preds) / len(preds)} | _asked(preds, expected)


def evaluate(pipe, judge, trigger: str, subject_images, seeds: int = 8, steps: int = 25,
             guidance: float = 5.0, subject: str = "circle", sample_seed: int = 1000) -> dict[str, float]:
    """Scores of the composition prompts, image k of each prompt drawn with seed sample_seed + k."""
    compositions, scorer = (FACE_COMPOSITIONS, face_scores) if subject == "face" else (COMPOSITIONS, scores)
    prompts = [p.replace("{}", trigger) for p in compositions]
    images = [g.image for g in pipe.generate(prompts, num_images=seeds, seed=sample_seed, steps=steps,
                                             guidance_scale=guidance)]
    expected = [e for e in compositions.values() for _ in range(seeds)]
    return scorer(judge, images, expected, subject_images)


def compare(arms: dict[str, dict], out: str | Path, train: dict, n_images: int = 5, seeds: int = 8,
            trigger: str = "sks", instance_prompt: str | None = None, data: dict | None = None,
            subject: str = "circle", train_seed: int | None = None, sample_seed: int = 1000,
            judge=None) -> dict[str, dict[str, float]]:
    """Train every arm (name -> `method:` section) on the same subject images and the same training seed
    (`train_seed`, else train.seed); score each artifact on the same sampling seeds.
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
    judge, results = judge or Judge.load("b"), {}  # the evaluator; no method here trains against it
    train = train | ({"seed": train_seed} if train_seed is not None else {})
    for name, method in arms.items():
        data_section = {"instance_data_dir": str(folder), "instance_prompt": instance_prompt,
                        "class_data_dir": str(out / "class")} | (data or {})
        cfg = load_config([], {"data": data_section,
                               "train": {"output_dir": str(out / name), "report_to": "none",
                                         "checkpointing_steps": 100_000} | train,
                               "method": method})
        artifact = run_training(cfg).artifact
        pipe = load_pipeline(TOY, device="cpu")
        pipe.add_artifact(str(artifact))
        results[name] = evaluate(pipe, judge, trigger, subject_images, seeds, subject=subject,
                                 sample_seed=sample_seed) | mechanism_scores(pipe, subject, trigger, subject_images)
    return results


def mechanism_scores(pipe, subject: str, trigger: str, subject_images) -> dict[str, float]:
    """What the regularizers act on, from the tuned model itself (personalize.eval.mechanism): the text
    drift of the personalized phrase from its class (ClassDiffusion's SPL target) and the implicit classifier's
    category margin of the subject (SuDe's)."""
    from personalize.eval import mechanism

    phrase, class_phrase = ("a photo of a {} person", "a photo of a person") if subject == "face" else \
        ("a {} circle", "a circle")
    phrase = phrase.replace("{}", trigger)
    return {"text_drift": mechanism.text_drift(pipe.sd, phrase, class_phrase),
            "category_margin": mechanism.category_margin(pipe.sd, subject_images, phrase, class_phrase)}


def arms_from_config(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, dict], dict, str | None]:
    """A regularizer's config -> arms {base, regularized} (the same base options), train section, prompt.
    The base arm is the config's `method.base` section (`{name: <base>, <its options>}`) trained alone.
    `overrides` (`--train.learning_rate=2e-3`, `--method.base.train_kv=false`) edit the YAML first."""
    import yaml

    from personalize.config import ConfigError, load_config, parse_overrides

    raw = yaml.safe_load(Path(path).read_text())
    _deep_update(raw, parse_overrides(list(overrides or [])))
    method = raw.get("method") or {}
    if "base" not in method:
        raise ConfigError(f"{path}: an effect needs a method with a base to compare against (method.base), "
                          f"got method {method.get('name')!r} without one")
    base = method["base"] if isinstance(method["base"], dict) else {"name": method["base"]}
    load_config([], {"train": raw.get("train", {}), "data": raw.get("data", {})})  # unknown keys fail here
    return {"base": dict(base), "regularized": method}, raw.get("train", {}), raw.get("data", {}).get("instance_prompt")


def _deep_update(into: dict, diff: dict) -> None:
    for k, v in diff.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = v


# --- the multi-seed harness: arms x training seeds x sampling seeds -> paired effects with intervals ---------

def sample_seed_for(train_seed: int) -> int:
    """The first sampling seed of a training seed's evaluation: each training seed draws its own images."""
    return 1000 + 100 * train_seed


def subject_for(arms: dict[str, dict]) -> str:
    """The toy subject a config personalizes: the one-shot face for the category 'person', else the circle."""
    return "face" if arms["regularized"].get("class_word") == "person" else "circle"


def grid(seeds: list[int], run_seed, progress: bool = True, desc: str = "seeds") -> list[dict]:
    """rows {"arm", "seed", metrics...} from `run_seed(seed) -> {arm: metrics}`, one call per seed."""
    from tqdm.auto import tqdm

    rows = []
    for seed in tqdm(seeds, desc=desc, disable=not progress):
        rows += [{"arm": arm, "seed": seed} | metrics for arm, metrics in run_seed(seed).items()]
    return rows


def measure(config: str | Path, seeds: list[int], out: str | Path, sample_seeds: int = 8,
            overrides: list[str] | None = None, subject: str | None = None, n_images: int | None = None,
            progress: bool = True) -> list[dict]:
    """Both arms of a regularizer's config (base, regularized), trained on each training seed in `seeds` and
    scored on `sample_seeds` images per prompt (seeds sample_seed_for(seed) + k) by Judge B."""
    from personalize.toyworld.judge import Judge

    arms, train, prompt = arms_from_config(config, overrides)
    train = {k: v for k, v in train.items() if k not in ("output_dir", "validation_prompt")}
    subject = subject or subject_for(arms)
    n_images = n_images or (1 if subject == "face" else 5)
    judge = Judge.load("b")
    return grid(seeds, lambda s: compare(arms, Path(out) / f"seed{s}", train, n_images, sample_seeds,
                                         instance_prompt=prompt, subject=subject, train_seed=s,
                                         sample_seed=sample_seed_for(s), judge=judge), progress)


def report(rows: list[dict], out: str | Path, reference: str = "base", title: str = "effect",
           notes: str = "", plot: bool = True) -> str:
    """Write rows.json, effects.md (a table per treated arm) and effects.png (per-seed deltas) under `out`;
    returns the markdown."""
    import json

    from personalize.atomic import atomic_write_text
    from personalize.eval import stats

    out = Path(out)
    text = f"## {title}\n\n{notes}\n\n" + stats.markdown(rows, reference)
    atomic_write_text(out / "rows.json", json.dumps(rows, indent=1))
    atomic_write_text(out / "effects.md", text)
    if plot:
        stats.plot(rows, reference, out / "effects.png")
    return text


def main(argv: list[str] | None = None) -> int:
    """python -m personalize.eval.effects CONFIG --seeds 5 [--first-seed 1] [--sample-seeds 8] [--out DIR]
    [--subject circle|face] [--images N] [--no-plot] [-- --train.learning_rate=2e-3 ...]"""
    import argparse
    import sys

    from personalize.cpu import TOY_THREADS, configure_threads
    from personalize.errors import PersonalizeError

    configure_threads(TOY_THREADS)
    ap = argparse.ArgumentParser(prog="python -m personalize.eval.effects",
                                 description="Measure a regularizer's toy-world effect over training seeds.")
    ap.add_argument("config", help="a config with method.base, e.g. configs/toyworld/classdiffusion.yaml")
    ap.add_argument("--seeds", type=int, default=5, help="number of training seeds (>= 2; 5 to report)")
    ap.add_argument("--first-seed", type=int, default=1, help="training seeds first..first+seeds-1")
    ap.add_argument("--sample-seeds", type=int, default=8, help="images per composition prompt")
    ap.add_argument("--subject", choices=["circle", "face"], default=None)
    ap.add_argument("--images", type=int, default=None, help="subject images (default: circle 5, face 1)")
    ap.add_argument("--out", default=None, help="default outputs/effects/<config name>")
    ap.add_argument("--no-plot", action="store_true", help="skip effects.png (needs matplotlib)")
    ap.epilog = "after --: config overrides applied to both arms, e.g. -- --train.learning_rate=3e-4"
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, args.overrides = ap.parse_args(argv[:split]), argv[split + 1:]
    try:
        if args.seeds < 2:
            raise PersonalizeError(f"--seeds must be at least 2 for an interval, got {args.seeds}")
        if not Path(args.config).is_file():
            raise PersonalizeError(f"config {args.config!r} is not a file")
        out = Path(args.out or Path("outputs") / "effects" / Path(args.config).stem)
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        rows = measure(args.config, seeds, out, args.sample_seeds, args.overrides, args.subject, args.images)
        notes = (f"config `{args.config}` {' '.join(args.overrides)}; training seeds {seeds[0]}-{seeds[-1]}; "
                 f"{args.sample_seeds} sampling seeds per prompt from 1000 + 100 x seed; evaluator Judge B")
        print(report(rows, out, title=Path(args.config).stem, notes=notes, plot=not args.no_plot))
    except PersonalizeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
