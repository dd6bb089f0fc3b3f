"""Time `load_pipeline(...).generate` against a plain diffusers `StableDiffusionPipeline` call, side by side.

Same tiny model (SD1-shaped, real width 768), same prompt, seed, steps and size; the two are run interleaved
`--repeats` times after a warm-up; printed: the ratio of medians and the median of the per-pair ratios
(robust to slow drift of a shared machine). Goal: <= 1.02.

    python benchmarks/bench_generate.py [--repeats 40] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from diffusers import StableDiffusionPipeline

    from personalize.pipeline import load_pipeline
    from personalize.tiny import save_tiny_model

    torch.set_num_threads(1)  # steadier timings on a shared 2-core machine
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_model(Path(tmp) / "tiny", ROOT / "tests" / "fixtures" / "clip_tokenizer", "sd1")
        plain = StableDiffusionPipeline.from_pretrained(str(model), local_files_only=True, safety_checker=None,
                                                        requires_safety_checker=False).to(args.device)
        plain.set_progress_bar_config(disable=True)
        ours = load_pipeline(str(model), device=args.device)
        prompt, seed = "a photo of a dog on the beach", 0

        def run_plain():
            plain(prompt, num_inference_steps=args.steps, guidance_scale=7.5,
                  generator=[torch.Generator("cpu").manual_seed(seed)])

        def run_ours():
            ours.generate(prompt, seed=seed, steps=args.steps, guidance_scale=7.5)

        run_plain(), run_ours()  # warm-up
        t_plain, t_ours = [], []
        for i in range(args.repeats):
            order = (run_plain, run_ours) if i % 2 == 0 else (run_ours, run_plain)
            for fn in order:
                (t_plain if fn is run_plain else t_ours).append(timed(fn))
    p, o = statistics.median(t_plain), statistics.median(t_ours)
    print(f"plain StableDiffusionPipeline: median {p * 1000:.1f} ms over {args.repeats} runs")
    print(f"personalize generate:          median {o * 1000:.1f} ms over {args.repeats} runs")
    paired = statistics.median(b / a for a, b in zip(t_plain, t_ours))
    print(f"ratio generate / plain: {o / p:.3f} (medians), {paired:.3f} (median of pairs); goal <= 1.02")


if __name__ == "__main__":
    main()
