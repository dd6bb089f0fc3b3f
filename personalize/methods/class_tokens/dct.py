"""Discriminative class tokens (Schwartz et al., "Discriminative Class Tokens for Text-to-Image Diffusion Models",
ICCV 2023; official code idansc/discriminative_class_tokens, run.py): one token row learned from a classifier.

No images are given. Each micro-step (one image):
  1. a prompt "<template with> <token> <class_name>" (the token goes *before* the class word, as in run.py);
  2. DDIM sampling from a fixed noise with the frozen UNet and classifier-free guidance, the graph kept only for
     the last `grad_steps` steps (the paper's "gradient skipping"; run.py's PNDM scheduler made that 2 UNet
     calls, `grad_steps: 2` is the nearest DDIM equivalent), each such call checkpointed with
     train.gradient_checkpointing (run.py enables the UNet's);
  3. VAE decode (scaled by the VAE config's scaling_factor), [0, 1], the classifier's own preprocessing,
     differentiable (`classifiers`, `preprocess`);
  4. loss_ce toward the target class (`losses`); `negate` pushes away from it (the unmerged PRs #4/#5).
An optimizer step averages gradient_accumulation_steps x train_batch_size images (run.py: 5 x 1; a batch is
generated in one sampler call), whose noises come from `noise_seed` (default: the run's train.seed) and are the
same every step ("we update the same images"; `noise: fresh` draws new ones); the official early stop
(`StopRule`) runs once per optimizer step, and a collapse moves to the next noise seed.

Deviations from run.py, on purpose: the token is its own fp32 parameter (only its row can change, and weight
decay reaches nothing else); gradients are clipped after unscaling at the optimizer step (the loop's
`max_grad_norm`), not before backward; prompts are padded to 77 tokens as at inference; the token kept is the
one that *gave* the lowest summed loss (run.py saves after that step's update); a unique trigger per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from personalize.artifacts import ArtifactContent
from personalize.methods import blocks
from personalize.methods.base import MethodError
from personalize.methods.class_tokens import classifiers
from personalize.methods.class_tokens.losses import StopRule, correct_heads, loss_heads
from personalize.methods.personalization.parts import TokenRows
from personalize.methods.sampling import sample

TEMPLATES = ["A photo of {}", "a high resolution realistic image of {}", "A close-up photo of a {}"]  # run.py's


@dataclass
class Options:
    name: str = "dct"
    classifier: str = "google/vit-large-patch16-224"  # a transformers image classifier, or a bundled one (profiles.BUNDLED_CLASSIFIERS)
    target: str = ""  # the class: a label, its first synonym, or an index; toy world: "identity:<n>"
    class_name: str = ""  # the word after the token (default: the label's first synonym; toy world: "person")
    placeholder_token: str = ""  # the trigger (default "dct-<class name>"): one per class, so they load together
    initializer_token: str = "a"
    templates: list[str] = field(default_factory=lambda: list(TEMPLATES))  # "{}" = "<token> <class_name>"
    num_prompts: int = 3
    sample_steps: int = 30
    grad_steps: int = 1
    guidance_scale: float = 7.0
    noise_seed: int | None = None  # None: train.seed (run.py's seed 35 is both; configs/dct.yaml sets 35)
    noise: str = "fixed"  # fixed: run.py's same noises every step; fresh: new noises each step (see latents_for)
    negate: bool = False
    patience: int = 15
    stop_accuracy: float = 0.7
    collapse_factor: float = 2.0
    eval_classifier: str = ""  # a second classifier (the toy world's Judge B), reported beside the steering one
    eval_images: int = 8  # images the kept token draws for that report, on noises training never used


def check_options(o: Options) -> None:
    if not str(o.target).strip():
        raise MethodError("method.target is empty: name the class to steer toward (a label or an index of the "
                          "classifier, e.g. 'tiger cat' or 282; toy world: 'identity:45')")
    if not 1 <= o.grad_steps <= o.sample_steps:
        raise MethodError(f"method.grad_steps={o.grad_steps}: expected 1..sample_steps ({o.sample_steps})")
    if o.noise not in ("fixed", "fresh"):
        raise MethodError(f"method.noise={o.noise!r}: expected 'fixed' (the same noises every step, as run.py) "
                          "or 'fresh' (new noises each step)")
    if o.eval_images < 1:
        raise MethodError(f"method.eval_images={o.eval_images}: expected >= 1")
    if not 1 <= o.num_prompts <= len(o.templates) or not all("{}" in t for t in o.templates):
        raise MethodError(f"method.num_prompts={o.num_prompts} needs that many method.templates, each with '{{}}' "
                          f"for '<token> <class name>'; got {o.templates!r}")


def load_classifier(name: str, local_files_only: bool) -> classifiers.Classifier:
    return classifiers.bundled_classifier(name) or classifiers.hf_classifier(name, local_files_only)


def identity_number(o: Options) -> int | None:
    """The toy-world identity of a target "identity:<n>", or None for a classifier's class."""
    spec = str(o.target).strip()
    if not spec.startswith("identity:"):
        return None
    number = spec.split(":", 1)[1].strip()
    if not number.isdigit():
        raise MethodError(f"method.target={spec!r}: expected identity:<number>, e.g. identity:18")
    return int(number)


