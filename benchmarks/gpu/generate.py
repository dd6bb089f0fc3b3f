"""Generate-vs-plain ratio: `load_pipeline(...).generate` against a plain diffusers `StableDiffusionPipeline`
call on the same model, prompt, seed, steps, guidance and size (as benchmarks/bench_generate.py, smaller).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

PROMPT = "a photo of a smiling person wearing glasses"
SEED = 0
GUIDANCE = 7.5


def _timed(fn, sync) -> float:
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _runs(model: Path, device: str, dtype, steps: int) -> tuple:
    """(plain call, our generate call, sync): closures over two pipelines loaded from `model`."""
    import torch
    from diffusers import StableDiffusionPipeline

    from personalize.pipeline import load_pipeline

    plain = StableDiffusionPipeline.from_pretrained(str(model), local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False, dtype=dtype).to(device)
    plain.set_progress_bar_config(disable=True)
    ours = load_pipeline(str(model), device=device, dtype=dtype, local_files_only=True)

    def run_plain():
        plain(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE,
              generator=[torch.Generator("cpu").manual_seed(SEED)])

    def run_ours():
        ours.generate(PROMPT, seed=SEED, steps=steps, guidance_scale=GUIDANCE)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return run_plain, run_ours, sync


def generate_ratio(model: Path, device: str, steps: int, rounds: int) -> dict:
    """Median over `rounds` interleaved rounds (order alternating, after one warm-up each) of generate / plain.

    A per-round ratio is robust to slow drift of a shared machine; fp16 on CUDA, float32 on CPU."""
    import torch

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    run_plain, run_ours, sync = _runs(model, device, dtype, steps)
    for fn in (run_plain, run_ours):
        _timed(fn, sync)  # warm-up: kernels, allocator, caches
    plain_s, ours_s = [], []
    for i in range(rounds):
        if i % 2:
            ours_s.append(_timed(run_ours, sync))
            plain_s.append(_timed(run_plain, sync))
        else:
            plain_s.append(_timed(run_plain, sync))
            ours_s.append(_timed(run_ours, sync))
    return {"ratio": statistics.median(o / p for o, p in zip(ours_s, plain_s)),
            "generate_s": statistics.median(ours_s), "plain_s": statistics.median(plain_s), "rounds": rounds,
            "steps": steps, "dtype": str(dtype).removeprefix("torch.")}
