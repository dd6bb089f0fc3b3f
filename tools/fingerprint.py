"""A fingerprint of what the project produces for fixed seeds: the check that a refactor changed no behaviour.

    python tools/fingerprint.py --out before.json        # on the old commit
    python tools/fingerprint.py --out after.json         # on the new one
    python tools/fingerprint.py --compare before.json after.json

It trains short runs of every method family on a tiny SD1 model (and the toy world where a method needs it:
Face2Diffusion, erasure for the image checks), hashes every tensor and the metadata of each artifact, and hashes
the PNG bytes (pixels and text chunks) of generations with suppression, a face, an erasure and an erasure
comparison on fixed seeds. Two runs on the same machine and torch build give the same JSON; `--compare` lists
what differs. About 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one
TOKENIZER = ROOT / "tests" / "fixtures" / "clip_tokenizer"
CD = {"name": "custom_diffusion"}
TI = {"name": "textual_inversion"}
DB = {"name": "dreambooth"}

# name -> (method section, train overrides, data overrides); `{}` prompts for methods that add a token
RUNS = {
    "ti_2vec_accum_val": ({"name": "textual_inversion", "num_vectors": 2},
                          {"gradient_accumulation_steps": 2, "validation_prompt": "a photo of {} dog",
                           "validation_steps": 2, "num_validation_images": 1}, {}),
    "lora_b2_snr": ({"name": "lora", "rank": 2}, {"train_batch_size": 2, "snr_gamma": 5.0}, {}),
    "cd_offset": ({"name": "custom_diffusion"}, {"offset_noise": True}, {}),
    "cd_crossattn_cache": ({"name": "custom_diffusion", "freeze_model": "crossattn", "rescale_aug": False}, {"cache_latents": True},
                           {"center_crop": True}),
    "db_te_prior": ({"name": "dreambooth", "train_text_encoder": True},
                    {"with_prior_preservation": True},
                    {"class_prompt": "a photo of dog", "num_class_images": 2}),
    "classdiffusion_cd": ({"name": "classdiffusion", "class_word": "dog", "base": CD}, {}, {}),
    "classdiffusion_db": ({"name": "classdiffusion", "class_word": "dog", "base": DB}, {}, {}),
    "classdiffusion_ti_official": ({"name": "classdiffusion", "class_word": "dog", "base": TI,
                                    "spl_pooling": "official"}, {}, {}),
    "sude_db": ({"name": "sude", "class_word": "dog", "base": DB}, {}, {}),
    "sude_lora": ({"name": "sude", "class_word": "dog", "base": {"name": "lora", "rank": 2}}, {}, {}),
    "dct": ({"name": "dct", "classifier": "toyworld", "target": "identity:18", "sample_steps": 3,
             "guidance_scale": 3.0}, {}, {}),
    "esd": ({"name": "esd", "concepts": ["a photo of a dog"], "ddim_steps": 4}, {}, {}),
    "abo": ({"name": "abo", "concepts": ["a photo of a dog"], "alternatives": ["a photo of a cat"],
             "ddim_steps": 4}, {}, {}),
    "uce": ({"name": "uce", "concepts": ["dog"], "erase_scale": 10.0}, {}, {}),
}
TOKEN_METHODS = ("textual_inversion", "custom_diffusion", "dct")
F2D_MSID_SMALL = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "ext_depths": [0, 1]}
F2D_MAP_SMALL = {"middle_dim": 32, "n_layer": 2, "dropout": 0.1, "exp_dim": 3}


def tensor_hash(tensors: dict) -> dict:
    out = {}
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        out[key] = hashlib.sha256(t.cpu().view(-1).view(torch_uint8()).numpy().tobytes()).hexdigest()[:16] \
            + f":{tuple(t.shape)}:{t.dtype}"
    return out


def torch_uint8():
    import torch

    return torch.uint8


def artifact_print(path: Path, root: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
    metadata.pop("created", None)
    metadata = {k: v.replace(str(root), "<tmp>") for k, v in metadata.items()}  # this run's temp folder
    return {"tensors": tensor_hash(load_file(str(path))), "metadata": metadata}


def _uses_token(method: dict) -> bool:
    base = method.get("base")
    name = base.get("name") if isinstance(base, dict) else method["name"]
    return name in TOKEN_METHODS or method["name"] == "dct"


def train_runs(root: Path, only: list[str]) -> dict:
    from personalize.config import load_config
    from personalize.tiny import save_tiny_model
    from personalize.trainer import train

    from personalize.tiny import write_concept_images

    model = save_tiny_model(root / "tiny_sd1", TOKENIZER, "sd1", 32)
    data = write_concept_images(root / "concept")
    out = {}
    for name, (method, train_opts, data_opts) in RUNS.items():
        if only and name not in only:
            continue
        prompt = "a photo of {} dog" if _uses_token(method) else "a photo of sks dog"
        config = load_config([], {
            "model": {"pretrained": str(model)},
            "data": {"instance_data_dir": str(data), "instance_prompt": prompt} | data_opts,
            "train": {"output_dir": str(root / name), "max_train_steps": 3, "checkpointing_steps": 10_000,
                      "report_to": "none", "learning_rate": 1e-2, "seed": 7} | train_opts,
            "method": method})
        out[name] = artifact_print(Path(train(config).artifact), root)
        print(f"trained {name}", file=sys.stderr)
    return out


def f2d_runs(root: Path) -> dict:
    from personalize.config import load_config
    from personalize.trainer import train

    def run(out, method, batch):  # both stages on the toy world, 2 steps each, small networks
        return train(load_config([], {"model": {"pretrained": "toyworld"}, "method": method, "train": {
            "output_dir": str(out), "max_train_steps": 2, "train_batch_size": batch, "checkpointing_steps": 10_000,
            "report_to": "none", "learning_rate": 1e-3}})).artifact

    msid = run(root / "f2d" / "msid", {"name": "f2d_msid", **F2D_MSID_SMALL}, 4)
    f2d = run(root / "f2d" / "map", {"name": "face2diffusion", "msid": str(msid), **F2D_MAP_SMALL}, 2)
    return {"f2d_msid": artifact_print(Path(msid), root), "face2diffusion": artifact_print(Path(f2d), root)}


def png_hash(images) -> list[str]:
    hashes = []
    for g in images:
        buf = io.BytesIO()
        g.image.save(buf, format="PNG", pnginfo=g.pnginfo())
        hashes.append(hashlib.sha256(buf.getvalue()).hexdigest()[:16])
    return hashes


def generation_runs(root: Path) -> dict:
    """PNG bytes on the toy world: suppression (swr, swr+ito), a face photo, an erasure and a comparison."""
    from personalize.config import load_config
    from personalize.methods import make_edit
    from personalize.pipeline import load_pipeline
    from personalize.studio import Studio
    from personalize.trainer import train

    pipe = load_pipeline("toyworld", device="cpu")
    run = {"steps": 6, "seed": [3, 4]}
    out = {}
    prompt = "a small red triangle with stripes on a black background"
    for mode, extra in (("swr", {}), ("swr+ito", {"ito_iters": 2})):
        edit = make_edit("suppress_eot", {"words": ["stripes"], "suppress_mode": mode, **extra})
        out[f"suppress_{mode}"] = png_hash(pipe.generate(prompt, edits=[edit], **run))
    photo = str(ROOT / "assets" / "examples" / "one-face" / "0.png")
    face = make_edit("face2diffusion", {"face": [photo], "base": "toyworld", "encoder": "", "detector": ""})
    out["face"] = png_hash(pipe.generate("a photo of f l person on a blue background", edits=[face], **run))
    arts = root / "arts"
    config = load_config([ROOT / "configs" / "toyworld" / "uce.yaml"],
                         {"train": {"output_dir": str(arts / "uce"), "report_to": "none"}})
    train(config)
    studio = Studio(pipe, arts, root / "app")
    chosen = [e.rel for e in studio.entries() if e.usable]
    erased, without = studio.compare("a large orange triangle on a white background", artifacts=chosen, seed=[5, 6],
                                     steps=6)
    out["erasure"], out["compare_without"] = png_hash(erased), png_hash(without)
    out["entries"] = [e.label.rsplit(" | ", 1)[0] if e.modified else e.label for e in studio.entries()]
    return out


def renamed(value, renames: dict):
    """`value` with dict keys renamed, also inside JSON-object strings (the `config` metadata), which are parsed:
    a renamed key then sorts where the new name sorts."""
    if isinstance(value, dict):
        return {renames.get(k, k): renamed(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [renamed(v, renames) for v in value]
    if isinstance(value, str) and value.startswith("{"):
        try:
            return renamed(json.loads(value), renames)
        except json.JSONDecodeError:
            return value
    return value


def compare(a: dict, b: dict, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in compare(a.get(k), b.get(k), f"{path}/{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSON file to write")
    p.add_argument("--only", action="append", default=[], help="one training run by name (repeatable)")
    p.add_argument("--skip", action="append", default=[], choices=["train", "f2d", "generate"])
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    p.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                   help="with --compare: a renamed key, replaced in BEFORE's text first (e.g. a config key)")
    args = p.parse_args(argv)
    if args.compare:
        before, after = (json.loads(Path(f).read_text()) for f in args.compare)
        renames = dict(item.partition("=")[::2] for item in args.rename)
        diffs = compare(renamed(before, renames), renamed(after, {}), "")
        print("\n".join(diffs) or "identical")
        return 1 if diffs else 0
    from personalize.cpu import TOY_THREADS, configure_threads

    configure_threads(TOY_THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        result = {}
        if "train" not in args.skip:
            result["train"] = train_runs(root, args.only)
        if "f2d" not in args.skip:
            result["f2d"] = f2d_runs(root)
        if "generate" not in args.skip:
            result["generate"] = generation_runs(root)
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
