"""Time `personalize export` and measure its files, per artifact kind and LoRA rank.

The artifacts are made from the base, not trained (export time does not depend on what was learned): a `lora`
artifact (kohya layout, rank 4 on to_q/k/v/out.0, as configs/lora.yaml), ESD-x and ESD-u erasures (`diff` on the
cross-attention / every other Linear and Conv2d), a DreamBooth `delta` (the whole UNet) and a Custom Diffusion
`delta` (cross-attention K/V plus a token). Each export is one in-process `export(...)` call, base loading
included, timed once per round; printed: seconds (median over rounds) and the file's size in MB.

    python benchmarks/bench_export.py [--model named|sd15] [--rounds 3] [--ranks 4 16 full] [--work DIR]

`named` (default): the tiny model with SD-1.5's parameter names (personalize.tiny). `sd15`: SD-1.5's shapes with
random weights (benchmarks/gpu/model.py; about 4.3 GB written to --work once, and up to ~16 GB of memory for
the DreamBooth arm); there `full` is skipped for the DreamBooth and ESD-u arms (a full-rank LoRA of the whole
UNet is about twice the UNet).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "clip_tokenizer"


def make_model(work: Path, kind: str) -> Path:
    folder = work / f"model-{kind}"
    if (folder / "model_index.json").exists():
        return folder
    if kind == "named":
        from personalize.tiny import save_named_model

        return save_named_model(folder, TOKENIZER, "sd1")
    sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
    from model import save_sd15_random

    return save_sd15_random(folder, TOKENIZER)


def make_artifacts(model: Path, work: Path) -> dict[str, Path]:
    """name -> artifact file, written once per model."""
    from diffusers import UNet2DConditionModel

    from personalize import kohya
    from personalize.artifacts import save_artifact
    from personalize.methods.erasure.filters import selected_parameters

    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet", local_files_only=True)
    params, g, base = dict(unet.named_parameters()), torch.Generator().manual_seed(0), str(model)
    noise = lambda p: torch.randn(p.shape, generator=g) * 1e-3  # noqa: E731
    out = {name: work / f"{model.name}-{name}.safetensors" for name in
           ("lora", "esd_x", "esd_u", "dreambooth", "custom_diffusion")}
    if all(p.exists() for p in out.values()):
        return out
    factors = {f"unet.{n}": kohya.Factor(torch.randn(4, m.in_features, generator=g) * 0.01,
                                         torch.randn(m.out_features, 4, generator=g) * 0.01, 1.0)
               for n, m in unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))}
    save_artifact(out["lora"], "lora", base, weights=kohya.state_dict(factors), kind="lora")
    for name, method in (("esd_x", "xattn"), ("esd_u", "noxattn")):
        keys = selected_parameters(unet, method)
        save_artifact(out[name], "esd", base, weights={f"unet.{k}": noise(params[k]) for k in keys}, kind="diff")
    delta = {f"unet.{k}": (p.detach() + noise(p)).contiguous() for k, p in params.items()}
    save_artifact(out["dreambooth"], "dreambooth", base, weights=delta, kind="delta")
    kv = {k: v for k, v in delta.items() if ".attn2.to_k." in k or ".attn2.to_v." in k}
    save_artifact(out["custom_diffusion"], "custom_diffusion", base, embeddings={"sks": torch.randn(1, 768 if
                  "sd15" in model.name else 32)}, weights=kv, kind="delta")
    return out


def arms(arts: dict[str, Path], ranks: list[str], big: bool) -> list[tuple[str, str, Path, str | None]]:
    """(label, format, artifact, rank) for every measured export."""
    out = [("lora (own factors, exact)", "lora", arts["lora"], None)]
    for name in ("esd_x", "esd_u", "dreambooth", "custom_diffusion"):
        for rank in ranks:
            if big and rank == "full" and name in ("esd_u", "dreambooth"):
                continue
            out.append((f"{name} rank {rank}", "lora", arts[name], rank))
    out += [("dreambooth checkpoint fp32", "checkpoint", arts["dreambooth"], None),
            ("dreambooth checkpoint fp16", "checkpoint-fp16", arts["dreambooth"], None)]
    return out


def main() -> int:
    from personalize.cpu import configure_threads
    from personalize.export.command import export

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["named", "sd15"], default="named")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ranks", nargs="+", default=["4", "16", "full"])
    parser.add_argument("--work", default=None, help="folder for the model and artifacts (default: a temp folder)")
    args = parser.parse_args()
    configure_threads(None)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work, args.model)
    arts = make_artifacts(model, work)
    print(f"model: {args.model} ({model}), threads {torch.get_num_threads()}, {args.rounds} rounds")
    print("| export | seconds (median, min-max) | file MB |\n|---|---|---|")
    for label, fmt, art, rank in arms(arts, args.ranks, args.model == "sd15"):
        out, times = work / "out" / f"{label.replace(' ', '_')}.safetensors", []
        for _ in range(args.rounds):
            start = time.perf_counter()
            export([str(art)], fmt.split("-")[0], rank=rank, out=str(out), half=fmt.endswith("fp16"), force=True)
            times.append(time.perf_counter() - start)
        print(f"| {label} | {statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f}) | "
              f"{out.stat().st_size / 1e6:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
