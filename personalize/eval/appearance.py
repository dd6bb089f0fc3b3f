"""Is appearance reachable through text embeddings? Textual inversion on photos of a held-out face identity.

Methods that act only through text embeddings (textual inversion, class tokens, Face2Diffusion's mapping
network) can show an effect only where the model reads appearance from text. Toy world 1.1 captions a share
of its faces with their appearance ("with short red hair, a round face and tan skin"); this module measures
whether a learned embedding can then ask for an identity the model never saw:

    python -m personalize.eval.appearance --seeds 1 2 3        # mean identity match over training seeds

For each training seed: `n` photos of one held-out identity (varied expression and background, no captions:
textual inversion's templates apply, the token standing for "person"), textual inversion (4 vectors,
initialised from "person"), then the token in new prompts; Judge B (which no method here trains against)
scores **identity match**, the fraction of images whose face shape, skin, hair color and hair style are all
the identity's. The base arm is the same prompts with "person".
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from personalize.profiles import TOY
from personalize.toyworld import world as w

IDENTITIES = sorted(w.HELD_OUT_IDENTITIES)
PHOTO_SETTINGS = [("neutral", "blue"), ("smiling", "green"), ("surprised", "white"), ("neutral", "gray")]
PROMPTS = ["a photo of a smiling {} on a blue background", "a photo of a neutral {} wearing glasses",
           "a portrait of a surprised {} on a green background", "a close-up photo of a neutral {}"]
# chosen on identity 18 with training seeds 11 and 12 (identity match 400 steps x 2 vectors 0.19, 1000 x 2 0.31,
# 1000 x 4 0.53, 2000 x 4 0.56, lr 1e-2 0.38); reported on identity 45 with seeds 1-5
TRAIN = {"learning_rate": 5e-3, "max_train_steps": 1000, "train_batch_size": 1}
METHOD = {"name": "textual_inversion", "placeholder_token": "sks", "initializer_token": "person", "num_vectors": 4}


def write_identity(folder: str | Path, identity: int, n: int = 3) -> Path:
    """n photos of `identity` (PHOTO_SETTINGS: expression, background), no caption files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (expression, bg) in enumerate(PHOTO_SETTINGS[:n]):
        (folder / f"{i}.txt").unlink(missing_ok=True)
        scene = w.Scene("face", bg, identity=identity, expression=expression, jitter=((i % 3) - 1, 0))
        w.render(scene).save(folder / f"{i}.png")
    return folder


def identity_match(judge, images, identity: int) -> float:
    """Fraction of images that are faces with all four identity attributes of `identity`."""
    from personalize.eval.evaluate import score

    want = {"kind": "face"} | w.identity_parts(identity)
    return score("identity_words", judge.predict(images), [want] * len(images))


def textual_inversion_identity(out: str | Path, identity: int, seed: int, judge, n_photos: int = 3,
                               images_per_prompt: int = 4, sample_seed: int = 2000) -> dict[str, float]:
    """Train textual inversion on `n_photos` of `identity` with training seed `seed`; identity match of the
    token's images and of the base prompts ('person'), on `images_per_prompt` sampling seeds per prompt."""
    from personalize.config import load_config
    from personalize.pipeline import load_pipeline
    from personalize.trainer import train

    out = Path(out)
    folder = write_identity(out / "photos", identity, n_photos)
    cfg = load_config([], {"data": {"instance_data_dir": str(folder)},
                           "train": {"output_dir": str(out / "train"), "report_to": "none", "seed": seed,
                                     "checkpointing_steps": 100_000} | TRAIN,
                           "method": METHOD})
    artifact = train(cfg).artifact
    pipe = load_pipeline(TOY, device="cpu")

    def images(prompts: list[str]) -> list:
        return [g.image for g in pipe.generate(prompts, num_images=images_per_prompt, seed=sample_seed,
                                               steps=25, guidance_scale=5.0)]

    base = identity_match(judge, images([p.format("person") for p in PROMPTS]), identity)
    pipe.add_artifact(str(artifact))
    tuned = identity_match(judge, images([p.format(METHOD["placeholder_token"]) for p in PROMPTS]), identity)
    return {"identity": identity, "seed": seed, "base": base, "textual_inversion": tuned}


def main() -> None:
    from personalize.toyworld.judge import Judge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds")
    parser.add_argument("--identity", type=int, default=IDENTITIES[5], help=f"a held-out identity: {IDENTITIES}")
    parser.add_argument("--out", default="outputs/appearance")
    args = parser.parse_args()
    if args.identity not in w.HELD_OUT_IDENTITIES:
        parser.error(f"--identity must be a held-out identity (never trained on), one of {IDENTITIES}")
    judge = Judge.load("b")
    rows = [textual_inversion_identity(Path(args.out) / f"seed-{s}", args.identity, s, judge) for s in args.seeds]
    for row in rows:
        print(json.dumps(row))
    mean = statistics.mean(r["textual_inversion"] for r in rows)
    print(f"identity match: textual inversion {mean:.3f}, base {statistics.mean(r['base'] for r in rows):.3f} "
          f"(mean over training seeds {args.seeds})")


if __name__ == "__main__":
    main()
