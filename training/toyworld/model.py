"""Train the toy world's text-to-image model and write it to assets/toyworld.

    python training/toyworld/model.py --work outputs/toyworld-train --ship assets/toyworld

Stages, each resumable (re-running skips finished stages and continues the UNet from its last checkpoint):
  1. render N procedural images + captions (personalize.toyworld.world), seeded;
  2. train the VAE (L1 + MSE reconstruction, a small KL term), then encode every image once;
  3. train the UNet and the text encoder together (epsilon loss, 10 % empty captions for classifier-free
     guidance, EMA of the weights), checkpointing every `--save-every` steps;
  4. write the diffusers folder with the EMA weights, the real CLIP tokenizer and a DDIM scheduler.
With `--finetune-from assets/toyworld` stage 2 is skipped (that model's VAE and latent scaling are kept) and
stage 3 continues from its UNet and text encoder (EMA restarted from them) on freshly rendered captions:

    python training/toyworld/model.py --finetune-from assets/toyworld --work outputs/toyworld-finetune \
        --seed 1 --unet-steps 6000 --lr 3e-4 --warmup 200
The judges are trained by training/toyworld/judge.py.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "clip_tokenizer"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def render_stage(work: Path, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    from personalize.toyworld.world import make_dataset

    images_path, captions_path = work / "images.npy", work / "captions.json"
    if not images_path.exists():
        log(f"rendering {n} images")
        images, captions, _ = make_dataset(n, seed)
        np.save(work / "images.tmp.npy", images)
        (work / "images.tmp.npy").rename(images_path)
        captions_path.write_text(json.dumps(captions))
    return np.load(images_path), json.loads(captions_path.read_text())


def to_pixels(batch: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, 32, 32)


def vae_stage(work: Path, images: np.ndarray, steps: int, seed: int):
    from safetensors.torch import load_file, save_file

    from personalize.toyworld.model import make_vae

    vae = make_vae()
    path = work / "vae.safetensors"
    if path.exists():
        vae.load_state_dict(load_file(str(path)))
        return vae.eval()
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    for step in tqdm(range(steps), desc="vae", mininterval=10):
        idx = torch.randint(0, len(images), (64,), generator=gen).numpy()
        x = to_pixels(images[idx])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-4 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        if step % 100 == 0:
            log(f"vae step {step}/{steps} loss {loss.item():.4f}")
    save_file(vae.state_dict(), str(path))
    return vae.eval()


def encode_stage(work: Path, vae, images: np.ndarray, keep_scaling: bool = False) -> torch.Tensor:
    """Posterior means of every image (N, 8, 8, 8), and the scaling factor 1/std (as SD's 0.18215); a
    fine-tune keeps the scaling its UNet was trained with (`keep_scaling`)."""
    path = work / "latents.npy"
    if not path.exists():
        log("encoding latents")
        with torch.no_grad():
            means = [vae.encode(to_pixels(images[i:i + 512])).latent_dist.mean for i in range(0, len(images), 512)]
        np.save(path, torch.cat(means).numpy())
    latents = torch.from_numpy(np.load(path))
    if not keep_scaling:
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return latents * vae.config.scaling_factor


def tokenize(captions: list[str]) -> torch.Tensor:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    return tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def _ema_update(ema: dict, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)


def unet_stage(work: Path, latents: torch.Tensor, ids: torch.Tensor, args, init: dict | None = None,
               weights: torch.Tensor | None = None) -> tuple:
    """UNet + text encoder, jointly, from scratch or from `init` ({"unet": state, "te": state}, a fine-tune);
    `weights` (N,): sampling weight per image (None: uniform). Returns the EMA copies. Checkpoints are
    safetensors."""
    from safetensors.torch import load_file

    from personalize.toyworld.model import make_text_encoder, make_train_scheduler, make_unet

    torch.manual_seed(args.seed)
    unet, te, sched = make_unet(), make_text_encoder(), make_train_scheduler()
    models = {"unet": unet, "te": te}
    for k, state in (init or {}).items():
        models[k].load_state_dict(state)
    params = [p for m in models.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    ema = {k: {n: p.detach().clone() for n, p in m.named_parameters()} for k, m in models.items()}
    ckpt, step = work / "unet-checkpoint", 0
    if (ckpt / "state.json").exists():
        step = json.loads((ckpt / "state.json").read_text())["step"]
        saved = load_file(str(ckpt / "weights.safetensors"))
        for k, m in models.items():
            m.load_state_dict({n[len(k) + 1:]: v for n, v in saved.items() if n.startswith(k + ".")})
            ema[k] = {n[len(k) + 5:]: v for n, v in saved.items() if n.startswith(f"ema.{k}.")}
        opt_state = load_file(str(ckpt / "optimizer.safetensors"))
        for i, p in enumerate(params):
            opt.state[p] = {"step": opt_state[f"{i}.step"], "exp_avg": opt_state[f"{i}.exp_avg"],
                            "exp_avg_sq": opt_state[f"{i}.exp_avg_sq"]}
        log(f"resuming UNet training at step {step}")
    from tqdm.auto import tqdm

    empty = tokenize([""])[0]
    start, bar = time.time(), tqdm(total=args.unet_steps, initial=step, desc="unet", mininterval=10)
    while step < args.unet_steps:
        gen = torch.Generator().manual_seed(args.seed * 100_003 + step)  # resumable: a function of the step
        idx = (torch.randint(0, len(latents), (args.batch,), generator=gen) if weights is None
               else torch.multinomial(weights, args.batch, replacement=True, generator=gen))
        x0, cond_ids = latents[idx], ids[idx].clone()
        cond_ids[torch.rand(args.batch, generator=gen) < 0.1] = empty  # classifier-free guidance dropout
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        pred = unet(sched.add_noise(x0, noise, t), t, te(cond_ids)[0]).sample
        loss = (pred - noise).pow(2).mean()
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.unet_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        for k, m in models.items():
            _ema_update(ema[k], m, min(args.ema, (1 + step) / (10 + step)))
        if step % 100 == 0:
            rate = (time.time() - start) / 100
            start = time.time()
            log(f"unet step {step}/{args.unet_steps} loss {loss.item():.4f} lr {lr:.2e} {rate:.2f} s/step")
        if step % args.save_every == 0 or step == args.unet_steps:
            _save_unet_checkpoint(ckpt, step, models, ema, opt, params)
    bar.close()
    return ema


def _save_unet_checkpoint(ckpt: Path, step: int, models: dict, ema: dict, opt, params) -> None:
    from safetensors.torch import save_file

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    weights = {f"{k}.{n}": v.detach().contiguous() for k, m in models.items() for n, v in m.state_dict().items()}
    weights |= {f"ema.{k}.{n}": v.contiguous() for k, e in ema.items() for n, v in e.items()}
    save_file(weights, str(tmp / "weights.safetensors"))
    state = {}
    for i, p in enumerate(params):
        for name, value in opt.state[p].items():
            state[f"{i}.{name}"] = value.contiguous()
    save_file(state, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    if ckpt.exists():
        import shutil

        shutil.rmtree(ckpt)
    tmp.rename(ckpt)


def ship_stage(ship: Path, vae, ema: dict) -> None:
    """The diffusers folder: EMA weights, real CLIP tokenizer, DDIM scheduler; loads with plain diffusers."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from personalize.toyworld.model import make_sample_scheduler, make_text_encoder, make_unet

    unet, te = make_unet(), make_text_encoder()
    unet.load_state_dict(ema["unet"], strict=False)
    te.load_state_dict(ema["te"], strict=False)
    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te.eval(), tokenizer=tok, unet=unet.eval(),
                                   scheduler=make_sample_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(ship), safe_serialization=True)
    import shutil

    # the vocabulary files (1.5 MB) load in every transformers version, slow or fast; tokenizer.json is 3.6 MB
    shutil.rmtree(ship / "tokenizer")
    shutil.copytree(TOKENIZER_DIR, ship / "tokenizer")
    log(f"wrote {ship}")


