"""Generate-vs-plain ratio: `load_pipeline(...).generate` against a plain diffusers `StableDiffusionPipeline`
call on the same model, prompt, seed, steps, guidance and size: benchmarks/bench_generate.py's arms and
interleaved rounds, the generate arm only.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path


def generate_ratio(model: Path, device: str, steps: int, rounds: int) -> dict:
    """Median over `rounds` interleaved rounds (order alternating, after one warm-up each) of generate / plain.

    A per-round ratio is robust to slow drift of a shared machine; fp16 on CUDA, float32 on CPU. Each call
    returns PIL images, so its time includes the GPU's work."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for bench_generate
    from bench_generate import PROMPT, arms, load_both
    from bench_generate import rounds as interleaved

    plain, ours, dtype = load_both(model, device)
    times = interleaved(arms(plain, ours, PROMPT, steps), ["plain", "generate"], rounds)
    return {"ratio": statistics.median(o / p for o, p in zip(times["generate"], times["plain"])),
            "generate_s": statistics.median(times["generate"]), "plain_s": statistics.median(times["plain"]),
            "rounds": rounds, "steps": steps, "dtype": str(dtype).removeprefix("torch.")}
