"""Train the toy world's judges (personalize.toyworld.judge) and write them to assets/toyworld_judge{,_b}.

    python training/toyworld/judge.py --vae outputs/toyworld-train/vae.safetensors --out assets/toyworld_judge
    python training/toyworld/judge.py --arch judge_b --vae assets/toyworld/vae --seed 4321 --epochs 10

Data: procedural scenes of every combination (held-out ones included: the judge must read them), passed in
part through the toy VAE so the judge reads generated-looking images as well as clean ones. The two judges see
differently augmented renders:
  - judge_a (CNN): every other image through the VAE (posterior mean), Gaussian noise 0.03;
  - judge_b (residual network): every third image through the VAE with a *sampled* latent, every third
    blurred (3x3 binomial), then per batch a 1-pixel random shift, brightness/contrast x[0.96, 1.04] and
    Gaussian noise of a random level in [0, 0.06].
Held-out accuracy per head is measured on clean and VAE-decoded scenes from another seed.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def scenes(n: int, seed: int) -> list:
    from personalize.toyworld import world as w

    rng = random.Random(seed)
    splits = ["train"] * 6 + ["heldout_objects", "heldout_faces"]
    return [w.sample_scene(rng, rng.choice(splits)) for _ in range(n)]


def dataset(n: int, seed: int, vae, arch: str = "judge_a") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from personalize.toyworld import world as w
    from personalize.toyworld.judge import HEADS, scene_targets, to_input

    sc = scenes(n, seed)
    x = to_input(np.stack([np.asarray(w.render(s)) for s in sc]))
    every = 2 if arch == "judge_a" else 3
    gen = torch.Generator().manual_seed(seed)
    if vae is not None:  # every other (A) / third (B) image through the VAE
        with torch.no_grad():
            for i in range(0, n, 1024):
                part = x[i:i + 1024:every]
                post = vae.encode(part).latent_dist
                z = post.mean if arch == "judge_a" else post.sample(gen)
                x[i:i + 1024:every] = vae.decode(z).sample.clamp(-1, 1)
    if arch == "judge_b":  # every third image (offset 1) blurred
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
        x[1::3] = torch.nn.functional.conv2d(torch.nn.functional.pad(x[1::3], (1, 1, 1, 1), mode="replicate"),
                                             kernel, groups=3)
    targets = {h: torch.full((n,), -100, dtype=torch.long) for h in HEADS}  # -100: head does not apply
    for i, s in enumerate(sc):
        for h, v in scene_targets(s).items():
            targets[h][i] = v
    return x, targets


def augment(xb: torch.Tensor, arch: str, gen: torch.Generator) -> torch.Tensor:
    """The per-batch augmentation of each judge (module docstring)."""
    if arch == "judge_a":
        return xb + 0.03 * torch.randn(xb.shape, generator=gen)
    b = len(xb)
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    xb = torch.nn.functional.pad(xb, (1, 1, 1, 1), mode="replicate")[:, :, 1 + dy:33 + dy, 1 + dx:33 + dx]
    scale = 1 + 0.04 * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    shift = 0.04 * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)
    noise = 0.06 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(xb.shape, generator=gen)
    return (xb * scale + shift + noise).clamp(-1.2, 1.2)


def evaluate(net, x, targets) -> dict[str, float]:
    with torch.no_grad():
        logits = {}
        for i in range(0, len(x), 1024):
            for h, v in net(x[i:i + 1024])[1].items():
                logits.setdefault(h, []).append(v)
    out = {}
    for h, t in targets.items():
        pred = torch.cat(logits[h]).argmax(-1)
        keep = t >= 0
        out[h] = float((pred[keep] == t[keep]).float().mean())
    return out


def load_vae(path: str):
    """A diffusers VAE folder or a state-dict file (training/toyworld/model.py's work folder); None for 'none'."""
    if path == "none":  # clean renders only (quick experiments)
        return None
    if Path(path).is_dir():
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(path, local_files_only=True).eval()
    from safetensors.torch import load_file

    from personalize.toyworld.model import make_vae

    vae = make_vae()
    vae.load_state_dict(load_file(path))
    return vae.eval()


def main() -> None:
    from personalize.toyworld.judge import ARCHITECTURES, FOLDERS, Judge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="judge_a", choices=sorted(ARCHITECTURES))
    parser.add_argument("--vae", default=str(ROOT / "assets" / "toyworld" / "vae"),
                        help="the toy VAE: a diffusers folder or a .safetensors state dict; 'none': clean only")
    parser.add_argument("--out", default=None, help="default: assets/toyworld_judge (A) or ..._judge_b (B)")
    parser.add_argument("--n-train", type=int, default=40_000)
    parser.add_argument("--n-test", type=int, default=4_000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out or str(ROOT / "assets" / FOLDERS[args.arch[-1]])
    vae = load_vae(args.vae)
    x, targets = dataset(args.n_train, args.seed, vae, args.arch)
    x_test, t_test = dataset(args.n_test, args.seed + 1, vae)  # one test protocol for both: clean + VAE mean
    net = ARCHITECTURES[args.arch]()
    lr, decay = (2e-3, 1e-4) if args.arch == "judge_a" else (3e-3, 5e-4)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=decay)
    steps = args.epochs * (args.n_train // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen, step, start = torch.Generator().manual_seed(args.seed), 0, time.time()
    for epoch in range(args.epochs):
        for idx in torch.randperm(args.n_train, generator=gen).split(128):
            xb = augment(x[idx], args.arch, gen)
            _, logits = net(xb)
            loss = sum(torch.nn.functional.cross_entropy(logits[h], targets[h][idx], ignore_index=-100)
                       for h in logits if (targets[h][idx] >= 0).any())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step < steps - 1:
                sched.step()
            step += 1
        net.eval()
        acc = evaluate(net, x_test, t_test)
        net.train()
        print(f"epoch {epoch} loss {loss.item():.4f} min held-out acc {min(acc.values()):.4f} "
              f"({min(acc, key=acc.get)}) {time.time() - start:.0f}s", flush=True)
    acc = evaluate(net.eval(), x_test, t_test)
    Judge(net).save(out, {"architecture": args.arch, "held_out_accuracy": acc, "n_test": args.n_test,
                          "seed": args.seed + 1, "train_seed": args.seed, "epochs": args.epochs})
    print(json.dumps(acc, indent=1))


if __name__ == "__main__":
    main()
