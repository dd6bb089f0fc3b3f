"""`personalize quickstart`: the main job on the toy world, in a few minutes on a laptop CPU.

1. a sample grid from the toy model (`samples.png`, one labelled row per prompt);
2. a new person: 3 photos of a face identity the toy model never saw (`assets/examples/new-person`), each with a
   kohya-style `.txt` caption that names what is *not* the person ("a photo of a neutral sks person on a blue
   background"), learned with DreamBooth: "sks" then takes the identity and not the expression or background;
3. that person in prompts the photos never show (smiling, surprised, a hat, glasses, other backgrounds), next
   to what the base model draws for the same prompt without "sks" (`subject.png`);
4. `report.md`: per Judge B (the evaluator), how often the images are that person (all four identity traits:
   face shape, skin, hair color, hair style) and follow the prompt, personalized against the base model;
5. Face2Diffusion, no tuning: the first photo alone through the shipped toy encoder (assets/toyworld_f2d/),
   the same prompts with "f l" for the person, in seconds (`face.png`, scored in the report too).

The settings (3 captioned photos, lr 1e-4, 300 steps) were chosen on identities 27 and 63 with training seeds
1-2; the rates they give on other identities and seeds are measured in docs/effects.md ("Quickstart"). Without
captions (the instance prompt alone) the token also learned "neutral" and the person stopped smiling.
"""

from __future__ import annotations

from pathlib import Path

from personalize.profiles import TOY
from personalize.toyworld import world as w

IDENTITY = 90  # held out from the toy model's training (world.HELD_OUT_IDENTITIES); chosen before measuring
PHOTO_BACKGROUNDS = ["blue", "white", "green"]
SAMPLE_PROMPTS = ["a large red circle on a white background", "a small blue square with stripes on a black background",
                  "a green triangle with dots on a pink background", "a red circle and a blue triangle",
                  "a photo of a smiling person wearing glasses on a blue background",
                  "a photo of a surprised person with long black hair on a green background"]
NEW_PROMPTS = {  # prompt with {} for "sks " (personalized) or "" (base) -> what the judge should see
    "a photo of a smiling {}person on a green background": {"expression": "smiling", "face_background": "green"},
    "a photo of a surprised {}person wearing a hat": {"expression": "surprised", "accessory": "hat"},
    "a photo of a {}person wearing glasses on a white background": {"accessory": "glasses",
                                                                    "face_background": "white"},
    "a portrait of a neutral {}person on a gray background": {"expression": "neutral", "face_background": "gray"},
}
TRAIN = {"learning_rate": 1e-4, "max_train_steps": 300, "train_batch_size": 1}
SAMPLING = {"steps": 25, "guidance_scale": 5.0}  # the toy model's own settings
INSTANCE_PROMPT = "a photo of a sks person"  # for a photo without a caption file


WRITTEN = ("samples.png", "subject.png", "face.png", "report.md")  # the files `run` writes in its folder


def examples_dir() -> Path:
    from personalize.resources import asset

    return asset("examples", "new-person")


def caption(background: str) -> str:
    """A photo's caption: the trigger plus everything in the photo that is not the person."""
    return f"a photo of a neutral sks person on a {background} background"


def write_examples(folder: str | Path, identity: int = IDENTITY) -> Path:
    """The subject's photos: one per PHOTO_BACKGROUNDS, neutral, no accessory, each with its `.txt` caption."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, bg in enumerate(PHOTO_BACKGROUNDS):
        w.render(w.Scene("face", bg, identity=identity)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(caption(bg) + "\n", encoding="utf-8")
    return folder


def learn_person(photos: Path, output_dir: Path, train_overrides: dict | None = None) -> Path:
    """DreamBooth on `photos` with the quickstart's settings (TRAIN, then `train_overrides`); the artifact."""
    from personalize.config import load_config
    from personalize.trainer import train

    cfg = load_config([], {"data": {"instance_data_dir": str(photos), "instance_prompt": INSTANCE_PROMPT},
                           "train": {"output_dir": str(output_dir), "report_to": "none",
                                     "checkpointing_steps": 100_000} | TRAIN | (train_overrides or {}),
                           "method": {"name": "dreambooth"}})
    return train(cfg).artifact


