"""Our training step against diffusers' own example scripts, side by side on one model, data and settings.

    python benchmarks/bench_vs_diffusers.py --examples DIR [--model assets/toyworld] [--steps 60] [--rounds 3]
        [--bases dreambooth lora textual_inversion custom_diffusion] [--threads 1] [--ours-extra KEY=VALUE ...]

DIR holds diffusers' scripts, fetched from github.com/huggingface/diffusers `examples/` at a version matching the
installed diffusers and kept outside this repository (their licence is Apache-2.0, but they are not ours to ship):
train_dreambooth.py, train_dreambooth_lora.py, textual_inversion.py, train_custom_diffusion.py.

Each arm is a whole process (`python training/train.py` for ours, single process, no launcher), timed by
/usr/bin/time for wall time and max RSS. A short run (S steps) and a long one (S + N) are timed; (long - short) / N
is the time of one step without start-up, loading and saving. Arms alternate within a round (ours, theirs; then
theirs, ours) so a slow spell of this shared machine falls on both. Reported: the median of the per-round ratios
ours/theirs for s/step, and the max-RSS ratio of the long runs (the peak memory of the whole process on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photo of sks dog"
FIVE_COLORS = ("red", "blue", "green", "orange", "purple")  # five instance images (tests/helpers.py draws them)
# each base: our config + overrides, diffusers' script + its arguments, for the same recipe (lr, batch, crops)
ARMS = {
    "dreambooth": (["--config", "configs/dreambooth.yaml"], "train_dreambooth.py",
                   ["--instance_prompt", PROMPT, "--learning_rate", "5e-6", "--center_crop"]),
    "lora": (["--config", "configs/lora.yaml"], "train_dreambooth_lora.py",
             ["--instance_prompt", PROMPT, "--learning_rate", "1e-4", "--rank", "4", "--center_crop"]),
    "textual_inversion": (["--config", "configs/textual_inversion.yaml"], "textual_inversion.py",
                          ["--placeholder_token", "sks", "--initializer_token", "object", "--learnable_property",
                           "object", "--learning_rate", "5e-4", "--center_crop", "--save_steps", "1000000",
                           "--validation_steps", "1000000"]),
    "custom_diffusion": (["--config", "configs/custom_diffusion.yaml", "--train.scale_lr=false",
                          "--train.train_batch_size=1", "--data.instance_prompt=a photo of a {} dog"],
                         "train_custom_diffusion.py",
                         ["--instance_prompt", "a photo of a <new1> dog", "--modifier_token", "<new1>",
                          "--initializer_token", "object", "--learning_rate", "1e-5", "--hflip",
                          "--no_safe_serialization"]),
}


def ours(base: str, model: str, data: Path, out: Path, steps: int, res: int, extra: list[str]) -> list[str]:
    config, _, _ = ARMS[base]
    return [sys.executable, str(ROOT / "training" / "train.py"), *config, f"--model.pretrained={model}",
            f"--data.instance_data_dir={data}", f"--data.resolution={res}", f"--train.output_dir={out}",
            f"--train.max_train_steps={steps}", "--train.checkpointing_steps=1000000", "--train.validation_prompt=null",
            "--train.train_batch_size=1", *extra]


def theirs(base: str, examples: Path, model: str, data: Path, out: Path, steps: int, res: int,
           runner: Path | None = None) -> list[str]:
    _, script, args = ARMS[base]
    data_flag = "--train_data_dir" if base == "textual_inversion" else "--instance_data_dir"
    return [sys.executable, *([str(runner)] if runner else []), str(examples / script), "--pretrained_model_name_or_path", model, data_flag, str(data),
            "--output_dir", str(out), "--resolution", str(res), "--train_batch_size", "1", "--max_train_steps",
            str(steps), "--checkpointing_steps", "1000000", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
            "--seed", "0", *args]


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, max RSS in MB) of one process; its output is kept only when it fails."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        proc = subprocess.run(["/usr/bin/time", "-o", t.name, "-f", "%e %M", *cmd], capture_output=True, text=True,
                              env=env, cwd=ROOT)
        if proc.returncode:
            sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        wall, rss_kb = Path(t.name).read_text().split()[-2:]
    return float(wall), float(rss_kb) / 1024


def per_step(make, short: int, steps: int, env: dict, tmp: Path) -> dict:
    t_short, _ = timed(make(short, tmp / "s"), env)
    t_long, rss = timed(make(short + steps, tmp / "l"), env)
    return {"sec_per_step": (t_long - t_short) / steps, "rss_mb": rss, "startup_s": t_short}


def main() -> None:
    from personalize.tiny import write_concept_images

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=Path, required=True, help="folder with diffusers' example scripts")
    p.add_argument("--model", default=str(ROOT / "assets" / "toyworld"))
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=60, help="N: timed steps (long run = short + N)")
    p.add_argument("--short", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every arm")
    p.add_argument("--bases", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--runner", type=Path, help="a Python file that runs the script given as its first argument "
                   "(e.g. to provide torchvision where no wheel matches the installed torch)")
    p.add_argument("--ours-extra", nargs="*", default=[], help="extra overrides for our arm, e.g. train.cache_latents=true")
    args = p.parse_args()
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "PYTHONWARNINGS": "ignore"}
    extra = [f"--{kv}" for kv in args.ours_extra]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_concept_images(tmp / "data", FIVE_COLORS, size=(64, 64))
        for base in args.bases:
            make_ours = lambda n, o, b=base: ours(b, args.model, data, o, n, args.resolution, extra)  # noqa: E731
            make_theirs = lambda n, o, b=base: theirs(b, args.examples, args.model, data, o, n, args.resolution,  # noqa: E731
                                                      args.runner)
            rounds = []
            for r in range(args.rounds):
                order = [("ours", make_ours, env), ("theirs", make_theirs, env)][:: 1 if r % 2 == 0 else -1]
                got = {name: per_step(make, args.short, args.steps, e, tmp / f"{base}-{name}-{r}")
                       for name, make, e in order}
                rounds.append(got)
                print(base, r, json.dumps(got), flush=True)
            ratios = [g["ours"]["sec_per_step"] / g["theirs"]["sec_per_step"] for g in rounds]
            rss = [g["ours"]["rss_mb"] / g["theirs"]["rss_mb"] for g in rounds]
            results[base] = {
                "ours_s": statistics.median(g["ours"]["sec_per_step"] for g in rounds),
                "theirs_s": statistics.median(g["theirs"]["sec_per_step"] for g in rounds),
                "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "rss_ratio": statistics.median(rss),
                "ours_startup_s": statistics.median(g["ours"]["startup_s"] for g in rounds),
                "theirs_startup_s": statistics.median(g["theirs"]["startup_s"] for g in rounds),
            }
    print("| base | ours s/step | diffusers s/step | ours / diffusers (median, min-max) | max RSS ours / diffusers |")
    print("|---|---|---|---|---|")
    for base, r in results.items():
        print(f"| {base} | {r['ours_s']:.4f} | {r['theirs_s']:.4f} | {r['ratio_median']:.2f} "
              f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['rss_ratio']:.2f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
