"""Which UNet parameters an erasure trains (ESD, Gandikota et al. ICCV 2023, sec. 4: ESD-x and ESD-u).

The filter works on module names, as the official rohitgandikota/erasing `esd_sd.py` does: only `nn.Linear` and
`nn.Conv2d` modules (norm layers never train), matched by name, and every parameter of a matched module
(weight and bias). Both spellings are accepted: the current code's (`esd-x`, ...) and the paper-era code's /
README's (`xattn`, `noxattn`, `full`, `selfattn`, from train-scripts/train-esd.py).

  xattn         ESD-x: cross-attention (`attn2`: to_q, to_k, to_v, to_out.0): prompt-specific concepts (a style,
                one object); only prompts that carry the concept change
  xattn-strict  only `attn2.to_k` and `attn2.to_v`: the most conservative
  noxattn       ESD-u: every Linear/Conv2d *except* cross-attention: global concepts (nudity), also changes
                prompts that never name the concept
  full          every Linear/Conv2d
  selfattn      self-attention (`attn1`) only: an ablation of the paper-era code

The paper-era train-esd.py chose by *parameter* name on the CompVis UNet instead, so its `noxattn` and `full`
also train the norm layers' affine tensors. Those sets are offered under their own names, in diffusers' naming
(CompVis `out.` = `conv_norm_out` + `conv_out`, `time_embed` = `time_embedding`):

  noxattn-paper every parameter except cross-attention, `conv_norm_out`/`conv_out` and `time_embedding`
  full-paper    every parameter
"""

from __future__ import annotations

import torch

from personalize.methods.base import MethodError

FILTERS = ("xattn", "xattn-strict", "noxattn", "full", "selfattn", "noxattn-paper", "full-paper")
PAPER_EXCLUDED = ("conv_norm_out.", "conv_out.", "time_embedding.")  # train-esd.py: 'out.' and 'time_embed'
ALIASES = {"esd-x": "xattn", "esd-x-strict": "xattn-strict", "esd-u": "noxattn", "esd-all": "full"}


def _paper_era(filter_name: str, param_name: str) -> bool:
    """train-esd.py's rule, by parameter name (norm affine tensors included)."""
    if filter_name == "full-paper":
        return True
    return "attn2" not in param_name and not param_name.startswith(PAPER_EXCLUDED)


def canonical(train_method: str) -> str:
    """The filter's name in FILTERS for either spelling; a clear error for anything else."""
    name = ALIASES.get(train_method, train_method)
    if name not in FILTERS:
        spellings = ", ".join(FILTERS) + " (or " + ", ".join(ALIASES) + ")"
        raise MethodError(f"method.train_method={train_method!r} is not a parameter filter; expected one of "
                          f"{spellings}")
    return name


def _matches(filter_name: str, module_name: str) -> bool:
    if filter_name == "xattn":
        return "attn2" in module_name
    if filter_name == "xattn-strict":
        return "attn2.to_k" in module_name or "attn2.to_v" in module_name
    if filter_name == "noxattn":
        return "attn2" not in module_name
    if filter_name == "selfattn":
        return "attn1" in module_name
    return True  # full


def selected_parameters(unet: torch.nn.Module, train_method: str) -> dict[str, torch.nn.Parameter]:
    """{parameter name: parameter} of the Linear/Conv2d modules the filter selects, in the UNet's order."""
    name = canonical(train_method)
    if name.endswith("-paper"):
        chosen = {n: p for n, p in unet.named_parameters() if _paper_era(name, n)}
    else:
        chosen = {f"{module_name}.{param_name}": param for module_name, module in unet.named_modules()
                  if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and _matches(name, module_name)
                  for param_name, param in module.named_parameters(recurse=False)}
    if not chosen:
        raise MethodError(f"method.train_method={train_method!r} selects no parameter of this UNet")
    return chosen
