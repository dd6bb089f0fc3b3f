"""Train the toy world's judges (personalize.toyworld.judge) and write them to assets/toyworld_judge.

    python training/toyworld_judge.py --vae outputs/toyworld-train/vae.safetensors --out assets/toyworld_judge

Data: procedural scenes of every combination (held-out ones included: the judge must read them), half of each
batch passed through the toy VAE (encode, decode) plus a little noise, so the judge reads generated-looking
images as well as clean ones. Held-out accuracy per head is measured on scenes from another seed.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def scenes(n: int, seed: int) -> list:
    from personalize.toyworld import world as w

    rng = random.Random(seed)
    splits = ["train"] * 6 + ["heldout_objects", "heldout_faces"]
    return [w.sample_scene(rng, rng.choice(splits)) for _ in range(n)]


def dataset(n: int, seed: int, vae) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from personalize.toyworld import world as w
    from personalize.toyworld.judge import HEADS, scene_targets, to_input

    sc = scenes(n, seed)
    x = to_input(np.stack([np.asarray(w.render(s)) for s in sc]))
    if vae is not None:  # every other image through the VAE
        with torch.no_grad():
            for i in range(0, n, 1024):
                part = x[i:i + 1024:2]
                x[i:i + 1024:2] = vae.decode(vae.encode(part).latent_dist.mean).sample.clamp(-1, 1)
    targets = {h: torch.full((n,), -100, dtype=torch.long) for h in HEADS}  # -100: head does not apply
    for i, s in enumerate(sc):
        for h, v in scene_targets(s).items():
            targets[h][i] = v
    return x, targets


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


def main() -> None:
    from safetensors.torch import load_file

    from personalize.toyworld.judge import Judge, JudgeNet
    from personalize.toyworld.model import make_vae

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="outputs/toyworld-train/vae.safetensors")
    parser.add_argument("--out", default=str(ROOT / "assets" / "toyworld_judge"))
    parser.add_argument("--n-train", type=int, default=40_000)
    parser.add_argument("--n-test", type=int, default=4_000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vae = None
    if args.vae != "none":  # "none": clean renders only (quick experiments)
        vae = make_vae()
        vae.load_state_dict(load_file(args.vae))
        vae.eval()
    x, targets = dataset(args.n_train, args.seed, vae)
    x_test, t_test = dataset(args.n_test, args.seed + 1, vae)
    net = JudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (args.n_train // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen, step, start = torch.Generator().manual_seed(args.seed), 0, time.time()
    for epoch in range(args.epochs):
        for idx in torch.randperm(args.n_train, generator=gen).split(128):
            xb = x[idx] + 0.03 * torch.randn(len(idx), 3, 32, 32, generator=gen)
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
    Judge(net).save(args.out, {"held_out_accuracy": acc, "n_test": args.n_test, "seed": args.seed + 1})
    print(json.dumps(acc, indent=1))


if __name__ == "__main__":
    main()
