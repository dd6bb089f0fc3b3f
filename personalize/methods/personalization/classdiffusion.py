"""ClassDiffusion (Huang et al., ICLR 2025, arXiv 2405.17532): personalization tuning plus a semantic
preservation loss (SPL) that keeps the new concept's text feature near its class.

    SPL = 1 - cos( f("a photo of a <tok> dog"), f("a photo of a dog") )         (official
    `utils/semantic_preservation_loss.py`)

f is the final-layer-normed last hidden state of the CLIP text encoder at one pooled position, no projection.
The class phrase holds no trainable row, so its feature is computed once (every step only when the base
trains text-encoder layers). The SPL reaches nothing but the text side: the new token's rows (and the
text-encoder layers when the base trains them); its gradient never reaches the UNet.

Pooling: `eos` (default) pools at the first EOS with the normal forward, as the paper's Fig. 5
describes. `official` reproduces the released code: the argmax of the ids (the new token, whose id is above EOS)
and the token's slot without its position embedding.

Defaults: the official recipe is Custom Diffusion (K/V + token), lr 1e-5 x scale_lr, batch 2, 500 steps, and
no prior preservation; the official code runs the prior loss *instead of* the SPL when both are asked. We refuse
that combination unless `allow_with_prior: true`, which sums both (not in the paper). On a base without a token
(dreambooth, lora) the SPL could move nothing, so a modifier token `modifier_token` (default "sks") is added and
trained with it; a base with its own token names it itself (`method.base.modifier_token` / `placeholder_token`).

One concept per run: every base here learns one token, so the SPL has one (phrase, class) pair. The official
multi-concept recipe (`scripts/train_multi.sh`: several modifier tokens and class words in one run, the SPL
averaged over them) is not covered; train one file per concept and load them together.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from personalize.methods.base import MethodError
from personalize.methods.personalization.bases import base_spec
from personalize.methods.personalization.tuner import BaseContext, StepContext, Tuner

POOLINGS = ("eos", "official")


@dataclass
class Options:
    name: str = "classdiffusion"
    base: str = "custom_diffusion"  # any personalization base; its options go under `method.base` ({name: ..., ...})
    class_word: str = ""  # required: "dog" in "a photo of a <tok> dog"
    lambda_spl: float = 1.0  # the official `--spl_weight`
    spl_pooling: str = "eos"
    spl_template: str = "a photo of a {token} {cls}"
    spl_class_template: str = "a photo of a {cls}"
    allow_with_prior: bool = False
    modifier_token: str | None = None  # only for bases without a token (dreambooth, lora); None: "sks"
    base_options: object = None  # the base's Options, filled by `parse_options`


# --------------------------------------------------------------------------------------- the loss


def pool_index(ids: torch.Tensor, eos_id: int, pooling: str) -> torch.Tensor:
    """(B, L) ids -> (B,) pooled position: first EOS (`eos`), or argmax of the ids (`official`, HF's rule for
    configs with eos_token_id == 2, which SD-1.5's text encoder has)."""
    if pooling == "official":
        return ids.argmax(dim=-1)
    is_eos = ids == eos_id
    if not bool(is_eos.any(dim=-1).all()):
        raise MethodError(f"SPL phrase ids {ids.tolist()} have no EOS token (id {eos_id})")
    return is_eos.int().argmax(dim=-1)


def spl(f_personalized: torch.Tensor, f_class: torch.Tensor) -> torch.Tensor:
    """Mean over concepts of 1 - cos(f_P, f_C); features (N, width) -> scalar in [0, 2]."""
    return (1 - torch.nn.functional.cosine_similarity(f_personalized.float(), f_class.float(), dim=-1)).mean()


@contextlib.contextmanager
def _drop_position_embedding(text_encoder, first_new_id: int):
    """The official quirk: the new token's slot holds its raw token row, without the position embedding."""
    model = getattr(text_encoder, "text_model", text_encoder)

    def hook(module, args, kwargs, output):  # output: (B, L, width) token + position embeddings
        ids = kwargs.get("input_ids", args[0] if args else None)
        new = (ids >= first_new_id)[..., None]  # (B, L, 1)
        return torch.where(new, module.token_embedding(ids).to(output.dtype), output)

    handle = model.embeddings.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def pooled_features(text_encoder, ids: torch.Tensor, eos_id: int, pooling: str,
                    first_new_id: int | None = None) -> torch.Tensor:
    """f(x): (B, L) ids -> (B, width) final-layer-normed hidden state at the pooled position."""
    drop = pooling == "official" and first_new_id is not None
    with _drop_position_embedding(text_encoder, first_new_id) if drop else contextlib.nullcontext():
        hidden = text_encoder(ids)[0]  # (B, L, width), after the final layer norm
    index = pool_index(ids, eos_id, pooling).to(hidden.device)
    return hidden[torch.arange(ids.shape[0], device=hidden.device), index]


def spl_loss(text_encoder, ids_personalized: torch.Tensor, ids_class: torch.Tensor, eos_id: int,
             pooling: str = "eos", first_new_id: int | None = None, f_class: torch.Tensor | None = None):
    """Token ids (N, L) of the personalized and class phrases -> (SPL, f_class).
    Pass the returned `f_class` back to reuse it (it is constant while text-encoder layers are frozen)."""
    if f_class is None:
        with torch.no_grad():
            f_class = pooled_features(text_encoder, ids_class, eos_id, pooling, first_new_id)
    f_p = pooled_features(text_encoder, ids_personalized, eos_id, pooling, first_new_id)
    return spl(f_p, f_class), f_class


# --------------------------------------------------------------------------------------- the regularizer


class SemanticPreservation:
    """The SPL as a `Regularizer` of a personalization base (`Tuner`).

    When a caption of the batch is the personalized phrase itself (the recipe's instance prompt "a photo of a
    {} dog" with the template "a photo of a {token} {cls}"), f(P) is read from that caption's conditioning at the
    phrase's EOS: CLIP's text transformer is causal, so the padding after the EOS changes nothing there, and the
    SPL needs no text-encoder pass of its own (`eos` pooling only; `official` changes the new token's slot)."""

    def __init__(self, options: Options):
        self.o = options
        self.f_class = None

    def setup(self, base: BaseContext) -> None:
        tok, o = base.tokenizer, self.o
        triggers = list(base.rows.triggers)
        if len(triggers) != 1:  # the official multi-concept SPL averages over concepts; one concept per run here
            raise MethodError(f"classdiffusion trains one concept per run, but the base has {len(triggers)} trigger "
                              f"words {triggers}; the official multi-concept recipe (SPL averaged over concepts) is "
                              "not supported: train one file per concept")
        trigger = triggers[0]
        self.phrase = o.spl_template.format(token=trigger, cls=o.class_word)
        phrases = [self.phrase, o.spl_class_template.format(cls=o.class_word)]
        self.ids_p, self.ids_c = (tok(base.rows.expand(p), truncation=True, return_tensors="pt").input_ids
                                  .to(base.device) for p in phrases)  # (1, L): no padding, as the official code
        self.eos_id, self.first_new = tok.eos_token_id, min(base.rows.ids)
        # where f(P) sits in a caption that is the phrase (eos pooling: the phrase's own EOS; fixed for the run)
        self.eos_p = int(pool_index(self.ids_p, self.eos_id, "eos")[0]) if o.spl_pooling == "eos" else None
        self.refresh_class = base.train_text_encoder  # layers train: f(C) moves, recompute it every step

    def loss_weights(self) -> dict[str, float]:
        return {"loss_spl": self.o.lambda_spl}

    def caption_index(self, ctx: StepContext) -> int | None:
        """The batch index of a caption that is the personalized phrase (see the class docstring), or None."""
        if self.o.spl_pooling != "eos" or not ctx.cond.requires_grad:
            return None
        return next((i for i, caption in enumerate(ctx.captions) if caption == self.phrase), None)

    def losses(self, base: BaseContext, ctx: StepContext) -> dict[str, torch.Tensor]:
        te = base.text_encoder  # the unwrapped module: the gradient reaches the token rows all the same
        cached = None if self.refresh_class else self.f_class
        i = self.caption_index(ctx)
        if i is None:
            value, self.f_class = spl_loss(te, self.ids_p, self.ids_c, self.eos_id, self.o.spl_pooling,
                                           self.first_new, cached)
            return {"loss_spl": value}
        if cached is None:
            with torch.no_grad():
                self.f_class = pooled_features(te, self.ids_c, self.eos_id, "eos")
        return {"loss_spl": spl(ctx.cond[i: i + 1, self.eos_p], self.f_class)}  # (1, width) against (1, width)


def build(options: Options, config) -> Tuner:
    o = options
    if not o.class_word.strip():
        raise MethodError("method.class_word is required for classdiffusion: the class the concept belongs to "
                          "(e.g. 'dog' for 'a photo of a <tok> dog')")
    if o.spl_pooling not in POOLINGS:
        raise MethodError(f"method.spl_pooling must be one of {POOLINGS}, got {o.spl_pooling!r}")
    if "{token}" not in o.spl_template or "{cls}" not in o.spl_template or "{cls}" not in o.spl_class_template:
        raise MethodError("method.spl_template needs {token} and {cls}, method.spl_class_template needs {cls}; "
                          f"got {o.spl_template!r} and {o.spl_class_template!r}")
    if config.train.with_prior_preservation and not o.allow_with_prior:
        raise MethodError("classdiffusion's SPL replaces prior preservation (the official code runs only the prior "
                          "loss when both are on): set train.with_prior_preservation=false, or "
                          "method.allow_with_prior=true to sum both")
    spec = base_spec(o, {"class_word": o.class_word, "lambda_spl": str(o.lambda_spl), "spl_pooling": o.spl_pooling})
    if spec.tokens and o.modifier_token is not None:
        key = "placeholder_token" if o.base == "textual_inversion" else "modifier_token"
        raise MethodError(f"method.modifier_token is for bases without a token (dreambooth, lora); {o.base} adds "
                          f"its own: set method.base.{key}={o.modifier_token} instead")
    if not spec.tokens:
        spec.tokens = [(o.modifier_token or "sks", "object", 1)]
    return Tuner(spec, config, regularizers=(SemanticPreservation(o),))

