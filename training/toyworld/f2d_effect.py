"""Face2Diffusion's toy-world measurement (issue 19), as many runs in parallel: a tuning sweep on training seed 0,
then the chosen recipe, its ablations and the one-shot tuning arms on training seeds 1-5.

    python training/toyworld/f2d_effect.py --out outputs/f2d-effect --slots 12 --deadline 480   # a GPU machine
    python training/toyworld/f2d_effect.py --out /tmp/f2d-smoke --tiny                          # plumbing only

1. **Sweep** (seed 0, the tuning prompts "a photo of ...", sampling seeds 9000+): stage-1 and stage-2 variants
   (`SWEEP`), each stage-2 run measured at its checkpoints and its end.
2. **Choice**, written down before any measurement prompt is drawn: the candidate with the highest identity rate
   among those whose other asks are followed in >= 0.80 (ties: the fewer steps).
3. **Measurement** (seeds 1-5, prompts "a portrait of" / "a picture of", sampling seeds 7000+): the choice, its
   ablations (no expression guidance, no CGDR, the last block's CLS alone) and one-shot DreamBooth / textual
   inversion on the same photos (`face_effect.ARMS`).

Each job is a process (`training/toyworld/f2d.py`, `python -m personalize.eval.face_effect`); what a job
writes stays under --out; `results.json` gathers every rate. Jobs still running at --deadline seconds are
stopped and reported as missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
SEEDS = [1, 2, 3, 4, 5]
# stage-1 variants (overrides of configs/toyworld/f2d_msid.yaml) and stage-2 variants on them
STAGE1 = {"s1base": [], "s1short": ["train.max_train_steps=300"], "s1d32": ["method.embed_dim=32"],
          "s1soft": ["method.arcface_margin=0.0"], "s1last": ["method.ext_depths=[3]"]}
SWEEP = {"base": ("s1base", []), "noise": ("s1base", ["method.id_noise=0.5"]),
         "lr3e-4": ("s1base", ["train.learning_rate=3.0e-4"]), "short": ("s1short", []), "d32": ("s1d32", []),
         "soft": ("s1soft", [])}
ABLATIONS = {"no_eg": ("", ["method.expression_guidance=false"]), "no_cgdr": ("", ["method.cgdr=false"]),
             "last_layer": ("method.ext_depths=[3]", [])}


class Job:
    def __init__(self, name: str, cmd: list[str], needs: tuple[str, ...] = ()):
        self.name, self.cmd, self.needs = name, cmd, needs
        self.proc, self.start, self.seconds, self.rc = None, None, None, None


def stage1_job(out: Path, name: str, seed: int, set1: list[str]) -> Job:
    d = out / name
    return Job(name, [PY, str(ROOT / "training" / "toyworld" / "f2d.py"), "--seed", str(seed), "--out", str(d / "art"),
                      "--work", str(d / "work"), "--stage1-only", *[x for s in set1 for x in ("--set1", s)]])


def train_job(out: Path, name: str, seed: int, set2: list[str], steps: int, every: int, msid_from: str) -> Job:
    """Stage 2 on `msid_from`'s stage-1 file, with checkpoints every `every` steps."""
    d = out / name
    cmd = [PY, str(ROOT / "training" / "toyworld" / "f2d.py"), "--seed", str(seed), "--out", str(d / "art"),
           "--work", str(d / "work"), "--set", f"train.max_train_steps={steps}",
           "--set", f"train.checkpointing_steps={every}", "--set", "train.validation_prompt=null",
           "--msid", str(out / msid_from / "art" / "f2d_msid.safetensors"), *[x for s in set2 for x in ("--set", s)]]
    return Job(name, cmd, (msid_from,))


def eval_job(out: Path, name: str, steps: int, every: int, prompts: str, sample_seed: int, extra: list[str]) -> Job:
    d = out / name
    checkpoints = [str(d / "work" / "map" / f"checkpoint-{k}") for k in range(every, steps, every)]
    cmd = [PY, "-m", "personalize.eval.face_effect", "--encoder", str(d / "art" / "face2diffusion.safetensors"),
           "--checkpoint", *checkpoints, "--prompts", prompts, "--sample-seed", str(sample_seed),
           "--out", str(d / "rates.json"), *extra]
    return Job(name + ":eval", cmd, (name,))


