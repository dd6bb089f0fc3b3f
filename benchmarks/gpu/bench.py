"""GPU benchmark: seconds per training step and peak memory of our DreamBooth and LoRA against diffusers'
example scripts, across precisions and memory options, plus a generate-vs-plain-pipeline ratio.

Run through benchmarks/gpu/run.sh (see benchmarks/gpu/README.md). Each arm runs twice in fresh processes, a
short run of S steps and a long one of S+N; s/step = (t_long - t_short) / N, so loading and saving cancel.
Both trainers run under benchmarks/gpu/measure.py, which times the script from inside its process and reads
its peak CUDA memory and max RSS. Results are rewritten after every arm, so a cut-off run still says something.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from report import sec_per_step, write_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "clip_tokenizer"
MEASURE_ENV = "GPU_BENCH_MEASURE_JSON"  # measure.py's ENV_VAR
PROMPT = "a photo of sks dog"
SCRIPTS = {"dreambooth": "train_dreambooth.py", "lora": "train_dreambooth_lora.py"}
LEARNING_RATE = {"dreambooth": "5e-6", "lora": "1e-4"}  # as configs/dreambooth.yaml and configs/lora.yaml
OURS_FLAGS = {"gradient_checkpointing": None,  # always set, true or false
              "xformers": "--train.enable_xformers_memory_efficient_attention=true",
              "8bit_adam": "--train.use_8bit_adam=true", "zero2": None}
DIFFUSERS_FLAGS = {"gradient_checkpointing": "--gradient_checkpointing",
                   "xformers": "--enable_xformers_memory_efficient_attention", "8bit_adam": "--use_8bit_adam"}
NEEDS_MODULE = {"xformers": "xformers", "8bit_adam": "bitsandbytes", "zero2": "deepspeed"}
# every arm of ours runs configs/<base>.yaml at batch 1; these make a regularizer's step comparable with its
# base's (custom_diffusion for classdiffusion, configs/dreambooth.yaml's frozen text encoder and caches for sude,
# no class images to generate first)
OURS_OVERRIDES = {
    "custom_diffusion": ["--train.scale_lr=false", "--data.instance_prompt=a photo of a {} dog"],
    "classdiffusion": ["--train.scale_lr=false"],
    "sude": ["--train.with_prior_preservation=false", "--method.base.train_text_encoder=false",
             "--train.cache_latents=true", "--train.cache_text_encoder_outputs=true"],
}


@dataclass(frozen=True)
class Arm:
    """One training configuration: base method, implementation, mixed precision, memory options."""

    base: str  # dreambooth | lora (both implementations); custom_diffusion | classdiffusion | sude (ours only)
    impl: str  # ours | diffusers
    precision: str  # fp16 | bf16 | no
    options: tuple[str, ...] = ()  # gradient_checkpointing, xformers, 8bit_adam, zero2

    @property
    def name(self) -> str:
        return f"{self.base} {'+'.join((self.precision, *self.options))} {self.impl}"

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "_").replace("+", "-")


@dataclass
class Setup:
    """Everything an arm needs to run: paths, step counts, limits, and the cached import probes."""

    model: Path
    data: Path
    logs: Path
    runs: Path
    resolution: int
    short_steps: int
    extra_steps: int
    cuda: bool
    timeout: float
    budget: float | None
    examples: Path | None = None
    runner: Path | None = None
    start: float = field(default_factory=time.monotonic)
    probes: dict = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def plan(cuda: bool, tiny: bool) -> tuple[list[Arm], list[Arm]]:
    """(comparison arms, the rest) in running order; the generate ratio runs between the two lists.

    Tiny: two arms of two processes per implementation (process start-up dominates on a CPU). CPU: precision
    "no" only (our fp16 needs CUDA; bf16 on CPU is slow). GPU: the fp16 pairs first, then everything else."""
    def pair(base, precision, *options):
        return [Arm(base, impl, precision, options) for impl in ("ours", "diffusers")]

    if tiny:
        return pair("dreambooth", "no") + pair("lora", "no", "gradient_checkpointing"), []
    bases = ("dreambooth", "lora")
    if not cuda:
        return ([a for b in bases for a in pair(b, "no")],
                [a for b in bases for a in pair(b, "no", "gradient_checkpointing")])
    singles = [("bf16", ()), ("fp16", ("xformers",)), ("fp16", ("8bit_adam",)), ("fp16", ("zero2",))]
    # the regularizers against their bases (goals: ClassDiffusion <= 1.05x, SuDe <= 1.4x; sude's base is the
    # dreambooth fp16 arm above)
    rest = [Arm(m, "ours", "fp16") for m in ("custom_diffusion", "classdiffusion", "sude")]
    rest += [a for b in bases for a in pair(b, "fp16", "gradient_checkpointing")]
    rest += [Arm(b, "ours", p, o) for p, o in singles for b in bases]
    return [a for b in bases for a in pair(b, "fp16")], rest


def probe(setup: Setup, module: str) -> bool:
    """Whether `module` imports in a fresh interpreter (cached). Nothing is ever installed: the lent machine
    has no network, so an optional package is used only where it is already there."""
    if module not in setup.probes:
        try:
            proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                                  timeout=180, env=child_env())
            lines = proc.stderr.strip().splitlines()
            setup.probes[module] = "ok" if proc.returncode == 0 else (lines[-1] if lines else f"exit {proc.returncode}")
        except subprocess.TimeoutExpired:
            setup.probes[module] = "import timed out"
    return setup.probes[module] == "ok"


def skip_reason(arm: Arm, setup: Setup) -> str | None:
    """Why `arm` cannot run here, or None."""
    if setup.budget is not None and setup.elapsed() > setup.budget:
        return f"time budget of {setup.budget:.0f} s spent"
    if arm.precision != "no" and not setup.cuda:
        return f"{arm.precision} needs CUDA"
    for option in arm.options:
        if option in NEEDS_MODULE and not setup.cuda:
            return f"{option} needs CUDA"
        if option in NEEDS_MODULE and not probe(setup, NEEDS_MODULE[option]):
            return f"{NEEDS_MODULE[option]} not importable ({setup.probes[NEEDS_MODULE[option]]})"
    if arm.impl == "diffusers":
        if setup.examples is None:
            return "no --examples DIR with diffusers' scripts"
        if not (setup.examples / SCRIPTS[arm.base]).is_file():
            return f"{SCRIPTS[arm.base]} not in {setup.examples}"
        if setup.runner is None and not probe(setup, "torchvision"):
            return f"diffusers' scripts import torchvision, which is not importable ({setup.probes['torchvision']})"
        if not probe(setup, "tensorboard"):  # their --report_to tensorboard
            return f"diffusers' scripts log to tensorboard, which is not importable ({setup.probes['tensorboard']})"
    return None


def ours_command(arm: Arm, setup: Setup, steps: int, out_dir: Path) -> list[str]:
    """Our trainer (training/train.py) with the arm's settings as dotted overrides, under measure.py."""
    args = [str(ROOT / "training" / "train.py"), "--config", str(ROOT / "configs" / f"{arm.base}.yaml"),
            f"--model.pretrained={setup.model}", "--model.local_files_only=true",
            f"--data.instance_data_dir={setup.data}", f"--data.resolution={setup.resolution}",
            f"--train.output_dir={out_dir}", f"--train.max_train_steps={steps}",
            "--train.checkpointing_steps=1000000", "--train.validation_prompt=null", "--train.report_to=tensorboard",
            f"--train.mixed_precision={arm.precision}",
            f"--train.gradient_checkpointing={str('gradient_checkpointing' in arm.options).lower()}",
            "--train.train_batch_size=1", *OURS_OVERRIDES.get(arm.base, [])]
    args += [OURS_FLAGS[o] for o in arm.options if OURS_FLAGS[o]]
    launcher = [sys.executable]
    if "zero2" in arm.options:
        zero2 = ROOT / "training" / "deepspeed_zero2.yaml"
        launcher += ["-m", "accelerate.commands.launch", "--config_file", str(zero2), "--num_processes", "1",
                     "--mixed_precision", arm.precision]
    return [*launcher, str(HERE / "measure.py"), *args]