def subject_scores(judge, images, per_prompt: int, identity: int = IDENTITY) -> dict[str, float]:
    """Fractions of images that are the person (all four identity traits) and that follow their prompt (every
    asked attribute); images in prompt-major order, `per_prompt` each."""
    parts = w.identity_parts(identity)
    preds = judge.predict(images)
    asked = [e for e in NEW_PROMPTS.values() for _ in range(per_prompt)]
    person = [all(p.get(k) == v for k, v in parts.items()) for p in preds]
    follows = [all(p.get(k) == v for k, v in e.items()) for p, e in zip(preds, asked)]
    return {"the person (all 4 traits)": sum(person) / len(preds), "follows the prompt": sum(follows) / len(preds),
            "both": sum(a and b for a, b in zip(person, follows)) / len(preds)}


def labelled_grid(rows: list[list], labels: list[str], scale: int = 3):
    """Rows of equal-size images, each cell enlarged `scale` x (nearest: the toy world's pixels stay crisp),
    the row's label above it."""
    from PIL import Image, ImageDraw

    cw, ch = (d * scale for d in rows[0][0].size)
    cols, line = max(len(r) for r in rows), 14
    grid = Image.new("RGB", (cols * cw, len(rows) * (ch + line)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (images, label) in enumerate(zip(rows, labels)):
        y = r * (ch + line)
        draw.text((2, y + 1), label, fill="black")
        for c, im in enumerate(images):
            grid.paste(im.resize((cw, ch), Image.Resampling.NEAREST), (c * cw, y + line))
    return grid


def run(out: str | Path = "outputs/quickstart", seeds: int = 4, train_overrides: dict | None = None,
        say=print) -> Path:
    """The whole job; `say` gets one line per stage. Returns the report's path."""
    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    out = Path(out)
    photos = examples_dir()
    say(f"[1/5] the toy model draws {len(SAMPLE_PROMPTS)} prompts -> {out / 'samples.png'}")
    pipe, judge = load_pipeline(TOY, device="cpu"), Judge.load("b")  # Judge B: the evaluator

    def gen(prompts: list[str]) -> list:
        return [g.image for g in pipe.generate(prompts, num_images=seeds, seed=0, **SAMPLING)]

    samples = gen(SAMPLE_PROMPTS)
    rows = [samples[k * seeds:(k + 1) * seeds] for k in range(len(SAMPLE_PROMPTS))]
    out.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows, SAMPLE_PROMPTS).save(out / "samples.png")
    base = gen([p.format("") for p in NEW_PROMPTS])
    steps = (train_overrides or {}).get("max_train_steps", TRAIN["max_train_steps"])
    say(f"[2/5] DreamBooth learns the person in {photos} ({len(list(photos.glob('*.png')))} photos, {steps} steps)")
    artifact = learn_person(photos, out / "train", train_overrides)
    say(f"[3/5] the person in {len(NEW_PROMPTS)} new prompts, next to the base model -> {out / 'subject.png'}")
    pipe.add_artifact(str(artifact))
    tuned = gen([p.format("sks ") for p in NEW_PROMPTS])
    _subject_grid(photos, base, tuned, seeds).save(out / "subject.png")
    say(f"[4/5] Judge B scores both -> {out / 'report.md'}")
    scores = subject_scores(judge, base, seeds), subject_scores(judge, tuned, seeds)
    report = _report(artifact, photos, *scores, seeds)
    (out / "report.md").write_text(report)
    face = sorted(photos.glob("*.png"))[0]
    say(f"[5/5] Face2Diffusion: {face.name} alone, no tuning, the same prompts with 'f l' -> {out / 'face.png'}")
    pipe.remove_artifact(str(artifact))
    face_images, seconds = face_step(pipe, face, seeds)
    _subject_grid(photos, base, face_images, seeds, [face], "Face2Diffusion").save(out / "face.png")
    (out / "report.md").write_text(report + _face_report(face, subject_scores(judge, face_images, seeds), seconds))
    return out / "report.md"


def face_step(pipe, face: Path, seeds: int) -> tuple[list, float]:
    """The new prompts with the person as "f l", one encoder pass for the photo; (images, encoding seconds)."""
    import time

    from personalize.methods import make_edit

    start = time.perf_counter()
    edit = make_edit("face2diffusion", {"face": [str(face)], "base": TOY})
    seconds = time.perf_counter() - start
    prompts = [p.replace("{}person", "f l") for p in NEW_PROMPTS]
    return [g.image for g in pipe.generate(prompts, num_images=seeds, seed=0, edits=[edit], **SAMPLING)], seconds


def _face_report(face: Path, scores: dict, seconds: float) -> str:
    from personalize.profiles import TOY_PROFILE

    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in scores.items())
    encoder = TOY_PROFILE.face_encoder()  # where this install keeps it (a wheel: inside the package)
    return f"""
## Face2Diffusion: one photo, no tuning

`face.png`: `{face}` alone through the shipped toy encoder (`{encoder}`,
trained once on the toy world's 128 training identities; this person is not one of them): {seconds:.2f} s for
the photo (against the minutes DreamBooth took above), then the same prompts with "f l" for the person (right;
left: the base model again). Judge B, same columns as above:

| | Face2Diffusion |
|---|---|
{rows}

The toy recipe carries skin and hair over but rarely the whole identity (the source repository's docs/effects.md,
"Face2Diffusion").
"""


