"""Train the toy world's Face2Diffusion encoder (both stages) and write it to assets/toyworld_f2d/.

    python training/toyworld/f2d.py                      # configs/toyworld/f2d_msid.yaml, then face2diffusion.yaml
    python training/toyworld/f2d.py --seed 1 --out /tmp/f2d-1 --set method.cgdr=false   # an ablation arm
    python training/toyworld/f2d.py --seed 1 --out /tmp/f2d-l --set1 method.ext_depths=[3]   # last layer only

Stage 1 (the MSID encoder, ArcFace) and stage 2 (the mapping network, CGDR + expression guidance) see only the
128 training identities. Written: f2d_msid.safetensors, face2diffusion.safetensors and metrics.json (seconds
per stage, steps, the stage-1 retrieval accuracy of held-out identities across expressions/accessories/
backgrounds). `--msid FILE` skips stage 1 (ablations of stage 2 reuse one encoder).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def retrieval(msid_file: Path) -> float:
    """Top-1 retrieval of the 16 held-out identities: photo set 1 against photo set 2 (cosine of MSID vectors)."""
    import numpy as np
    import torch

    from personalize.methods.face2diffusion.encoder import load_msid
    from personalize.toyworld import faces

    msid = load_msid(msid_file)

    def embed(seed):
        rng = random.Random(seed)
        x = np.stack([np.asarray(faces.w.render(faces.face_scene(i, rng))) for i in faces.HELD_OUT])
        with torch.no_grad():
            return torch.nn.functional.normalize(msid(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1))

    sim = embed(1) @ embed(2).T
    return float((sim.argmax(1) == torch.arange(len(sim))).float().mean())


def stage(config: str, out: Path, seed: int, overrides: dict) -> tuple[Path, float]:
    from personalize.config import load_config, merge_sections
    from personalize.trainer import train

    diff = {"train": {"output_dir": str(out), "seed": seed, "report_to": "none"}}
    merge_sections(diff, overrides)
    start = time.perf_counter()
    path = train(load_config([str(ROOT / "configs" / "toyworld" / config)], diff)).artifact
    return path, time.perf_counter() - start


def assemble(msid: Path, checkpoint: Path, out: Path, seed: int, overrides: dict) -> Path:
    """The stage-2 artifact from a mapping checkpoint (trainable.safetensors) of a run on `msid` that was stopped
    at that step: its config is the stage-2 config stopped there (a constant schedule after the warm-up, so the
    checkpoint is what a run of that many steps writes)."""
    from safetensors.torch import load_file

    from personalize.artifacts import save_content
    from personalize.components import load_components
    from personalize.config import config_json, load_config, merge_sections
    from personalize.methods import build_method
    from personalize.methods.face2diffusion.encoder import load_strict
    from personalize.methods.face2diffusion.model import MappingConfig, MappingNetwork

    step = int(checkpoint.name.split("-")[1])
    diff = {"train": {"seed": seed, "max_train_steps": step, "report_to": "none"}, "method": {"msid": str(msid)}}
    merge_sections(diff, overrides)
    cfg = load_config([str(ROOT / "configs" / "toyworld" / "face2diffusion.yaml")], diff)
    method = build_method(cfg)
    o = method.o
    width = load_components(cfg.model.pretrained).text_encoder.get_input_embeddings().weight.shape[1]
    net = MappingNetwork(MappingConfig(method.msid.config.out_dim, o.middle_dim, width, o.n_layer, o.dropout,
                                       o.exp_dim))
    load_strict(net, load_file(str(checkpoint / "trainable.safetensors")), "mapping", checkpoint)
    method.modules = {"mapping": net}
    return save_content(out / "face2diffusion.safetensors", "face2diffusion", cfg.model.pretrained,
                        method.artifact(), config_json(cfg))


def main() -> None:
    from personalize.config import parse_overrides

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "assets" / "toyworld_f2d"))
    ap.add_argument("--work", default=str(ROOT / "outputs" / "toyworld-f2d-train"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--msid", default=None, help="reuse this stage-1 file")
    ap.add_argument("--set", action="append", default=[], help="stage-2 override, e.g. method.cgdr=false")
    ap.add_argument("--stage1-only", action="store_true", help="write f2d_msid.safetensors and stop")
    ap.add_argument("--from-checkpoint", help="with --msid: write the encoder of this stage-2 checkpoint-<step> "
                    "folder instead of training (a run stopped there)")
    ap.add_argument("--set1", action="append", default=[], help="stage-1 override, e.g. method.ext_depths=[3]")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"seed": args.seed, "stage1_overrides": args.set1, "stage2_overrides": args.set}
    if args.msid:
        msid = Path(args.msid)
    else:
        msid, metrics["stage1_seconds"] = stage("f2d_msid.yaml", work / "msid", args.seed,
                                                parse_overrides([f"--{item}" for item in args.set1]))
    metrics["stage1_heldout_retrieval"] = retrieval(msid)
    if args.stage1_only:
        shutil.copyfile(msid, out / "f2d_msid.safetensors")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        return
    overrides = parse_overrides([f"--{item}" for item in args.set])
    if args.from_checkpoint:
        metrics["from_checkpoint"] = Path(args.from_checkpoint).name
        assemble(msid, Path(args.from_checkpoint), out, args.seed, overrides)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        return
    overrides.setdefault("method", {})["msid"] = str(msid)
    f2d, metrics["stage2_seconds"] = stage("face2diffusion.yaml", work / "map", args.seed, overrides)
    if not args.msid:
        shutil.copyfile(msid, out / "f2d_msid.safetensors")
    shutil.copyfile(f2d, out / "face2diffusion.safetensors")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
