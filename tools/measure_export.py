"""Does the quickstart person survive `personalize export`? DreamBooth (the quickstart recipe, identity 90) per
training seed, exported as LoRA files (rank 4, 16, 64, full; loaded through diffusers' `load_lora_weights`) and a
float16 checkpoint (loaded through `from_single_file`), scored by Judge B on the quickstart's new prompts.
Results: docs/effects.md, "Exported (issue 36)".

    python tools/measure_export.py [--seeds 1 2 3 4 5] [--sample-seed 500] [--per-prompt 8] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANKS = ("4", "16", "64", "full")


def arms(art: Path, folder: Path) -> dict:
    from personalize.export.command import export
    from personalize.pipeline import load_pipeline

    out = {"dreambooth": load_pipeline("toyworld", [art], device="cpu")}
    for r in RANKS:
        f = folder / f"lora-{r}.safetensors"
        export([str(art)], "lora", rank=r, out=str(f), force=True)
        out[f"lora rank {r}"] = load_pipeline("toyworld", [f], device="cpu")
    ckpt = folder / "checkpoint.safetensors"
    export([str(art)], "checkpoint", half=True, out=str(ckpt), force=True)
    out["checkpoint fp16"] = load_pipeline(str(ckpt), device="cpu", single_file_config=str(ROOT / "assets/toyworld"))
    return out


def interval(x: list[float]) -> str:
    from scipy import stats

    m = statistics.mean(x)
    h = stats.t.ppf(0.975, len(x) - 1) * statistics.stdev(x) / len(x) ** 0.5 if len(x) > 1 else float("nan")
    return f"{m:.3f} ({m - h:.3f} to {m + h:.3f})"


def main() -> None:
    from personalize.cpu import TOY_THREADS, configure_threads
    from personalize.toyworld.judge import Judge
    from personalize.eval.quickstart import NEW_PROMPTS, SAMPLING, learn_person, subject_scores, write_examples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--sample-seed", type=int, default=500)
    parser.add_argument("--per-prompt", type=int, default=8)
    parser.add_argument("--out", default="outputs/measure-export")
    args = parser.parse_args()
    configure_threads(TOY_THREADS)
    judge, prompts, rows = Judge.load("b"), [p.format("sks ") for p in NEW_PROMPTS], {}
    for seed in args.seeds:
        folder = Path(args.out) / f"seed-{seed}"
        art = learn_person(write_examples(folder / "photos", 90), folder, {"seed": seed})
        for name, pipe in arms(art, folder).items():
            images = [g.image for g in pipe.generate(prompts, num_images=args.per_prompt, seed=args.sample_seed,
                                                     **SAMPLING)]
            rows.setdefault(name, []).append(subject_scores(judge, images, args.per_prompt)["the person (all 4 traits)"])
        print(seed, {k: v[-1] for k, v in rows.items()}, flush=True)
    for name, values in rows.items():
        paired = [a - b for a, b in zip(values, rows["dreambooth"])]
        print(f"{name}: {interval(values)}; delta to dreambooth {interval(paired)}; per seed {values}")
    (Path(args.out) / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