def _subject_grid(photos: Path, base: list, tuned: list, seeds: int, shown: list | None = None,
                  by: str = "personalized"):
    from PIL import Image

    shown = shown or sorted(photos.glob("*.png"))
    rows = [[Image.open(p).convert("RGB") for p in shown]]
    labels = [f"the {len(shown)} photo(s) it learns from (identity never seen by the toy model)"]
    for k, prompt in enumerate(NEW_PROMPTS):
        rows.append(base[k * seeds:(k + 1) * seeds] + tuned[k * seeds:(k + 1) * seeds])
        shown_prompt = prompt.format("[sks] ") if by == "personalized" else prompt.replace("{}person", "[f l]")
        labels.append(f"{shown_prompt}   (left: base, right: {by})")
    return labelled_grid(rows, labels)


def _report(artifact: Path, photos: Path, base: dict, tuned: dict, seeds: int) -> str:
    rows = "\n".join(f"| {k} | {base[k]:.2f} | {tuned[k]:.2f} |" for k in base)
    prompts = "\n".join(f"- `{p.format('sks ')}` (base: `{p.format('')}`)" for p in NEW_PROMPTS)
    return f"""# personalize quickstart (toy world)

- `samples.png`: the toy model, {len(SAMPLE_PROMPTS)} prompts x {seeds} seeds (one labelled row each).
- `subject.png`: the 3 photos of a person the toy model never saw (`{photos}`; each `.txt` caption names what
  is not the person, e.g. "{caption(PHOTO_BACKGROUNDS[0])}"), then per new prompt {seeds}
  images from the base model (left, the prompt without "sks") and {seeds} after DreamBooth (right, artifact
  `{artifact}`).

Prompts (none of them shows the person smiling, surprised, in a hat or glasses, or on gray or green):
{prompts}

Fraction of the {len(NEW_PROMPTS) * seeds} images per column, per the toy world's Judge B (the evaluator; "the
person" = face shape, skin, hair color and hair style all the photos'; by chance about 1 in 144):

| | base model | personalized |
|---|---|---|
{rows}

Over training seeds and other identities these settings give what the source repository's docs/effects.md
("Quickstart") reports.
"""


def measure(identities: list[int], seeds: list[int], out: str | Path, per_prompt: int = 6,
            progress: bool = True) -> list[dict]:
    """The quickstart's job on other identities and training seeds: rows {"arm": base|personalized,
    "seed": "<identity>:<seed>", scores...}, paired per row key (personalize.eval.stats.effects). Image k
    of each prompt uses sampling seed 7000 + seed + k in both arms."""
    from tqdm.auto import tqdm

    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    judge, rows, out = Judge.load("b"), [], Path(out)
    for identity, seed in tqdm([(i, s) for i in identities for s in seeds], desc="identity x seed",
                               disable=not progress):
        photos = write_examples(out / f"{identity}-{seed}" / "photos", identity)
        artifact = learn_person(photos, out / f"{identity}-{seed}", {"seed": seed})
        pipe = load_pipeline(TOY, device="cpu")
        for arm, word in (("base", ""), ("personalized", "sks ")):
            if word:
                pipe.add_artifact(str(artifact))
            images = [g.image for g in pipe.generate([p.format(word) for p in NEW_PROMPTS], num_images=per_prompt,
                                                     seed=7000 + seed, **SAMPLING)]
            rows.append({"arm": arm, "seed": f"{identity}:{seed}", "identity": str(identity)}
                        | subject_scores(judge, images, per_prompt, identity))
    return rows
