"""SuppressEOT (Li et al., ICLR 2024, arXiv 2402.05375): "without X" by editing the text embeddings at inference.

Soft-weighted regularization (SWR, paper Sec. 3.2, Eq. 2): the columns of the negative-target tokens and of every
[EOT]/padding slot form chi (D, K); its singular values are re-weighted sigma -> sigma * exp(-alpha * sigma) and the
columns are written back at the same positions. Nothing else changes: not the SOT or the other words, never the
unconditional embedding. Inference-time optimization (ITO, Sec. 3.3) then nudges the whole embedding for a few
early steps against cross-attention losses (`personalize.methods.suppression.suppress_ito`). Nothing is trained; the method
has no artifact, only settings (`Suppression`), applied as a generation edit (`SuppressEdit`, the
`personalize.pipeline.Edit` protocol): `Pipeline.generate(edits=[edit({"words": ["glasses"]})])`, or the shorthand
`Pipeline.generate(edits={"suppress_eot": {"words": ["glasses"]}})`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from personalize.errors import PersonalizeError

MODES = ("soft-weight", "alpha", "beta", "weight")
STRENGTHEN_ALPHA, STRENGTHEN_GAIN = -0.001, 1.2  # official utils/wo_utils.py: at alpha == -0.001 exactly (and no
# other value) the "strengthen" case (paper Appendix F) multiplies by 1.2; its sign became +0.001 in 2024-10


class SuppressError(PersonalizeError):
    """Words to suppress that are not in the prompt, bad alpha/mode/schedule."""


@dataclass(frozen=True)
class Suppression:
    """What to suppress and how; the defaults are the official `suppress_eot_w_nulltext.py` CLI defaults.

    `words`: each entry is a word or a span of the prompt ("glasses", "a hat"), suppressed together with the other
    entries in one SWR (the official code runs one group per call; several groups there mean several edits).
    `alpha` < 0 strengthens instead; at -0.001, the official value, with its 1.2 gain. `retain_fraction`: the first fraction of the
    denoising steps uses the prompt as written, so the layout is kept (official `cross_retain_steps` 0.2, paper
    tau = 0.8). ITO runs for steps in [retain, ito_last_step) with `ito_iters` descent iterations each
    (0 = SWR only; `suppress_mode="swr"` sets it to 0)."""

    words: tuple[str, ...] = ()
    alpha: float = 1.0
    mode: str = "soft-weight"
    retain_fraction: float = 0.2
    ito_iters: int = 0
    ito_last_step: float = 0.4  # as a fraction of the steps: the official max_step_to_erase 20 of 50
    ito_step_size: float = 20.0  # official: 20 for generated images (5 for real images with null-text)
    lambda_retain: float = 1.0
    lambda_erase: float = -0.5
    lambda_self_retain: float = 1.0
    lambda_self_erase: float = -0.5
    loss_form: str = "official"  # or "paper": squared L2 on the cross maps only (paper Eq. 3-4)
    resolution: int | None = None  # attention maps for ITO; None = the coarsest down/up-block resolution

    def __post_init__(self):
        if isinstance(self.words, str):
            object.__setattr__(self, "words", (self.words,))
        object.__setattr__(self, "words", tuple(w.strip() for w in self.words if w and w.strip()))
        if self.mode == "delete":  # official 'delete' drops the top components: the same product as 'alpha'
            object.__setattr__(self, "mode", "alpha")
        if self.mode not in MODES:
            raise SuppressError(f"suppress mode {self.mode!r} is not known; expected one of {', '.join(MODES)}")
        if not 0.0 <= self.retain_fraction < 1.0:
            raise SuppressError(f"retain_fraction must be in [0, 1), got {self.retain_fraction}")
        if self.ito_iters < 0 or self.ito_step_size < 0:
            raise SuppressError("ito_iters and ito_step_size must be >= 0")
        if self.loss_form not in ("official", "paper"):
            raise SuppressError(f"loss_form {self.loss_form!r}: expected 'official' or 'paper'")
        if not math.isfinite(self.alpha):
            raise SuppressError(f"alpha must be a finite number, got {self.alpha}")

    def describe(self) -> dict:
        """The settings as plain JSON values (stored in the PNG text chunk of each image)."""
        import dataclasses

        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["words"] = list(self.words)
        if self.ito_iters == 0:  # ITO settings do not matter without ITO
            for name in ("ito_last_step", "ito_step_size", "lambda_retain", "lambda_erase", "lambda_self_retain",
                         "lambda_self_erase", "loss_form", "resolution"):
                out.pop(name)
        return out

    def schedule(self, steps: int) -> tuple[int, int]:
        """(first step with SWR, first step after ITO) for `steps` denoising steps: 50 -> (10, 20)."""
        start = int(round(self.retain_fraction * steps))
        return start, max(start, int(round(self.ito_last_step * steps)))


# ------------------------------------------------------------------------------------------------ SWR


def reweight(sigma: torch.Tensor, alpha: float, mode: str = "soft-weight") -> torch.Tensor:
    """New singular values (descending `sigma`, shape (K,)) for the official `punish_wight` modes.

    soft-weight: sigma * exp(-alpha sigma) (paper Eq. 2, alpha = 1); alpha < 0 strengthens, and at alpha = -0.001
    exactly, as in the official code, gains 1.2x (other negative values do not, there or here). alpha: zero the
    top floor(K alpha) values; beta: keep only those."""
    if mode == "soft-weight":
        gain = STRENGTHEN_GAIN if alpha == STRENGTHEN_ALPHA else 1.0
        return gain * sigma * torch.exp(-alpha * sigma)
    top = int(len(sigma) * alpha)
    out = sigma.clone()
    if mode == "alpha":
        out[:top] = 0
    elif mode == "beta":
        out[top:] = 0
    else:
        raise SuppressError(f"mode {mode!r} has no singular-value map")
    return out


def swr_matrix(chi: torch.Tensor, alpha: float, mode: str = "soft-weight") -> torch.Tensor:
    """chi (D, K) -> chi_hat (D, K): thin SVD, re-weighted singular values, same singular vectors.

    Computed in float32 whatever the input dtype (fp16 SVD is unstable or unsupported), cast back."""
    if mode == "weight":  # the reviewers' ablation: scale the block, no SVD
        return chi * alpha
    x = chi.float()
    u, s, vh = torch.linalg.svd(x, full_matrices=False)  # (D, r), (r,), (r, K) with r = min(D, K)
    return ((u * reweight(s, alpha, mode)) @ vh).to(chi.dtype)


def eot_positions(n_tokens: int, length: int) -> list[int]:
    """The [EOT] block of a prompt with `n_tokens` ids (SOT and EOT counted): the real EOT and every padding slot,
    positions n-1 .. length-1 (official `woword_eot_context`). SD1.x pads with <|endoftext|>; SD2 tokenizers
    that pad with "!" make these columns padding, not [EOT] embeddings: untested there."""
    return list(range(min(n_tokens, length) - 1, length))


def swr(embeds: torch.Tensor, positions: list[int], alpha: float, mode: str = "soft-weight") -> torch.Tensor:
    """One prompt's embedding (L, D) with the columns at `positions` (negative words + [EOT] block) replaced by
    their SWR; every other row is returned bitwise unchanged."""
    out = embeds.clone()
    if positions:
        idx = torch.tensor(positions, device=embeds.device)
        chi = embeds[idx].T  # (D, K)
        out[idx] = swr_matrix(chi, alpha, mode).T
    return out


# ------------------------------------------------------------------------------------------ token spans


def word_positions(tokenizer, prompt: str, words: tuple[str, ...] | list[str]) -> tuple[list[int], int]:
    """Positions (SOT = 0) of each word/span in the tokenized prompt, and the prompt's token count n.

    A span is found as its own token ids inside the prompt's ids (CLIP's BPE splits on words, so a whole-word
    span tokenizes the same alone as in context); it must lie inside the words, [1, n-2]."""
    max_len = tokenizer.model_max_length
    ids = tokenizer(prompt, truncation=True, max_length=max_len).input_ids
    n = len(ids)
    positions: list[int] = []
    for word in words:
        span = tokenizer(word, add_special_tokens=False).input_ids
        starts = [i for i in range(1, n - len(span)) if span and ids[i:i + len(span)] == span]
        if not starts:
            raise SuppressError(f"cannot suppress {word!r}: it is not a word or span of the prompt {prompt!r}"
                                + (" (the prompt is cut at the tokenizer's maximum length)" if n == max_len else ""))
        for s in starts:  # every occurrence
            positions += [p for p in range(s, s + len(span)) if p not in positions]
    return sorted(positions), n


def suppress_positions(tokenizer, prompt: str, words, length: int) -> tuple[list[int], list[int], int]:
    """(negative-word positions, SWR positions = negatives + [EOT] block, n) for one prompt."""
    neg, n = word_positions(tokenizer, prompt, words)
    bad = [p for p in neg if not 1 <= p <= n - 2]
    if bad:
        raise SuppressError(f"token positions {bad} are outside the words of the prompt (1..{n - 2})")
    return neg, neg + eot_positions(n, length), n


def pipeline_positions(sd, prompt: str, words, length: int) -> tuple[list[int], list[int], int]:
    """`suppress_positions` of the prompt as `sd.encode_prompt` will see it: multi-vector triggers spelled out
    (diffusers' `maybe_convert_prompt`), so the positions after them are right."""
    return suppress_positions(sd.tokenizer, sd.maybe_convert_prompt(prompt, sd.tokenizer), words, length)


# ------------------------------------------------------------------------------------------ sampling

SUPPRESS_MODES = {"swr": 0, "swr+ito": 10}  # ITO iterations per step (official iter_each_step 10)


def make_suppression(words, suppress_mode: str = "swr", options: dict | None = None) -> Suppression:
    """(words, suppress_mode, other `Suppression` fields) -> Suppression; bad names are errors."""
    import dataclasses

    if suppress_mode not in SUPPRESS_MODES:
        raise SuppressError(f"suppress_mode {suppress_mode!r}: expected one of {', '.join(SUPPRESS_MODES)}")
    fields = {f.name for f in dataclasses.fields(Suppression)} - {"words"}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise SuppressError(f"unknown suppress option(s) {unknown}; expected some of {sorted(fields)}")
    opts = {"ito_iters": SUPPRESS_MODES[suppress_mode]} | dict(options or {})
    if suppress_mode == "swr":
        opts["ito_iters"] = 0
    elif opts["ito_iters"] < 1:
        raise SuppressError("suppress_mode 'swr+ito' needs ito_iters >= 1 (use 'swr' for no optimization)")
    supp = Suppression(words=words, **opts)
    if not supp.words:
        raise SuppressError("suppress needs at least one non-empty word or span of the prompt")
    return supp


class StepHook:
    """`callback_on_step_end` of the stock pipeline: from step `start` on, the conditional half of the context is
    the SWR embedding; in [start, end) it is first optimized by ITO on the latents of that step. Set at the end of
    step i for step i + 1, so ITO cannot run at step 0 (with retain_fraction 0 it begins at step 1)."""

    def __init__(self, original, swr_embeds, token_sets, supp: Suppression, recorder=None):
        self.original, self.swr, self.token_sets = original, swr_embeds, token_sets
        self.supp, self.recorder = supp, recorder

    def __call__(self, sd, i, t, kwargs):
        from personalize.methods.suppression.suppress_ito import optimize

        timesteps = sd.scheduler.timesteps
        nxt = i + 1
        start, end = self.supp.schedule(len(timesteps))
        if nxt >= len(timesteps) or nxt < start:
            return kwargs
        cond = self.swr
        if self.recorder is not None and nxt < end:
            latents = sd.scheduler.scale_model_input(kwargs["latents"], timesteps[nxt])
            cond = optimize(sd.unet, self.recorder, latents, timesteps[nxt], self.original, self.swr,
                            self.token_sets, self.supp, nxt, len(timesteps))
        context = kwargs["prompt_embeds"]  # (2B, L, D) = [uncond, cond] under CFG, else (B, L, D)
        uncond = context[: context.shape[0] - cond.shape[0]]
        kwargs["prompt_embeds"] = torch.cat([uncond, cond.to(context.dtype)])
        return kwargs


def suppressed_call(sd, call: dict, supp: Suppression) -> tuple[dict, Callable[[], None]]:
    """`call` (keyword arguments of `sd(...)` with `prompt`, as `Pipeline.generate` builds them) -> the arguments that
    generate those prompts with `supp` applied, and a cleanup callable (removes the ITO attention recorder).

    The prompts are encoded by the pipeline's own `encode_prompt` (textual-inversion triggers expanded, LoRA text
    layers active); SWR edits the conditional rows only, never the unconditional/negative ones."""
    from personalize.methods.suppression.suppress_ito import TokenSets

    if "callback_on_step_end" in call:
        raise SuppressError("suppress uses callback_on_step_end itself; pass one or the other")
    if call.get("prompt") is None or any(call.get(k) is not None for k in ("prompt_embeds", "negative_prompt_embeds")):
        raise SuppressError("suppress needs the prompt as text: apply it before an edit that passes prompt embeddings")
    prompts = [call["prompt"]] if isinstance(call["prompt"], str) else list(call["prompt"])
    num_images, steps = call.get("num_images_per_prompt") or 1, call.get("num_inference_steps", 50)
    guidance_scale = call.get("guidance_scale", 7.5)  # (the diffusers defaults)
    device = sd._execution_device if hasattr(sd.unet, "_hf_hook") else sd.unet.device  # (offloaded or not)
    cfg = guidance_scale > 1 and sd.unet.config.time_cond_proj_dim is None
    cond, uncond = sd.encode_prompt(prompts, device, num_images, cfg,
                                    negative_prompt=call.get("negative_prompt"))  # (P*N, L, D)
    swr_rows, sets = [], []
    for p, text in enumerate(prompts):
        neg, positions, n = pipeline_positions(sd, text, supp.words, cond.shape[1])
        swr_rows.append(swr(cond[p * num_images], positions, supp.alpha, supp.mode))
        sets += [TokenSets.from_prompt(neg, n)] * num_images
    swr_embeds = torch.stack(swr_rows).repeat_interleave(num_images, dim=0)
    recorder = None
    if supp.ito_iters > 0:
        from personalize.attention import AttentionRecorder

        factor = sd.unet.config.sample_size // supp.resolution if supp.resolution else None
        recorder = AttentionRecorder(sd.unet, factor)
    out = {k: v for k, v in call.items() if k not in ("prompt", "negative_prompt")} | {
        "prompt_embeds": swr_embeds if supp.schedule(steps)[0] == 0 else cond, "negative_prompt_embeds": uncond,
        "num_images_per_prompt": 1, "callback_on_step_end": StepHook(cond, swr_embeds, sets, supp, recorder),
        "callback_on_step_end_tensor_inputs": ["latents", "prompt_embeds"],
    }
    return out, (recorder.remove if recorder else (lambda: None))


# ------------------------------------------------------------------------------------------ the edit


class SuppressEdit:
    """SuppressEOT as a generation edit (`personalize.pipeline.Edit`): every prompt must hold the words; the call
    gets the SWR embeddings and the step hook (`suppressed_call`); the settings are `{"suppress": ...}`."""

    def __init__(self, supp: Suppression):
        if not supp.words:
            raise SuppressError("suppress needs at least one non-empty word or span of the prompt")
        self.supp = supp

    def check(self, sd, prompts: list[str]) -> None:
        for prompt in prompts:
            pipeline_positions(sd, prompt, self.supp.words, sd.tokenizer.model_max_length)

    def call_kwargs(self, sd, call: dict):
        return suppressed_call(sd, call, self.supp)

    def describe(self) -> dict:
        return {"suppress": self.supp.describe()}

    def label(self) -> str:
        return f"Suppress: {', '.join(self.supp.words)} (alpha {self.supp.alpha}, ITO {self.supp.ito_iters})"

    def __repr__(self) -> str:
        return f"SuppressEdit({self.supp!r})"


def edit(options: dict | Suppression, profile=None) -> SuppressEdit:
    """The registry's edit builder: a `Suppression`, or a dict of `make_suppression`'s fields: `words` (required),
    `suppress_mode` ("swr" or "swr+ito", default "swr") and any other `Suppression` field (alpha, ito_iters, ...).
    The base's profile changes nothing here."""
    if isinstance(options, Suppression):
        return SuppressEdit(options)
    opts = dict(options)
    words, mode = opts.pop("words", ()), opts.pop("suppress_mode", "swr")
    return SuppressEdit(make_suppression(words, mode, opts))
