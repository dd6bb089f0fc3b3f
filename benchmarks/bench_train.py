"""Seconds per training step and peak memory of each personalization base, on the same tiny model, in one run.

    python benchmarks/bench_train.py [--steps 20] [--device cpu|cuda] [--write] [--dct: only the dct arms]

Each base runs in its own subprocess (peak RSS is per process): after a warm-up run, a short run (2 steps, or
an arm's `_short`) and a long one (short + N steps) are timed, and (long - short) / N is the time of one step without loading and setup. Peak memory is
the process's max RSS on CPU, `torch.cuda.max_memory_allocated` on a GPU. Ratios are to textual inversion.
`--write` replaces this benchmark's section of benchmarks/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# regularizers: (label, method section, the base whose step it is compared with); the bases come from the registry
REGULARIZERS = [
    ("classdiffusion on custom_diffusion", {"name": "classdiffusion", "class_word": "dog"}, "custom_diffusion"),
    # the SPL phrase is the caption itself ("a photo of sks dog"), as in configs/classdiffusion.yaml: no SPL pass
    ("classdiffusion on custom_diffusion, the caption is the SPL phrase",
     {"name": "classdiffusion", "class_word": "dog", "spl_template": "a photo of {token} {cls}"}, "custom_diffusion"),
    ("sude on dreambooth", {"name": "sude", "class_word": "dog"}, "dreambooth"),
    ("sude on custom_diffusion", {"name": "sude", "class_word": "dog", "base": {"name": "custom_diffusion"}},
     "custom_diffusion"),
]
# erasure steps against a DreamBooth step: with the official x_t sampling (k of 50 DDIM steps, ~25 CFG UNet calls
# on average) and without it (ddim_steps 1: k = 0, x_t is the noise), which isolates the teacher/student passes
DOG = ["a photo of a dog"]
ERASURE = [
    ("esd, x_t from 50 DDIM steps", {"name": "esd", "concepts": DOG, "ddim_steps": 50}),
    ("esd, x_t sampling excluded", {"name": "esd", "concepts": DOG, "ddim_steps": 1}),
    ("abo, x_t from 50 DDIM steps", {"name": "abo", "concepts": DOG, "ddim_steps": 50}),
    ("abo, x_t sampling excluded", {"name": "abo", "concepts": DOG, "ddim_steps": 1}),
    # `xt_cache`: x_t from 16 teacher trajectories per concept, each sampled once when first drawn; timed after a
    # short run of 120 steps, by which all 16 are drawn (batch 1: about 54 draws on average), so it is the cost of
    # a step in the rest of a run (the toy recipes' 300-1000 steps)
    ("esd, x_t from 16 cached trajectories (after they are drawn)",
     {"name": "esd", "concepts": DOG, "ddim_steps": 50, "xt_sampler": "teacher", "xt_cache": 16, "_short": 120}),
    ("abo, x_t from 16 cached trajectories (after they are drawn)",
     {"name": "abo", "concepts": DOG, "ddim_steps": 50, "xt_sampler": "teacher", "xt_cache": 16, "_short": 120}),
    # issue 39's options, x_t sampling excluded as above: templates change which prompt a step draws, not its
    # calls; preservation adds a teacher and a student call for one neighbour prompt
    ("esd + templates (object), x_t sampling excluded",
     {"name": "esd", "concepts": ["dog"], "templates": ["object"], "ddim_steps": 1}),
    ("esd + preserve (lambda 1), x_t sampling excluded",
     {"name": "esd", "concepts": DOG, "preserve": ["a photo of a cat"], "lambda_preserve": 1.0, "ddim_steps": 1}),
    # the adversarial option: per attack step a text-encoder and a student pass with their backward to delta,
    # then one student call more for loss_adv
    ("esd + adversarial (1 attack step), x_t sampling excluded",
     {"name": "esd", "concepts": ["dog"], "templates": ["a photo of a {}"], "attack_steps": 1, "ddim_steps": 1}),
    ("esd + adversarial (5 attack steps), x_t sampling excluded",
     {"name": "esd", "concepts": ["dog"], "templates": ["a photo of a {}"], "attack_steps": 5, "ddim_steps": 1}),
]

# dct: one optimizer step = 5 generated images (run.py's accumulation), steered by the toy judge, with and without
# checkpointing the UNet calls that keep the graph ("_train": train keys of that arm)
_DCT = {"name": "dct", "classifier": "toyworld", "target": "identity:18", "sample_steps": 10, "patience": 10**6,
        "stop_accuracy": 1.0, "collapse_factor": 1e9}  # no early stop or seed change inside the timed steps
DCT = [(f"dct, grad through {k} of 10 DDIM steps, {'' if ckpt else 'not '}checkpointed",
        _DCT | {"grad_steps": k, "_train": {"gradient_accumulation_steps": 5, "gradient_checkpointing": ckpt}})
       for k in (1, 4) for ckpt in (True, False)]


def bases() -> list[str]:
    from personalize.methods import REGISTRY

    return [name for name, record in REGISTRY.items() if record.kind == "personalization"]
MARK = "## Training step per base (bench_train.py)"
DCT_MARK = "## Discriminative class tokens step (bench_train.py --dct)"


def one(method: dict, model: Path, data: Path, steps: int, device: str) -> dict:
    import resource

    import torch

    from personalize.config import load_config
    from personalize.trainer import train

    method = dict(method)
    extra, first = method.pop("_train", {}), method.pop("_short", 2)  # first: the short run's steps

    def run(n: int, out: Path) -> float:
        cfg = load_config([], {
            "model": {"pretrained": str(model)},
            "data": {"instance_data_dir": str(data), "instance_prompt": "a photo of sks dog"},
            "train": {"output_dir": str(out), "max_train_steps": n, "checkpointing_steps": 10**6,
                      "report_to": "none"} | extra,
            "method": method,
        })
        start = time.perf_counter()
        result = train(cfg)
        elapsed = time.perf_counter() - start
        from personalize.artifacts import read_safetensors

        run.trainable = sum(v.numel() for v in read_safetensors(result.artifact)[0].values())
        return elapsed

    with tempfile.TemporaryDirectory() as tmp:
        run(2, Path(tmp) / "warmup")  # first-call costs (imports, allocator) out of the measurement
        short = run(first, Path(tmp) / "short")
        long = run(first + steps, Path(tmp) / "long")
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"method": method["name"], "sec_per_step": (long - short) / steps, "peak_mb": peak / 2**20,
            "trainable": run.trainable}


def table(rows: list[dict], steps: int, device: str) -> str:
    ref = next(r for r in rows if r["method"] == "textual_inversion")
    lines = [
        MARK, "",
        f"Tiny SD1-shaped model (real CLIP width 768, UNet blocks 16/32, 16 px images), batch 1, {steps} timed "
        f"steps after 2 warm-up steps, {device}, torch float32, {platform.machine()} with "
        f"{__import__('os').cpu_count()} cores. Trained values: the numbers in the artifact (token rows, K/V, LoRA, UNet). Ratios are to textual inversion, measured in the same run; "
        "absolute times say little about a real SD model on a GPU, the ordering and ratios are the point.", "",
        "| base | trained values | s/step | x TI | peak memory (MB) | x TI |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable']:,} | {r['sec_per_step']:.4f} | "
                     f"{r['sec_per_step'] / ref['sec_per_step']:.2f} | {r['peak_mb']:.0f} | "
                     f"{r['peak_mb'] / ref['peak_mb']:.2f} |")
    lines += ["", "Textual inversion and Custom Diffusion train their new token rows as a separate (n, width) parameter "
              "substituted by a hook, not the whole 49,408-row table as diffusers' textual_inversion.py does; "
              "on this tiny model the full-table AdamW update had made a TI step about 9x slower and its peak "
              "memory about 2x larger (separate runs while developing, not a side-by-side measurement). "
              "Between runs on this shared 2-core machine the s/step ratios move by up to about 30 %."]
    return "\n".join(lines) + "\n"


def regularizer_table(rows: dict[str, dict]) -> str:
    lines = ["", "Regularizers, each against its base in the same run (goals: ClassDiffusion <= 1.05x, "
             "SuDe <= 1.4x):", "", "| method | s/step | x base | peak memory (MB) | x base |", "|---|---|---|---|---|"]
    for label, _, base in REGULARIZERS:
        r, b = rows[label], rows[base]
        lines.append(f"| {label} | {r['sec_per_step']:.4f} | {r['sec_per_step'] / b['sec_per_step']:.2f} | "
                     f"{r['peak_mb']:.0f} | {r['peak_mb'] / b['peak_mb']:.2f} |")
    return "\n".join(lines) + "\n"


def erasure_table(rows: dict[str, dict], uce_seconds: float) -> str:
    lines = ["", "Erasure, each against a DreamBooth step in the same run (goals: ESD <= 1.6x, AbO <= 2.0x; the "
             "teacher passes run under no_grad):", "", "| method | s/step | x dreambooth | peak memory (MB) | x dreambooth |",
             "|---|---|---|---|---|"]
    b = rows["dreambooth"]
    for label, _ in ERASURE:
        r = rows[label]
        lines.append(f"| {label} | {r['sec_per_step']:.4f} | {r['sec_per_step'] / b['sec_per_step']:.2f} | "
                     f"{r['peak_mb']:.0f} | {r['peak_mb'] / b['peak_mb']:.2f} |")
    lines += ["", f"UCE (closed form, 2 concepts, 1 preserved): {uce_seconds:.2f} s for the whole job "
              "(`train()`: load, edit, write), no steps."]
    return "\n".join(lines) + "\n"


def dct_table(rows: dict[str, dict], steps: int, device: str) -> str:
    lines = ["", f"The tiny model above, {steps} timed steps, {device}. One optimizer step = 5 images generated with "
             "10 DDIM steps (CFG), decoded and read by the toy judge; the token row is the only trained value. "
             "Each arm against the same arm without checkpointing, in the same run:", "",
             "| method | s/step | x not checkpointed | peak memory (MB) | x not checkpointed |", "|---|---|---|---|---|"]
    for label, _ in DCT:
        r, b = rows[label], rows[label.replace(", checkpointed", ", not checkpointed")]
        lines.append(f"| {label} | {r['sec_per_step']:.4f} | {r['sec_per_step'] / b['sec_per_step']:.2f} | "
                     f"{r['peak_mb']:.0f} | {r['peak_mb'] / b['peak_mb']:.2f} |")
    lines += ["", "On a CPU the peak is the process's RSS, which the loaded models dominate at this size: what "
              "checkpointing saves (the kept UNet activations) needs a GPU run of a real model to show."]
    return "\n".join(lines) + "\n"


def uce_seconds(model: Path) -> float:
    from personalize.config import load_config
    from personalize.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config([], {"model": {"pretrained": str(model)}, "train": {"output_dir": tmp, "report_to": "none"},
                               "method": {"name": "uce", "concepts": ["dog", "cat"], "preserve": ["car"]}})
        train(cfg)  # warm-up
        start = time.perf_counter()
        train(cfg)
        return time.perf_counter() - start


def write_section(text: str, mark: str = MARK) -> None:
    path = ROOT / "benchmarks" / "BENCHMARKS.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if mark in old:
        before, after = old.split(mark, 1)
        rest = after.split("\n## ", 1)
        old = before + (("## " + rest[1]) if len(rest) > 1 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def measure(arms: list[tuple[str, dict]], args, model: Path, data: Path) -> dict[str, dict]:
    """Every arm in its own process, `args.rounds` times in rotating order; per arm the median s/step and peak
    (and `rounds`: every round's s/step, for ratios per round)."""
    runs: dict[str, list[dict]] = {label: [] for label, _ in arms}
    for r in range(args.rounds):
        for label, section in arms[r % len(arms):] + arms[: r % len(arms)]:
            proc = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--device", args.device,
                                   "--one", json.dumps(section), str(model), str(data)],
                                  capture_output=True, text=True)
            if proc.returncode:
                sys.exit(proc.stderr[-2000:])
            runs[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {label: got[0] | {"sec_per_step": statistics.median(g["sec_per_step"] for g in got),
                             "peak_mb": statistics.median(g["peak_mb"] for g in got),
                             "rounds": [g["sec_per_step"] for g in got]}
            for label, got in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--dct", action="store_true", help="only the dct arms (their own section)")
    parser.add_argument("--rounds", type=int, default=1, help="run every arm R times, interleaved; medians")
    parser.add_argument("--only", nargs="*", help="only the arms whose label contains one of these (no --write)")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "MODEL", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one[0]), Path(args.one[1]), Path(args.one[2]), args.steps, args.device)))
        return
    from personalize.tiny import write_concept_images

    from personalize.tiny import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_model(Path(tmp) / "model", ROOT / "tests" / "fixtures" / "clip_tokenizer", "sd1")
        data = write_concept_images(Path(tmp) / "data")
        arms = [(m, {"name": m}) for m in bases()] + [(label, section) for label, section, _ in REGULARIZERS]
        arms += ERASURE
        if args.only:  # any arm, the dct ones included
            arms = [(label, section) for label, section in arms + DCT if any(o in label for o in args.only)]
            args.write = False
        elif args.dct:  # the dct arms have their own section; the default run does not time them
            arms = DCT
        rows = measure(arms, args, model, data)
        if args.only:
            return print(json.dumps(rows, indent=1))
        if args.dct:
            text = DCT_MARK + "\n" + dct_table(rows, args.steps, args.device)
            print(text)
            return write_section(text, DCT_MARK) if args.write else None
        erase_s = uce_seconds(model)
    text = table([rows[m] for m in bases()], args.steps, args.device) + regularizer_table(rows)
    text += erasure_table(rows, erase_s)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
