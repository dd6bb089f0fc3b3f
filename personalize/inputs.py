"""The settings of one generation call, checked before anything reaches the model: prompts that are text, numbers
diffusers would misread or fail on deep inside its call. `Pipeline.generate` calls these, and the CLI calls them
again before it loads the model, so a bad flag costs no model load."""

from __future__ import annotations

from personalize.errors import PersonalizeError, check_text


def check_prompts(prompts: list, negatives: list | None = None) -> None:
    """Each prompt a non-empty string of valid text (an empty prompt is refused, as the CLI and the app refuse
    it); negatives, one per prompt, None or text."""
    if not prompts or any(not isinstance(p, str) for p in prompts):
        raise PersonalizeError("prompt must be a string or a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise PersonalizeError(f"prompt {i + 1} of {len(prompts)} is empty: describe the image to generate"
                                   if len(prompts) > 1 else "the prompt is empty: describe the image to generate")
        check_text(p, "prompt")
    negatives = [None] * len(prompts) if negatives is None else negatives
    if len(negatives) != len(prompts):
        raise PersonalizeError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts")
    for n in negatives:
        if n is not None and not isinstance(n, str):
            raise PersonalizeError(f"negative_prompt must be a string or None, got {type(n).__name__}")
        check_text(n or "", "negative prompt")


def check_numbers(steps, guidance_scale, height, width, seeds) -> None:
    """One clear line for a setting diffusers would take wrongly (NaN guidance silently turns CFG off) or fail on
    deep inside the call (a size that is not a positive multiple of 8, a seed torch cannot take)."""
    import math
    from numbers import Integral, Real

    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise PersonalizeError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(guidance_scale, Real) or not math.isfinite(guidance_scale):
        raise PersonalizeError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    for name, side in (("height", height), ("width", width)):
        if side is not None and (not isinstance(side, Integral) or side < 8 or side % 8):
            raise PersonalizeError(f"{name} must be a positive multiple of 8 (the VAE's factor), got {side!r}")
    bad = [s for s in seeds if not 0 <= s < 2**63]
    if bad:
        raise PersonalizeError(f"seeds must be in 0..2**63-1, got {bad[:3]}")
