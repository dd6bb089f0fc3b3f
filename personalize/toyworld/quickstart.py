"""`personalize quickstart`: the main job on the toy world, in a few minutes on a laptop CPU.

1. a sample grid from the toy model;
2. personalize the subject in assets/examples/ (a yellow circle with an outline: the prompts never ask for
   the outline, so only what the learned token keeps can bring it back);
3. the subject in new prompts, with the judge's scores against the base model's, in a markdown report;
4. the next commands to try.
"""

from __future__ import annotations

import random
from pathlib import Path

from personalize.toyworld import world as w

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES_DIR = ROOT / "assets" / "examples" / "outlined-circle"
SUBJECT = w.Obj("circle", "yellow", "large", "plain", outline=True)
SAMPLE_PROMPTS = ["a large red circle on a white background", "a small blue square on a black background",
                  "a green triangle with stripes on a pink background", "a purple cross with dots",
                  "a red circle and a blue triangle on a gray background",
                  "a photo of a smiling person wearing glasses on a blue background",
                  "a photo of a surprised person on a green background",
                  "a photo of a neutral person wearing a hat on a gray background"]
# new contexts: the examples are all large and plain
NEW_PROMPTS = {"a small sks on a black background": {"size": "small"},
               "a small sks on a pink background": {"size": "small"},
               "a large sks with stripes on a gray background": {"texture": "stripes"},
               "a large sks with dots on a white background": {"texture": "dots"}}
BASE_PROMPTS = [p.replace("sks", "yellow circle") for p in NEW_PROMPTS]
# the method the quickstart personalizes with; the best available one (see assets/toyworld/README.md)
METHOD = {"name": "dreambooth"}
TRAIN = {"learning_rate": 1e-4, "max_train_steps": 150, "train_batch_size": 4}


def write_examples(folder: Path = EXAMPLES_DIR, n: int = 5, seed: int = 0) -> Path:
    """The example subject: n renders on different backgrounds, each with a `.txt` caption naming 'sks'."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, bg in enumerate((["white", "gray", "pink", "black", "white"] * 2)[:n]):
        scene = w.Scene("object", bg, [SUBJECT], jitter=(rng.randint(-2, 2), rng.randint(-2, 2)))
        w.render(scene).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a large sks on a {bg} background\n")
    return folder


def subject_scores(judge, images, seeds: int) -> dict[str, float]:
    """How much of the subject the images keep (shape, color, the outline no prompt asks for), and how often they
    follow the new prompt (size or texture). Images are in prompt-major order, `seeds` per prompt."""
    preds = judge.predict(images)
    asked = [e for e in NEW_PROMPTS.values() for _ in range(seeds)]
    n = len(preds)
    return {"circle": sum(p.get("shape") == "circle" for p in preds) / n,
            "yellow": sum(p.get("color") == "yellow" for p in preds) / n,
            "outline (not in the prompt)": sum(p.get("outline") == "yes" for p in preds) / n,
            "follows the prompt": sum(all(p.get(k) == v for k, v in e.items()) for p, e in zip(preds, asked)) / n}


def run(out: str | Path = "outputs/quickstart", seeds: int = 4, train_overrides: dict | None = None) -> Path:
    from personalize.batch import make_grid
    from personalize.config import load_config
    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge
    from personalize.trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("toyworld", device="cpu")
    judge = Judge.load("b")  # the evaluator

    def gen(prompts: list[str]) -> list:
        return [g.image for g in pipe.generate(prompts, num_images=seeds, seed=0, steps=25, guidance_scale=5.0)]

    make_grid(gen(SAMPLE_PROMPTS), seeds).save(out / "samples.png")
    base_images = gen(BASE_PROMPTS)
    cfg = load_config([], {"data": {"instance_data_dir": str(EXAMPLES_DIR)},
                           "train": {"output_dir": str(out / "train"), "report_to": "none",
                                     "checkpointing_steps": 10_000} | TRAIN | (train_overrides or {}),
                           "method": METHOD})
    artifact = train(cfg).artifact
    pipe.add_artifact(str(artifact))
    tuned_images = gen(list(NEW_PROMPTS))
    make_grid(base_images + tuned_images, seeds).save(out / "subject.png")
    base, tuned = subject_scores(judge, base_images, seeds), subject_scores(judge, tuned_images, seeds)
    report = _report(artifact, base, tuned, seeds)
    (out / "report.md").write_text(report)
    return out / "report.md"


def _report(artifact: Path, base: dict, tuned: dict, seeds: int) -> str:
    rows = "\n".join(f"| {k} | {base[k]:.2f} | {tuned[k]:.2f} |" for k in base)
    return f"""# personalize quickstart (toy world)

- `samples.png`: the toy model, {len(SAMPLE_PROMPTS)} prompts x {seeds} seeds.
- `subject.png`: top rows "... yellow circle ..." from the base model; bottom rows the same prompts with "sks"
  after {METHOD['name']} on the 5 images of `assets/examples/outlined-circle` (artifact `{artifact}`).
  The prompts ask for what the examples never show: a small size, stripes, dots.

The subject is a yellow circle with an outline. The prompts do not ask for the outline ("with an outline"
would), so the base model draws one only out of habit; the learned subject should keep it. Fraction of
{len(NEW_PROMPTS) * seeds} images with each property, per the toy world's Judge B (the evaluator):

| property | base model ("yellow circle") | personalized ("sks") |
|---|---|---|
{rows}
"""