def appearance_named(caption: str) -> bool:
    """Does a caption name what toy world 1.0 never named: a face's appearance or an object's outline?"""
    return "outline" in caption or ("person with " in caption)


def load_shipped(folder: Path) -> tuple:
    """A shipped diffusers folder -> (its VAE, {"unet": state, "te": state}) to fine-tune from. The VAE is
    rebuilt by make_vae() like a trained one, so the shipped config does not record the folder it came from."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from personalize.toyworld.model import make_vae

    shipped = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", local_files_only=True)
    vae = make_vae()
    vae.load_state_dict(shipped.state_dict())
    vae.register_to_config(scaling_factor=shipped.config.scaling_factor)
    vae.eval()
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", local_files_only=True)
    te = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", local_files_only=True)
    log(f"fine-tuning from {folder} (latent scaling {vae.config.scaling_factor:.4f} kept)")
    return vae, {"unet": unet.state_dict(), "te": te.state_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="outputs/toyworld-train")
    parser.add_argument("--ship", default=str(ROOT / "assets" / "toyworld"))
    parser.add_argument("--n-images", type=int, default=80_000)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--unet-steps", type=int, default=15_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--oversample", type=float, default=1.0,
                        help="sampling weight of captions that name appearance or the outline (1: uniform)")
    parser.add_argument("--finetune-from", default=None,
                        help="a shipped toy model folder: keep its VAE, continue its UNet and text encoder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ship-only", action="store_true",
                        help="write the diffusers folder from the last UNet checkpoint's EMA weights, no training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    images, captions = render_stage(work, args.n_images, args.seed)
    init = None
    if args.finetune_from:
        vae, init = load_shipped(Path(args.finetune_from))
    else:
        vae = vae_stage(work, images, args.vae_steps, args.seed)
    latents = encode_stage(work, vae, images, keep_scaling=init is not None)
    ids = tokenize(captions)
    if args.ship_only:
        args.unet_steps = 0  # load the checkpoint, take no step
    weights = None
    if args.oversample != 1.0:  # captions that name appearance (a face described, an outline) drawn more often
        weights = torch.tensor([args.oversample if appearance_named(c) else 1.0 for c in captions])
    ema = unet_stage(work, latents, ids, args, init, weights)
    ship_stage(Path(args.ship), vae, ema)


if __name__ == "__main__":
    main()