def diffusers_command(arm: Arm, setup: Setup, steps: int, out_dir: Path) -> list[str]:
    """diffusers' example script with the same settings, under measure.py (and the runner, if given)."""
    args = [str(setup.examples / SCRIPTS[arm.base]), "--pretrained_model_name_or_path", str(setup.model),
            "--instance_data_dir", str(setup.data), "--instance_prompt", PROMPT,
            "--resolution", str(setup.resolution), "--train_batch_size", "1", "--max_train_steps", str(steps),
            "--checkpointing_steps", "1000000", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
            "--seed", "0", "--center_crop", "--mixed_precision", arm.precision, "--report_to", "tensorboard",
            "--learning_rate", LEARNING_RATE[arm.base], "--output_dir", str(out_dir)]
    args += ["--rank", "4"] if arm.base == "lora" else []
    args += [DIFFUSERS_FLAGS[o] for o in arm.options]
    runner = [str(setup.runner)] if setup.runner else []
    return [sys.executable, str(HERE / "measure.py"), *runner, *args]


def child_env() -> dict:
    """The environment of every child: offline, our checkout importable, no progress bars in the logs."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]


def run_measured(cmd: list[str], log: Path, timeout: float) -> dict:
    """Run `cmd` (stdout/stderr to log.out/log.err) and return measure.py's record, or {"error": ...}.

    The child gets its own process group so a timeout also ends what it started (accelerate's workers)."""
    record = log.with_suffix(".json")
    record.unlink(missing_ok=True)
    err_path = log.with_suffix(".err")
    with open(log.with_suffix(".out"), "w") as out, open(err_path, "w") as err:
        (log.with_suffix(".cmd")).write_text(" ".join(cmd) + "\n", encoding="utf-8")
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**child_env(), MEASURE_ENV: str(record)}, stdout=out,
                                stderr=err, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"error": f"timed out after {timeout:.0f} s\n" + _tail(err_path), "timed_out": True}
    if code != 0 or not record.exists():
        return {"error": f"exit status {code}\n" + _tail(err_path)}
    return json.loads(record.read_text(encoding="utf-8"))


