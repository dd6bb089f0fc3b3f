"""Seconds per toy-world training step and per generated image at each torch thread count, side by side in one run.

    python benchmarks/bench_threads.py [--steps 60] [--repeats 2] [--write]

The quickstart's job (DreamBooth on the 3 photos of assets/examples/new-person, batch 1) and a 25-step DDIM
generation, each timed at 1, 2, ... available_cpus() threads, the counts interleaved `--repeats` times so that a
busy neighbour slows every count alike; the best repeat is kept. Ratios are to one thread. This is where
personalize.cpu.TOY_THREADS comes from. `--write` replaces this benchmark's section of benchmarks/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "## Torch threads on the toy world (bench_threads.py)"


def time_training(out: Path, steps: int) -> float:
    from personalize.eval.quickstart import examples_dir, learn_person

    def run(n: int) -> float:
        t = time.perf_counter()
        learn_person(examples_dir(), out / f"s{n}", {"max_train_steps": n})
        return time.perf_counter() - t

    return (run(2 + steps) - run(2)) / steps  # setup and loading cancel out


def time_generation(pipe, images: int = 8) -> float:
    t = time.perf_counter()
    pipe.generate("a photo of a smiling person wearing glasses", num_images=images, seed=0, steps=25,
                  guidance_scale=5.0)
    return (time.perf_counter() - t) / images


def main() -> None:
    import torch

    from personalize.cpu import available_cpus
    from personalize.pipeline import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    counts = list(range(1, available_cpus() + 1))
    pipe = load_pipeline("toyworld", device="cpu")
    best: dict[int, list[float]] = {n: [float("inf"), float("inf")] for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for n in counts if r % 2 == 0 else counts[::-1]:
                torch.set_num_threads(n)
                best[n][0] = min(best[n][0], time_training(Path(tmp) / f"{r}-{n}", args.steps))
                best[n][1] = min(best[n][1], time_generation(pipe))
    lines = [MARK, "", f"{platform.processor() or platform.machine()}, {available_cpus()} CPUs available, torch "
             f"{torch.__version__}; best of {args.repeats} interleaved repeats, {args.steps} steps.", "",
             "| threads | s / training step | ratio | s / image (25 steps) | ratio |", "|---|---|---|---|---|"]
    for n in counts:
        lines.append(f"| {n} | {best[n][0]:.4f} | {best[n][0] / best[1][0]:.2f} | {best[n][1]:.4f} | "
                     f"{best[n][1] / best[1][1]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        path = ROOT / "benchmarks" / "BENCHMARKS.md"
        old = path.read_text() if path.exists() else ""
        head, _, rest = old.partition(MARK)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        path.write_text(head.rstrip() + "\n\n" + text + tail if head else old.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
