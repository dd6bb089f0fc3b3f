"""Face2Diffusion on the toy world: seconds per training step of each stage, and seconds per new person at
inference (one encoder pass) against a one-shot DreamBooth run on the same photo (the SuDe toy recipe's base:
1 photo, 200 steps). Side by side in one process; write into BENCHMARKS.md with --write.

    python benchmarks/bench_face.py [--steps 10] [--write]
    python benchmarks/bench_face.py --cgdr [--rounds 3]   # stage 2 with CGDR against the same step without it
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
MARK = "## Face2Diffusion (bench_face.py)"


def timed_train(config: str, out: Path, steps: int, overrides: dict) -> float:
    from personalize.config import load_config, merge_sections
    from personalize.trainer import train

    diff = {"train": {"output_dir": str(out), "max_train_steps": steps, "checkpointing_steps": 10**6,
                      "report_to": "none", "validation_prompt": None}}
    merge_sections(diff, overrides)
    start = time.perf_counter()
    train(load_config([str(ROOT / "configs" / "toyworld" / config)], diff))
    return time.perf_counter() - start


def per_step(config: str, tmp: Path, steps: int, overrides: dict) -> float:
    timed_train(config, tmp / "warm", 2, overrides)
    short = timed_train(config, tmp / "short", 2, overrides)
    return (timed_train(config, tmp / "long", 2 + steps, overrides) - short) / steps


def one_shot_dreambooth(out: Path) -> float:
    """DreamBooth on the one held-out face photo, the SuDe toy recipe's base (lr 1e-4, 200 steps), whole run."""
    from personalize.config import load_config
    from personalize.resources import asset
    from personalize.trainer import train

    cfg = load_config([], {"model": {"pretrained": "toyworld"},
                           "data": {"instance_data_dir": str(asset("examples", "one-face")),
                                    "instance_prompt": "a photo of a sks person"},
                           "train": {"output_dir": str(out), "learning_rate": 1e-4, "max_train_steps": 200,
                                     "checkpointing_steps": 10**6, "report_to": "none"},
                           "method": {"name": "dreambooth"}})
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def new_person_seconds(encoder: Path, repeats: int = 5) -> float:
    """Load the photo, run MSID + mapping: what a new person costs before generation (median)."""
    from personalize.methods.face2diffusion.edit import FaceEdit
    from personalize.methods.face2diffusion.encoder import FaceEncoder
    from personalize.eval import face_effect

    enc = FaceEncoder.load(encoder)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        FaceEdit(enc, [face_effect.photo(27)])
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def cgdr_overhead(steps: int, rounds: int) -> str:
    """Stage 2 with CGDR (the recipe) against `cgdr: false`, the plain denoising step of the same mapping (no
    teacher UNet pass), on the shipped stage 1; interleaved rounds, the median of the per-round ratios."""
    import statistics

    ratios, rows = [], []
    with tempfile.TemporaryDirectory() as t:
        for r in range(rounds):
            arms = [("cgdr", True), ("plain", False)][:: 1 if r % 2 == 0 else -1]
            got = {name: per_step("face2diffusion.yaml", Path(t) / f"{name}{r}", steps, {"method": {"cgdr": on}})
                   for name, on in arms}
            ratios.append(got["cgdr"] / got["plain"])
            rows.append(f"| {r} | {got['cgdr']:.3f} | {got['plain']:.3f} | {ratios[-1]:.2f} |")
    return "\n".join(["| round | with CGDR (s/step) | without (s/step) | ratio |", "|---|---|---|---|", *rows,
                      f"\nmedian ratio {statistics.median(ratios):.2f} over {rounds} rounds"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--cgdr", action="store_true", help="only stage 2 with and without CGDR")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from personalize.cpu import TOY_THREADS, configure_threads

    configure_threads(TOY_THREADS)
    if args.cgdr:
        return print(cgdr_overhead(args.steps, args.rounds))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        s1 = per_step("f2d_msid.yaml", tmp / "s1", args.steps, {})
        msid = tmp / "s1" / "long" / "f2d_msid.safetensors"
        s2 = per_step("face2diffusion.yaml", tmp / "s2", args.steps, {"method": {"msid": str(msid)}})
        encoder = tmp / "s2" / "long" / "face2diffusion.safetensors"
        f2d = new_person_seconds(encoder)
        dreambooth = one_shot_dreambooth(tmp / "db")
    text = (f"{MARK}\n\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
            f"{TOY_THREADS} torch thread(s), toy configs (configs/toyworld/f2d_msid.yaml, face2diffusion.yaml):\n\n"
            "| what | seconds |\n|---|---|\n"
            f"| stage 1 (MSID, ArcFace) per step, batch 64 | {s1:.3f} |\n"
            f"| stage 2 (mapping, CGDR + EG) per step, batch 32 | {s2:.3f} |\n"
            f"| a new person: photo -> two vectors | {f2d:.4f} |\n"
            f"| a new person: one-shot DreamBooth, 200 steps (process included) | {dreambooth:.1f} |\n"
            f"| ratio DreamBooth / Face2Diffusion per person | {dreambooth / f2d:,.0f}x |\n")
    print(text)
    if args.write:
        from bench_train import write_section

        write_section(text, MARK)


if __name__ == "__main__":
    main()