def new_row(arm: Arm) -> dict:
    return {"arm": arm.name, "kind": "train", "impl": arm.impl, "base": arm.base, "precision": arm.precision,
            "options": list(arm.options), "sec_per_step": None, "peak_cuda_mb": None, "max_rss_mb": None,
            "wall_short_s": None, "wall_long_s": None, "skipped": None, "error": None}


def measure_arm(arm: Arm, setup: Setup) -> dict:
    """The arm's row: skipped, failed (the child's stderr tail), or timed by a short and a long run."""
    row = new_row(arm)
    row["skipped"] = skip_reason(arm, setup)
    if row["skipped"]:
        return row
    command = ours_command if arm.impl == "ours" else diffusers_command
    short, extra = setup.short_steps, setup.extra_steps
    for phase, steps in (("short", short), ("long", short + extra)):
        out_dir = setup.runs / f"{arm.slug}-{phase}"
        left = None if setup.budget is None else setup.budget + 60 - setup.elapsed()
        timeout = setup.timeout if left is None else max(30.0, min(setup.timeout, left))
        result = run_measured(command(arm, setup, steps, out_dir), setup.logs / f"{arm.slug}-{phase}", timeout)
        shutil.rmtree(out_dir, ignore_errors=True)  # a DreamBooth UNet is 3.4 GB: 30 runs would fill the disk
        if result.get("timed_out") and timeout < setup.timeout:
            row["skipped"] = f"time budget of {setup.budget:.0f} s ran out during the {phase} run"
            return row
        if "error" in result:
            row["error"] = result["error"][-2000:]
            return row
        row[f"wall_{phase}_s"] = result["wall_s"]
        row.update(peak_cuda_mb=result["peak_cuda_mb"], max_rss_mb=result["max_rss_mb"])  # the long run's
    row["sec_per_step"] = sec_per_step(row["wall_short_s"], row["wall_long_s"], extra)
    return row


def generate_row(setup: Setup, steps: int, rounds: int) -> dict:
    """The generate-vs-plain row, measured in this process (after the comparison arms, before the rest)."""
    import gc
    import traceback

    import torch

    from generate import generate_ratio

    row = {"arm": "generate vs plain pipeline", "kind": "generate", "impl": "ours", "ratio": None,
           "skipped": None, "error": None}
    if setup.budget is not None and setup.elapsed() > setup.budget:
        row["skipped"] = f"time budget of {setup.budget:.0f} s spent"
        return row
    try:
        row.update(generate_ratio(setup.model, "cuda" if setup.cuda else "cpu", steps, rounds))
    except Exception:  # noqa: BLE001 - recorded in the row; the training arms go on
        row["error"] = traceback.format_exc()[-2000:]
    if setup.cuda:
        gc.collect()  # the two pipelines may sit in reference cycles
        torch.cuda.empty_cache()  # give their memory back to the training children
    return row


