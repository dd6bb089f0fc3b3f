"""Concept erasure by fine-tuning: ESD (Gandikota et al., ICCV 2023) and All-but-One (Hong et al., AAAI 2024).

One training step (ESD paper sec. 4 and Fig. 2; rohitgandikota/erasing train-scripts/train-esd.py):
  1. draw a DDIM step index k in [0, ddim_steps) and fresh noise; run DDIM from pure noise with the concept's
     prompt at a low guidance (3) for k steps, without gradients, to get x_t (`xt_sampler`: the model being
     trained, as the paper and its original code; or the frozen teacher, as the newer diffusers code; with
     `xt_cache` > 0, from that many teacher trajectories per concept sampled once and kept: ours, for speed);
  2. the frozen teacher's predictions at (x_t, t) for "", the concept (and `erase_from`, the alternative),
     one batched UNet call under no_grad;
  3. the student's prediction for the concept (`erase_from` when given), and for AbO also for "" (and the
     neighbour prompts);
  4. loss_erase = MSE(student, target) (`personalize.methods.erasure.losses`), AbO adds lambda_uncond *
     loss_uncond; either adds lambda_preserve * loss_preserve for neighbour prompts (`preserve`).
t is the schedule's timestep at index k (the newer code's choice; the paper-era code drew a DDPM t inside the
k-th DDIM interval). Several concepts: each sample of a batch draws one (a per-position draw), as a multi-concept
run of the official code would loop over them. The artifact holds only the changed tensors, as differences
(`weights: diff`, added to the base's values; see `personalize.methods.erasure.apply`).
"""

from __future__ import annotations

import copy
import json

import torch

from personalize.artifacts import ArtifactContent
from personalize.data import PositionSampler
from personalize.methods import blocks
from personalize.methods.base import MethodError
from personalize.methods.erasure import losses
from personalize.methods.erasure.adversarial import Adversary
from personalize.methods.erasure.filters import canonical, selected_parameters
from personalize.methods.erasure.templates import template_list
from personalize.methods.sampling import sample, timesteps

XT_SAMPLERS = ("student", "teacher")


