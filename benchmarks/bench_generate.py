"""Time `load_pipeline(...).generate` against a plain diffusers `StableDiffusionPipeline` call, side by side,
and the same call with content suppression (SuppressEOT: SWR only, and SWR + ITO at its defaults).

Same model (default: tiny SD1-shaped, real width 768; `--base toyworld` or a diffusers folder), same prompt,
seed, steps and size; the arms run interleaved (rotating order) `--repeats` times after a warm-up; printed: the
ratio of medians and the median of the per-round ratios to the plain call (robust to slow drift of a shared
machine). Goals: generate <= 1.02, SWR <= 1.05.

    python benchmarks/bench_generate.py [--repeats 40] [--steps 20] [--base toyworld] [--ito-repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photo of a smiling person wearing glasses"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def arms(plain, ours, prompt: str, steps: int) -> dict:
    from personalize.methods.suppression.suppress_eot import edit

    seed, words = 0, prompt.split()[-1]

    def run_plain():
        plain(prompt, num_inference_steps=steps, guidance_scale=7.5, generator=[torch.Generator("cpu").manual_seed(seed)])

    def gen(**kw):
        return lambda: ours.generate(prompt, seed=seed, steps=steps, guidance_scale=7.5, **kw)

    return {"plain": run_plain, "generate": gen(), "swr": gen(edits=[edit({"words": [words]})]),
            "swr+ito": gen(edits=[edit({"words": [words], "suppress_mode": "swr+ito"})])}


def rounds(runs: dict, names: list[str], repeats: int) -> dict[str, list[float]]:
    times = {n: [] for n in names}
    for n in names:
        runs[n]()  # warm-up
    for i in range(repeats):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(timed(runs[n]))
    return times


def report(times: dict[str, list[float]], goals: dict[str, str]) -> None:
    base = times["plain"]
    for name, t in times.items():
        med = statistics.median(t)
        line = f"{name:>9}: median {med * 1000:8.1f} ms over {len(t)} runs"
        if name != "plain":
            paired = statistics.median(b / a for a, b in zip(base, t))
            line += f"  x plain {med / statistics.median(base):.3f} (medians), {paired:.3f} (median of rounds)"
            line += f"  {goals.get(name, '')}"
        print(line)


def load_both(model, device: str) -> tuple:
    """(plain StableDiffusionPipeline, our Pipeline, dtype) on `device` from one model folder; fp16 on CUDA."""
    from diffusers import StableDiffusionPipeline

    from personalize.pipeline import load_pipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    plain = StableDiffusionPipeline.from_pretrained(str(model), local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False, dtype=dtype).to(device)
    plain.set_progress_bar_config(disable=True)
    return plain, load_pipeline(str(model), device=device, dtype=dtype, local_files_only=True), dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--ito-repeats", type=int, default=5, help="rounds that also time SWR+ITO (slow)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--base", default=None, help="toyworld or a diffusers folder (default: tiny SD1, 768)")
    args = parser.parse_args()

    from personalize.profiles import toy_model_dir
    from personalize.tiny import save_tiny_model

    if args.device == "cpu":
        torch.set_num_threads(1)  # steadier timings on a shared 2-core machine
    with tempfile.TemporaryDirectory() as tmp:
        model = {"toyworld": toy_model_dir(), None: None}.get(args.base, args.base)
        model = model or save_tiny_model(Path(tmp) / "tiny", ROOT / "tests" / "fixtures" / "clip_tokenizer", "sd1")
        plain, ours, dtype = load_both(model, args.device)
        runs = arms(plain, ours, PROMPT, args.steps)
        print(f"model {args.base or 'tiny SD1 (768)'}, {args.steps} steps, device {args.device}, {dtype}")
        report(rounds(runs, ["plain", "generate", "swr"], args.repeats),
               {"generate": "goal <= 1.02", "swr": "goal <= 1.05"})
        if args.ito_repeats:
            report(rounds(runs, ["plain", "swr+ito"], args.ito_repeats), {})


if __name__ == "__main__":
    main()