def resolve_target(clf: classifiers.Classifier, o: Options) -> tuple[dict[str, int], str]:
    """({head: index}, the class word for prompts)."""
    identity = identity_number(o)
    if identity is not None:
        return clf.target(classifiers.identity_target(identity)), o.class_name or "person"
    target = clf.target(str(o.target).strip())
    head, k = next(iter(target.items()))
    return target, o.class_name or classifiers.class_name(clf.labels[head][k])


def trigger(o: Options, word: str) -> str:
    """The token: method.placeholder_token, or "dct-<class words>" (one per class, so several load together);
    a toy identity adds its number ("dct-person-18"), its class word being "person" for all of them."""
    identity = identity_number(o)
    suffix = "" if identity is None else f"-{identity}"
    return o.placeholder_token or "dct-" + "-".join(word.split()) + suffix


class DCT:
    """The method protocol (`personalize.methods.base`) for dct, with the optional `should_stop`."""

    def __init__(self, options: Options, config):
        check_options(options)
        self.o, self.config = options, config

    def setup(self, components, config, accelerator) -> None:
        from diffusers import DDIMScheduler

        c, o = components, self.o
        self.c, self.accelerator = c, accelerator
        self.device, self.dtype = blocks.frozen_setup(c, accelerator)
        self.clf = load_classifier(o.classifier, config.model.local_files_only)
        self.target, self.word = resolve_target(self.clf, o)
        if o.eval_classifier:  # loaded now, so that a class it lacks fails before training
            self.held = load_classifier(o.eval_classifier, config.model.local_files_only)
            self.held_target = resolve_target(self.held, o)[0]
        self.token = trigger(o, self.word)
        self.rows = TokenRows.add(c.tokenizer, c.text_encoder, [(self.token, o.initializer_token, 1)])
        self.param = self.rows.make_trainable(c.text_encoder)  # (1, width) fp32: the only trainable tensor
        blocks.place((c.vae, c.unet, c.text_encoder), self.device, self.dtype)
        self.clf.model.to(self.device)
        self.scheduler = DDIMScheduler.from_config(c.scheduler.config)
        self.prompts = [t.format(f"{self.token} {self.word}") for t in o.templates[:o.num_prompts]]
        with torch.no_grad():
            self.uncond = blocks.encode_prompts(c.tokenizer, c.text_encoder, [""], self.device)  # (1, 77, width)
        self.rule = StopRule(o.patience, o.stop_accuracy, o.collapse_factor, config.train.max_train_steps)
        seed = config.train.seed if o.noise_seed is None else o.noise_seed
        self.state, self.stop, self.best, self.report = self.rule.start(seed), False, None, {}
        self.accum, self.batch = config.train.gradient_accumulation_steps, config.train.train_batch_size
        self.per_step, self.step_loss, self.step_correct = self.accum * self.batch, 0.0, 0

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"text_encoder": self.c.text_encoder}

    def dataloader(self, start: int, rank: int, world: int):
        """{"index": micro-step}: micro-step index % accumulation within its optimizer step; its train_batch_size
        images are generated in one batch, image g (counted over the run) with prompt g % num_prompts."""
        k = start
        while True:
            yield {"index": k * world + rank}
            k += 1

    def noises(self, step: int) -> torch.Tensor:
        """The starting noises of optimizer step `step`'s images (per_step, 4, h, w): with noise "fixed" a pure
        function of the current seed (every step the same), with "fresh" of (seed, step), so that a resumed run
        draws the same. Fresh noises are our addition: with fixed ones a token can fit those few noises and not
        carry over to others (measured in the toy world, docs/effects.md)."""
        seed = self.state.seed if self.o.noise == "fixed" else self.state.seed * 1_000_003 + step
        return self._noise(seed, self.per_step)

    def _noise(self, seed: int, n: int) -> torch.Tensor:
        """n starting latents (n, 4, h, w) from `seed`, scaled by the scheduler's init_noise_sigma."""
        gen = torch.Generator().manual_seed(seed)
        size = self.c.unet.config.sample_size
        noise = torch.randn((n, self.c.unet.config.in_channels, size, size), generator=gen)
        return (noise * self.scheduler.init_noise_sigma).to(self.device)

    def latents_for(self, image: int, step: int = 0) -> torch.Tensor:
        """The starting noise (1, 4, h, w) of image `image` of optimizer step `step`."""
        return self.noises(step)[image:image + 1]

    def generate(self, prompts: str | list[str], latents: torch.Tensor) -> torch.Tensor:
        """The images (B, 3, H, W) in [0, 1] for `prompts` from `latents` (B, 4, h, w), with grad through the
        last steps."""
        c, o = self.c, self.o
        prompts = [prompts] if isinstance(prompts, str) else prompts
        cond = blocks.encode_prompts(c.tokenizer, c.text_encoder, prompts, self.device)  # (B, 77, width)
        uncond = self.uncond.expand(len(prompts), -1, -1)  # (B, 77, width)
        with self.accelerator.autocast():
            x0 = sample(c.unet, self.scheduler, cond.to(self.dtype), o.sample_steps, latents=latents,
                        grad_steps=o.grad_steps, guidance=o.guidance_scale, uncond=uncond.to(self.dtype),
                        checkpoint=self.config.train.gradient_checkpointing)
            decoded = c.vae.decode(x0 / c.vae.config.scaling_factor).sample
        return (decoded.float() / 2 + 0.5).clamp(0, 1)

    def training_step(self, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        index = batch["index"]
        micro, step = index % self.accum, index // self.accum
        if micro == 0:  # the token every image of this optimizer step sees (the update comes after them)
            self.before = self.param.detach().clone()
            self.step_loss, self.step_correct = 0.0, 0
        images = range(micro * self.batch, (micro + 1) * self.batch)  # within the step
        prompts = [self.prompts[(step * self.per_step + i) % len(self.prompts)] for i in images]
        logits = self.clf.logits(self.generate(prompts, self.noises(step)[images.start:images.stop]))
        loss = loss_heads(logits, self.target, self.o.negate)  # the mean over this micro-step's images
        self.step_loss += float(loss.detach()) * self.batch  # run.py's step loss: the sum over its images
        self.step_correct += correct_heads(logits, self.target, self.o.negate)
        if micro == self.accum - 1:
            self.state, best, self.stop = self.rule.update(self.state, self.step_loss, self.step_correct,
                                                           self.per_step)
            if best:
                self.best = (self.before, self.step_correct / self.per_step)
        return {"loss_ce": loss, "correct": torch.tensor(float(self.step_correct))}

    def should_stop(self) -> bool:
        return self.stop

    def finish(self) -> None:
        """Keep the token of the best-loss step, then fold it into the embedding table."""
        if self.best is not None:
            with torch.no_grad():
                self.param.copy_(self.best[0])
        self.rows.fold(self.c.text_encoder)
        self.report = self.held_out_report() if self.o.eval_classifier else {}

    @torch.no_grad()
    def held_out_report(self) -> dict[str, str]:
        """Accuracy of the kept token's images by the steering classifier and by `eval_classifier` (the spec's
        advice: a token can fool its own classifier), on `eval_images` noises of seed + 10_000, the prompts in
        turn. The same class is looked up in the second classifier by the same `target`."""
        held, target = self.held, self.held_target
        held.model.to(self.device)
        n = self.o.eval_images
        noise = self._noise(self.state.seed + 10_000, n)  # (n, 4, h, w)
        hits = {"steering": 0, "held_out": 0}
        for start in range(0, n, self.batch):
            k = range(start, min(start + self.batch, n))
            images = self.generate([self.prompts[i % len(self.prompts)] for i in k], noise[k.start:k.stop])
            hits["steering"] += correct_heads(self.clf.logits(images), self.target, self.o.negate)
            hits["held_out"] += correct_heads(held.logits(images), target, self.o.negate)
        return {"eval_classifier": self.o.eval_classifier, "eval_images": str(n),
                "eval_accuracy_steering": f"{hits['steering'] / n:.3f}",
                "eval_accuracy_held_out": f"{hits['held_out'] / n:.3f}"}

    def artifact(self) -> ArtifactContent:
        labels = {head: self.clf.labels[head][k] for head, k in self.target.items()}
        label = next(iter(labels.values())) if len(labels) == 1 else ", ".join(f"{h}={v}" for h, v in labels.items())
        meta = {"classifier": self.o.classifier, "target": str(self.o.target), "class_name": self.word,
                "target_label": label, "negate": str(self.o.negate),
                "steps": str(self.state.steps), "best_step": str(self.state.best_step),
                "best_loss": f"{self.state.best_loss:.6g}",
                "accuracy_at_best": f"{self.best[1]:.3f}" if self.best else "",
                "noise_seed": str(self.state.seed)} | self.report
        return ArtifactContent(self.token, self.rows.vectors(self.c.text_encoder), {}, "none", meta)


def build(options: Options, config) -> DCT:
    return DCT(options, config)


def describe(art) -> dict:
    """What the app shows of a class token: the class it was steered toward (its `target_label` metadata)."""
    label = art.metadata.get("target_label", "")
    return {"note": f"class: {label}"} if label else {}