class Eraser:
    """The method protocol (`personalize.methods.base`) for esd and abo; `abo` switches on the AbO target and
    the unconditional anchor."""

    def __init__(self, options, config):
        self.o, self.config, self.abo = options, config, options.name == "abo"
        self.templates = template_list(list(options.templates))  # kinds expanded; [] off
        self.concepts = check_concepts(options, self.templates)
        self.preserve = preserved_prompts(options, self.templates)
        canonical(options.train_method)
        if options.xt_sampler not in XT_SAMPLERS:
            raise MethodError(f"method.xt_sampler={options.xt_sampler!r}: expected one of {', '.join(XT_SAMPLERS)}")
        if not 1 <= options.ddim_steps <= 1000:
            raise MethodError(f"method.ddim_steps={options.ddim_steps}: expected 1..1000")
        if options.xt_cache < 0 or (options.xt_cache and options.xt_sampler != "teacher"):
            raise MethodError(f"method.xt_cache={options.xt_cache}: expected 0 (a fresh x_t every step) or a "
                              "number of cached trajectories >= 1 with method.xt_sampler=teacher (the student "
                              "changes every step, so its samples cannot be kept)")
        if options.attack_steps < 0 or not options.attack_lr > 0:
            raise MethodError(f"method.attack_steps={options.attack_steps}, method.attack_lr={options.attack_lr}: "
                              "expected attack steps >= 0 (0: no adversarial training) and a learning rate > 0")

    # ------------------------------------------------------------------------------------ setup

    def setup(self, components, config, accelerator) -> None:
        """Freeze everything, copy the UNet as the frozen teacher, make the filtered parameters trainable,
        encode every prompt once (the text encoder never trains)."""
        from diffusers import DDIMScheduler

        c, self.c, self.accelerator = components, components, accelerator
        self.device, self.dtype = blocks.frozen_setup(c, accelerator)
        self.teacher = copy.deepcopy(c.unet).eval()
        self.params = selected_parameters(c.unet, self.o.train_method)
        for p in self.params.values():
            p.requires_grad_(True)
        blocks.place((c.unet, c.text_encoder, self.teacher), self.device, self.dtype)
        self.original = {k: p.detach().float().cpu().clone() for k, p in self.params.items()}
        self.scheduler = DDIMScheduler.from_config(c.scheduler.config)
        self.ts = timesteps(self.scheduler, self.o.ddim_steps)
        self.emb: dict[str, torch.Tensor] = {}  # prompt -> (77, width), filled by `_stack`
        self._stack(sorted({""} | {p for concept in self.concepts for p in concept.values() if p} |
                           set(self.preserve)))  # every known prompt encoded once, up front
        self.unet = c.unet
        self._pool: dict[tuple[int, int], list[torch.Tensor]] = {}  # (concept, index) -> x at steps 0..n-1
        self.adversary = (Adversary(c.tokenizer, c.text_encoder, self.o.attack_steps, self.o.attack_lr)
                          if self.o.attack_steps else None)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.c.unet}

    def use_modules(self, modules: dict[str, torch.nn.Module]) -> None:
        self.unet = modules["unet"]

    def loss_weights(self) -> dict[str, float]:
        return {"loss_erase": 1.0, "loss_uncond": self.o.lambda_uncond if self.abo else 0.0,
                "loss_preserve": self.o.lambda_preserve, "loss_adv": self.o.lambda_adv}

    # ------------------------------------------------------------------------------------ data

    def dataloader(self, start: int, rank: int, world: int):
        """{"concepts": [index, ...]}: one concept per sample, a pure function of (seed, position)."""
        sampler = PositionSampler(len(self.concepts), self.config.train.train_batch_size, self.config.train.seed,
                                  rank, world, start)
        for keys in sampler:
            yield {"concepts": [index for index, _ in keys]}

    # ------------------------------------------------------------------------------------ step

    def _stack(self, prompts: list[str]) -> torch.Tensor:
        """(B, 77, width) text features; a prompt not seen yet is encoded once (the text encoder is frozen)."""
        new = sorted({p for p in prompts if p not in self.emb})
        if new:
            with torch.no_grad():
                hidden = blocks.encode_prompts(self.c.tokenizer, self.c.text_encoder, new, self.device)
            self.emb |= dict(zip(new, hidden))
        return torch.stack([self.emb[p] for p in prompts])

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        size = self.c.unet.config.sample_size
        if self.config.data.resolution:
            size = self.config.data.resolution // blocks.vae_factor(self.c.vae)
        return batch, self.c.unet.config.in_channels, size, size

    def make_xt(self, chosen: list[dict], k: int, gen: torch.Generator) -> torch.Tensor:
        """x_t after k of `ddim_steps` DDIM steps from noise, prompt c_e, guidance `xt_guidance`; no grad."""
        if self.o.xt_cache:
            picks = torch.randint(0, self.o.xt_cache, (len(chosen),), generator=gen).tolist()
            return torch.cat([self._trajectory(c["erase"], j)[k] for c, j in zip(chosen, picks)])
        noise = torch.randn(self.latent_shape(len(chosen)), generator=gen).to(self.device)
        noise = noise * self.scheduler.init_noise_sigma
        source = self.c.unet if self.o.xt_sampler == "student" else self.teacher
        cond = self._stack([c["erase"] for c in chosen]).to(self.dtype)
        with torch.no_grad(), self.accelerator.autocast():
            return sample(source, self.scheduler, cond, self.o.ddim_steps, 0, k, latents=noise,
                          guidance=self.o.xt_guidance, uncond=self._stack([""] * len(chosen)).to(self.dtype))

    def _trajectory(self, concept: str, j: int) -> list[torch.Tensor]:
        """Cached teacher trajectory j of `concept` (`xt_cache`): x after 0..ddim_steps-1 DDIM steps, each (1, 4,
        h, w), sampled in full the first time it is drawn. Its noise is seeded by (run seed, concept, j), so the
        pool does not depend on the order of the steps: a resumed run draws the same x_t. Every x_t of one
        trajectory costs one teacher step, against k steps for a fresh sample (the official code's way)."""
        key = ([c["erase"] for c in self.concepts].index(concept), j)
        if key not in self._pool:
            gen = torch.Generator().manual_seed((self.config.train.seed or 0) * 1_000_003 + 1_009 * key[0] + j)
            x = torch.randn(self.latent_shape(1), generator=gen).to(self.device) * self.scheduler.init_noise_sigma
            cond, uncond = self._stack([concept]).to(self.dtype), self._stack([""]).to(self.dtype)
            path = [x]
            with torch.no_grad(), self.accelerator.autocast():
                for step in range(self.o.ddim_steps - 1):
                    path.append(sample(self.teacher, self.scheduler, cond, self.o.ddim_steps, step, step + 1,
                                       latents=path[-1], guidance=self.o.xt_guidance, uncond=uncond))
            self._pool[key] = path
        return self._pool[key]

    def teacher_eps(self, x_t, t, prompts: list[list[str]]) -> list[torch.Tensor]:
        """The teacher's prediction for each prompt list (one list per role, B prompts each). One call per role,
        shaped as the student's calls, so that student == teacher gives bitwise-equal predictions (a batched
        call rounds differently, and Adam turns a 1e-14 gradient into a full step)."""
        with torch.no_grad():
            return [blocks.predict(self.teacher, x_t, t, self._stack(group).to(self.dtype), self.accelerator)
                    for group in prompts]

    def training_step(self, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        chosen = [self.concepts[i] for i in batch["concepts"]]
        b = len(chosen)
        k = int(torch.randint(0, self.o.ddim_steps, (1,), generator=gen))
        x_t = self.make_xt(chosen, k, gen)  # (B, 4, h, w)
        t = self.ts[k].to(self.device).repeat(b)  # (B,)
        erase, query = [c["erase"] for c in chosen], [c["from"] or c["erase"] for c in chosen]
        alt = [c["alternative"] or "" for c in chosen]
        roles = [[""] * b, erase] + ([alt] if self.abo else [query] if query != erase else [])
        eps_0, eps_e, *rest = self.teacher_eps(x_t, t, roles)
        eps_a = eps_f = rest[0] if rest else eps_e
        if self.abo:
            target = losses.abo_target(eps_0, eps_e, self.o.eta, eps_a)
        else:  # erase_from: the target's base is eps*(c_f) for those samples (eps_f = eps*(c_e) otherwise)
            has_from = torch.tensor([c["from"] is not None for c in chosen], device=self.device)[:, None, None, None]
            target = losses.esd_target(eps_0, eps_e, self.o.eta, torch.where(has_from, eps_f, eps_0))
        pred = blocks.predict(self.unet, x_t, t, self._stack(query).to(self.dtype), self.accelerator)
        out = {"loss_erase": losses.mse(pred, target)}
        if self.abo:
            pred_0 = blocks.predict(self.unet, x_t, t, self._stack([""] * b).to(self.dtype), self.accelerator)
            out["loss_uncond"] = losses.mse(pred_0, eps_0)
        if self.preserve and self.o.lambda_preserve:
            out["loss_preserve"] = self._preserve(x_t, t, gen)
        if self.adversary is not None:
            out["loss_adv"] = self._adversarial(x_t, t, eps_e, erase, [c["concept"] for c in chosen], target)
        return out

    def _adversarial(self, x_t, t, eps_e, prompts, concepts, target) -> torch.Tensor:
        """AdvUnlearn's outer loss (`adversarial`): the erasure target asked of the prompts with the concept's
        tokens replaced by the attack's delta, fitted this step to bring the concept back."""
        def student(x, s, cond):  # the unwrapped UNet: the attack's gradients go to delta, not through DDP
            return blocks.predict(self.c.unet, x, s, cond.to(self.dtype), self.accelerator)

        cond = self.adversary.attack(student, x_t, t, eps_e, prompts, concepts)  # (B, 77, width)
        return losses.mse(blocks.predict(self.unet, x_t, t, cond.to(self.dtype), self.accelerator), target)

    def _preserve(self, x_t, t, gen) -> torch.Tensor:
        """|| eps_theta(x_t, c_p) - eps*(x_t, c_p) ||^2 for one neighbour prompt per sample (drawn by `gen`)."""
        picks = torch.randint(0, len(self.preserve), (x_t.shape[0],), generator=gen).tolist()
        prompts = [self.preserve[i] for i in picks]
        (target,) = self.teacher_eps(x_t, t, [prompts])
        pred = blocks.predict(self.unet, x_t, t, self._stack(prompts).to(self.dtype), self.accelerator)
        return losses.mse(pred, target)

    # ------------------------------------------------------------------------------------ artifact

    def artifact(self) -> ArtifactContent:
        """The changed tensors as differences to the base, `unet.<parameter>` (float32)."""
        diff = {f"unet.{k}": p.detach().float().cpu() - self.original[k] for k, p in self.params.items()}
        given = self.concepts[::max(1, len(self.templates))]  # one entry per concept as given, before templates
        meta = {"concepts": ", ".join(c["concept"] for c in given), "eta": str(self.o.eta),
                "train_method": canonical(self.o.train_method), "xt_sampler": self.o.xt_sampler,
                "xt_cache": str(self.o.xt_cache),
                "steps": str(self.config.train.max_train_steps)}
        if self.templates:
            meta["templates"] = json.dumps(self.templates)
        if self.adversary is not None:
            meta |= {"attack_steps": str(self.o.attack_steps), "attack_lr": str(self.o.attack_lr),
                     "lambda_adv": str(self.o.lambda_adv)}
        if self.abo:
            meta |= {"alternatives": ", ".join(c["alternative"] or "" for c in given),
                     "lambda_uncond": str(self.o.lambda_uncond)}
        return ArtifactContent(name=self.o.name, weights=diff, kind="diff", metadata=meta)


def preserved_prompts(options, templates: list[str] = ()) -> list[str]:
    """The neighbour prompts kept as the original draws them (`preserve`), written into the same `templates`
    as the concepts, so that bare neighbour names ("circle") are kept across the phrasings the concept is erased
    in."""
    from personalize.methods.erasure.templates import expand

    names = [p.strip() for p in getattr(options, "preserve", []) if isinstance(p, str) and p.strip()]
    return list(dict.fromkeys(q for p in names for q in expand(p, list(templates))))


def check_concepts(options, templates: list[str] = ()) -> list[dict]:
    """[{"erase": c_e, "from": c_f or None, "alternative": c_a or None}] from the options' parallel lists; with
    `templates` (`templates.template_list`), one entry per (concept, template), the concept's c_f and c_a carried
    over."""
    from personalize.methods.erasure.templates import expand

    concepts = list(options.concepts)
    if not concepts or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise MethodError(f"method.concepts must be a non-empty list of prompts to erase, e.g. "
                          f"'[\"van gogh\"]'; got {options.concepts!r}")
    extra = {"erase_from": list(getattr(options, "erase_from", []))}
    if options.name == "abo":
        extra["alternatives"] = list(options.alternatives)
    for key, values in extra.items():
        if values and len(values) not in (1, len(concepts)):
            raise MethodError(f"method.{key} has {len(values)} entries for {len(concepts)} concepts: give one "
                              f"for all, or one per concept")
    spread = {k: (v * len(concepts) if len(v) == 1 else v) or [None] * len(concepts) for k, v in extra.items()}
    alternatives = spread.get("alternatives", [None] * len(concepts))
    return [{"erase": p, "from": f or None, "alternative": a or None, "concept": c.strip()}
            for c, f, a in zip(concepts, spread["erase_from"], alternatives) for p in expand(c.strip(), list(templates))]