def header(setup: Setup, tiny: bool) -> dict:
    """Where and how this run was made."""
    import datetime
    import platform

    import diffusers
    import torch

    device = torch.cuda.get_device_name(0) if setup.cuda else (platform.processor() or platform.machine())
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__, "python": platform.python_version(),
            "model": "tiny sd1 (personalize.tiny)" if tiny else "SD-1.5 shapes, random weights, float32",
            "model_dir": str(setup.model),
            "resolution": setup.resolution, "short_steps": setup.short_steps, "extra_steps": setup.extra_steps,
            "budget_s": setup.budget, "probes": setup.probes}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the tiny test model at its native size (CPU smoke test)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu-bench", help="results.json/md and logs")
    p.add_argument("--work", type=Path, default=None,
                   help="model, images and run folders (default: --out with --tiny, else /tmp/personalize-gpu-bench, "
                        "so the 4.3 GB model never lands in --out; a second run reuses the model)")
    p.add_argument("--examples", type=Path, default=None, help="folder with diffusers' train_dreambooth*.py")
    p.add_argument("--examples-runner", type=Path, default=None,
                   help="run diffusers' scripts through this file (it takes the script path as first argument)")
    p.add_argument("--steps", type=int, default=None, help="N, the long run's extra steps (default 30; tiny 3)")
    p.add_argument("--short-steps", type=int, default=None, help="S, the short run's steps (default 3; tiny 2)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which no arm starts (default 400 at full size, none with --tiny)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per process (default 240; tiny 150)")
    return p.parse_args(argv)


def make_setup(args: argparse.Namespace) -> Setup:
    """Build (or reuse) the model and write the images; the step counts and limits of this mode."""
    import torch

    from model import ensure_model, native_resolution

    from personalize.tiny import write_concept_images

    tiny, start = args.tiny, time.monotonic()
    work = args.work or (args.out if tiny else Path("/tmp/personalize-gpu-bench"))
    logs, runs = args.out / "logs", work / "runs"
    for folder in (args.out, work, logs, runs):
        folder.mkdir(parents=True, exist_ok=True)
    print(f"model: {work / 'model'} ({'tiny' if tiny else 'SD-1.5 shapes, random weights'})", flush=True)
    model = ensure_model(work / "model", TOKENIZER_DIR, tiny)
    resolution = native_resolution(model)
    side = max(resolution, 64)
    data = write_concept_images(work / "data", ("red", "blue", "green", "orange", "purple"), size=(side, side))
    return Setup(model=model, data=data, logs=logs, runs=runs, resolution=resolution,
                 short_steps=args.short_steps or (2 if tiny else 3), extra_steps=args.steps or (3 if tiny else 30),
                 cuda=torch.cuda.is_available(), timeout=args.timeout or (150 if tiny else 240),
                 budget=args.budget if args.budget is not None else (None if tiny else 400.0),
                 examples=args.examples, runner=args.examples_runner, start=start)


def describe(row: dict, elapsed: float) -> str:
    """The running line printed after each arm."""
    if row.get("skipped"):
        status = "skipped: " + row["skipped"]
    elif row.get("error"):
        lines = row["error"].strip().splitlines()
        status = "ERROR: " + (lines[-1] if lines else "?")
    elif row["kind"] == "generate":
        status = f"generate / plain {row['ratio']:.3f}"
    else:
        peak = "-" if row["peak_cuda_mb"] is None else f"{row['peak_cuda_mb']:.0f}"
        status = f"{row['sec_per_step']:.4f} s/step, peak CUDA {peak} MB, max RSS {row['max_rss_mb']:.0f} MB"
    return f"[{elapsed:6.1f} s] {row['arm']}: {status}"


def main(argv: list[str] | None = None) -> int:
    """Run every arm, rewrite the results after each; 1 if one of our arms (or generate) failed."""
    args = parse_args(argv)
    setup = make_setup(args)
    head = header(setup, args.tiny)
    first, rest = plan(setup.cuda, args.tiny)
    gpu_full = setup.cuda and not args.tiny
    steps = [lambda a=a: measure_arm(a, setup) for a in first]
    steps.append(lambda: generate_row(setup, 20 if gpu_full else 2, 5 if gpu_full else 3))
    steps += [lambda a=a: measure_arm(a, setup) for a in rest]
    rows: list[dict] = []
    for step in steps:
        rows.append(step())
        write_results(args.out, head, rows)
        print(describe(rows[-1], setup.elapsed()), flush=True)
    failed = [r["arm"] for r in rows if r["impl"] == "ours" and r.get("error")]
    print(f"results: {args.out / 'results.md'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
