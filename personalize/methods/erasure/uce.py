"""UCE, "Unified Concept Editing in Diffusion Models" (Gandikota et al., WACV 2024, eq. 7): a closed-form edit of
every cross-attention to_k / to_v, no training loop (seconds on a CPU).

For each projection W (d_out, d_text), with c the text feature of a prompt's *last word token* and v* = W_old c*:

    W_new = (lamb W_old + s_e sum_i v*_i c_i^T + s_p sum_j v*_j c_j^T) (lamb I + s_e sum_i c_i c_i^T + s_p sum_j c_j c_j^T)^-1

i erases concept c_i toward its guide (v*_i = W_old c_guide), j preserves c_j (v*_j = W_old c_j). As the official
rohitgandikota/unified-concept-editing trainscripts/uce_sd_erase.py: the last word token is at
(attention-mask length) - 2, so the empty guide "" uses the start token; defaults erase_scale 1, preserve_scale
1, lamb 0.5, guide "" for objects ("art" is the official default for styles). Editing many concepts at once
degrades other concepts (the UCE paper's retention curve falls past ~10 erased concepts): a warning says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from personalize.artifacts import ArtifactContent
from personalize.methods import blocks
from personalize.methods.base import MethodError

logger = logging.getLogger(__name__)
MANY_CONCEPTS = 10


@dataclass
class Options:
    name: str = "uce"
    concepts: list[str] = field(default_factory=list)  # prompts to erase
    guides: list[str] = field(default_factory=lambda: [""])  # one for all, or one per concept
    preserve: list[str] = field(default_factory=list)  # prompts whose features stay where they were
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    lamb: float = 0.5


def edit_weight(w_old: torch.Tensor, erase: list[tuple[torch.Tensor, torch.Tensor]],
                preserve: list[torch.Tensor], erase_scale: float, preserve_scale: float,
                lamb: float) -> torch.Tensor:
    """eq. 7 for one projection: `erase` pairs (c_i, c_guide_i), `preserve` c_j; features (d_text,). float64."""
    w = w_old.double()
    mat1 = lamb * w  # (d_out, d_text)
    mat2 = lamb * torch.eye(w.shape[1], dtype=torch.float64)  # (d_text, d_text)
    for c_i, c_guide in erase:
        c_i, v_star = c_i.double()[:, None], (w @ c_guide.double())[:, None]
        mat1 += erase_scale * v_star @ c_i.T
        mat2 += erase_scale * c_i @ c_i.T
    for c_j in preserve:
        c_j = c_j.double()[:, None]
        mat1 += preserve_scale * (w @ c_j) @ c_j.T
        mat2 += preserve_scale * c_j @ c_j.T
    return mat1 @ torch.linalg.inv(mat2)


def last_word_features(tokenizer, text_encoder, prompts: list[str], device) -> dict[str, torch.Tensor]:
    """prompt -> (d_text,) the text encoder's output at its last word token (length - 2: before the end token)."""
    hidden = blocks.encode_prompts(tokenizer, text_encoder, prompts, device)  # (N, 77, d_text)
    lengths = [len(tokenizer(p, truncation=True, max_length=tokenizer.model_max_length).input_ids) for p in prompts]
    return {p: hidden[i, n - 2].float().cpu() for i, (p, n) in enumerate(zip(prompts, lengths))}


class UCE:
    """A closed-form method: `setup` computes the edit and applies it to the loaded UNet; the loop runs no step
    (`closed_form = True`)."""

    closed_form = True

    def __init__(self, options: Options, config):
        self.o, self.config = options, config
        if not options.concepts or not all(isinstance(c, str) and c.strip() for c in options.concepts):
            raise MethodError(f"method.concepts must be a non-empty list of prompts to erase; got {options.concepts!r}")
        if len(options.guides) not in (1, len(options.concepts)):
            raise MethodError(f"method.guides has {len(options.guides)} entries for {len(options.concepts)} "
                              f"concepts: give one for all, or one per concept")
        if options.lamb <= 0:
            raise MethodError(f"method.lamb={options.lamb}: must be > 0 (it keeps the system invertible)")
        if len(options.concepts) > MANY_CONCEPTS:
            logger.warning("UCE edits %d concepts at once: past ~%d the UCE paper reports other concepts degrade; "
                           "list the ones to keep in method.preserve", len(options.concepts), MANY_CONCEPTS)

    def setup(self, components, config, accelerator) -> None:
        self.c = c = components
        o = self.o
        blocks.frozen_setup(c, accelerator)  # closed form on the weights as loaded: no device move
        guides = o.guides * len(o.concepts) if len(o.guides) == 1 else list(o.guides)
        with torch.no_grad():
            feats = last_word_features(c.tokenizer, c.text_encoder, sorted(set(o.concepts) | set(guides) |
                                                                          set(o.preserve)), c.text_encoder.device)
            self.diff = {}
            for name, module in c.unet.named_modules():
                if "attn2" in name and name.endswith(("to_k", "to_v")):
                    w_old = module.weight.detach().float().cpu()
                    w_new = edit_weight(w_old, [(feats[e], feats[g]) for e, g in zip(o.concepts, guides)],
                                        [feats[p] for p in o.preserve], o.erase_scale, o.preserve_scale, o.lamb)
                    self.diff[f"unet.{name}.weight"] = (w_new - w_old.double()).float()
                    module.weight.add_(self.diff[f"unet.{name}.weight"].to(module.weight))  # the live model too
        self.guides = guides

    def trainable_modules(self) -> dict:
        return {}

    def dataloader(self, start, rank, world):
        raise MethodError("uce is closed-form: it has no training steps")

    def training_step(self, batch, generator):
        raise MethodError("uce is closed-form: it has no training steps")

    def artifact(self) -> ArtifactContent:
        meta = {"concepts": ", ".join(self.o.concepts), "guides": ", ".join(repr(g) for g in self.guides),
                "preserve": ", ".join(self.o.preserve), "erase_scale": str(self.o.erase_scale),
                "preserve_scale": str(self.o.preserve_scale), "lamb": str(self.o.lamb), "train_method": "xattn-strict"}
        return ArtifactContent(name="uce", weights=self.diff, kind="diff", metadata=meta)


def build(options: Options, config) -> UCE:
    return UCE(options, config)