def sweep_jobs(out: Path, a) -> list[Job]:
    jobs = [stage1_job(out, f"sweep-{k}", 0, v + a.extra1) for k, v in STAGE1.items()]
    for k, (s1, set2) in {**SWEEP, "no_eg": ("s1base", ABLATIONS["no_eg"][1]),
                          "no_cgdr": ("s1base", ABLATIONS["no_cgdr"][1]), "last_layer": ("s1last", [])}.items():
        jobs.append(train_job(out, f"sweep2-{k}", 0, set2 + a.extra2, a.steps2, a.steps2 // 3, f"sweep-{s1}"))
        jobs.append(eval_job(out, f"sweep2-{k}", a.steps2, a.steps2 // 3, "tuning", 9000, a.eval_extra))
    return jobs


def choose(out: Path, a) -> dict | None:
    """The sweep's choice (module docstring, step 2) from the rates on the tuning prompts."""
    rows = []
    for k, (s1, set2) in SWEEP.items():
        f = out / f"sweep2-{k}" / "rates.json"
        if not f.is_file():
            continue
        for label, r in json.loads(f.read_text()).items():
            steps = a.steps2 if label == "final" else int(label.split("-")[1])
            rows.append({"variant": k, "stage1": s1, "set2": set2, "steps": steps, **r})
    ok = [r for r in rows if r["other_asks"] >= 0.8] or rows
    return max(ok, key=lambda r: (r["identity"], -r["steps"])) if ok else None


def final_jobs(out: Path, a, c: dict) -> list[Job]:
    jobs, set1 = [], STAGE1[c["stage1"]] + a.extra1
    for seed in SEEDS[:a.seeds]:
        jobs += [stage1_job(out, f"final-s1-{seed}", seed, set1),
                 stage1_job(out, f"final-s1last-{seed}", seed, set1 + [ABLATIONS["last_layer"][0]])]
        for arm, (extra1, extra2) in {"chosen": ("", []), **ABLATIONS}.items():
            name, s1 = f"final-{arm}-{seed}", f"final-s1last-{seed}" if extra1 else f"final-s1-{seed}"
            jobs.append(train_job(out, name, seed, c["set2"] + extra2 + a.extra2, c["steps"], c["steps"], s1))
            jobs.append(eval_job(out, name, c["steps"], c["steps"], "measure", 7000, a.eval_extra))
    return jobs


def arm_jobs(out: Path, a) -> list[Job]:
    from personalize.toyworld import faces

    halves = [faces.HELD_OUT[:8], faces.HELD_OUT[8:]] if not a.tiny else [faces.HELD_OUT[:1]]
    return [Job(f"arm-{arm}-{seed}-{h}", [PY, "-m", "personalize.eval.face_effect", "--arm", arm, "--seed",
                                          str(seed), "--work", str(out / "arms"), "--identities", *map(str, ids),
                                          "--out", str(out / "arms" / f"{arm}-{seed}-{h}.json"), *a.eval_extra,
                                          *a.arm_extra])
            for seed in SEEDS[:a.seeds] for arm in ("dreambooth", "textual_inversion") for h, ids in enumerate(halves)]


def run(jobs: list[Job], slots: int, arm_slots: int, deadline: float, log, more=None, more_by: float = 1e18):
    """Run jobs (in list order, each once its `needs` succeeded) `slots` at a time, at most `arm_slots` of them
    "arm-" jobs, until `deadline`. `more()` is called once no other job is pending or running (or at `more_by`,
    stopping those still running) and returns further jobs. Returns every job."""
    done, all_jobs, pending, running = {}, list(jobs), list(jobs), []
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    while pending or running or more:
        for j in [j for j in running if j.proc.poll() is not None]:
            j.rc, j.seconds = j.proc.returncode, time.time() - j.start
            running.remove(j)
            done[j.name] = j.rc == 0
            say(log, f"{j.name}: rc {j.rc}, {j.seconds:.0f}s")
        for j in [j for j in pending if any(done.get(n) is False for n in j.needs)]:
            pending.remove(j)
            done[j.name] = False
        main_left = [j for j in pending + running if not j.name.startswith("arm-")]
        if more and (not main_left or time.time() > more_by):
            stop(log, [j for j in running if not j.name.startswith("arm-")], "at the sweep's deadline")
            running = [j for j in running if j.proc.returncode is None or j.name.startswith("arm-")]
            pending = [j for j in pending if j.name.startswith("arm-")]
            extra, more = more(), None
            pending, all_jobs = extra + pending, all_jobs + extra
        for j in [j for j in pending if all(done.get(n) for n in j.needs)]:
            arms = sum(r.name.startswith("arm-") for r in running)
            if len(running) >= slots or (j.name.startswith("arm-") and arms >= arm_slots):
                continue
            pending.remove(j)
            j.start = time.time()
            j.proc = subprocess.Popen(j.cmd, cwd=ROOT, env=env, stdout=open(LOGS / f"{j.name}.log", "w"),
                                      stderr=subprocess.STDOUT)
            running.append(j)
        if time.time() > deadline:
            stop(log, running, "at the deadline")
            break
        time.sleep(0.5)
    return all_jobs


def say(log, text: str) -> None:
    print(f"[{time.time() - T0:6.0f}s] {text}", file=log, flush=True)


def stop(log, jobs: list[Job], why: str) -> None:
    for j in jobs:
        j.proc.kill()
        j.proc.wait()
        say(log, f"{j.name}: stopped {why}")


def gather(out: Path, jobs: list[Job], choice: dict | None) -> dict:
    result = {"choice": choice, "jobs": {j.name: {"rc": j.rc, "seconds": j.seconds} for j in jobs}, "rates": {}}
    for f in sorted(out.glob("*/rates.json")) + sorted((out / "arms").glob("*.json")):
        result["rates"][f.parent.name if f.name == "rates.json" else f.stem] = json.loads(f.read_text())
    for f in sorted(out.glob("*/art/metrics.json")):
        result["rates"].setdefault("metrics", {})[f.parent.parent.name] = json.loads(f.read_text())
    return result


T0 = time.time()
LOGS = Path(".")


def main() -> None:
    global LOGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--arm-slots", type=int, default=1, help="of the slots, at most this many run arm jobs")
    ap.add_argument("--deadline", type=float, default=1e9, help="seconds from the start")
    ap.add_argument("--sweep-deadline", type=float, default=None, help="choose by then even if the sweep runs on")
    ap.add_argument("--steps1", type=int, default=1500)
    ap.add_argument("--steps2", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="a few steps, one identity: plumbing only")
    ap.add_argument("--device", default="cpu", help="where the measurements generate")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    LOGS = out / "logs"
    LOGS.mkdir(parents=True, exist_ok=True)
    a.extra1, a.extra2, a.eval_extra, a.arm_extra = [], [], ["--device", a.device], []
    if a.tiny:
        a.steps2, a.seeds = 6, 1
        a.eval_extra += ["--identities", "0", "--per-prompt", "1"]
        a.extra1, a.extra2, a.arm_extra = ["train.max_train_steps=4"], ["method.middle_dim=32"], ["--arm-steps", "2"]
    log = open(out / "log.txt", "a")
    state = {}

    def after_sweep() -> list[Job]:
        state["choice"] = choice = choose(out, a)
        say(log, f"choice: {json.dumps(choice)}")
        (out / "choice.json").write_text(json.dumps(choice, indent=1) + "\n")
        return final_jobs(out, a, choice) if choice else []

    jobs = run(sweep_jobs(out, a) + arm_jobs(out, a), a.slots, a.arm_slots, T0 + a.deadline, log, after_sweep,
               T0 + (a.sweep_deadline or a.deadline))
    choice = state.get("choice")
    (out / "results.json").write_text(json.dumps(gather(out, jobs, choice), indent=1) + "\n")
    print(json.dumps({"choice": choice, "failed": [j.name for j in jobs if j.rc not in (0, None)]}, indent=1))


if __name__ == "__main__":
    main()
