"""An artifact's weight changes as one kohya-layout LoRA file (personalize.kohya), with a report of its error.

Two sources, one file:
  - LoRA adapters (the `lora` method, ClassDiffusion/SuDe on it, a third-party LoRA): their factors exactly, no
    SVD, keeping the file's rank and alpha;
  - weight differences (DreamBooth and Custom Diffusion `delta`, erasure `diff`): a truncated SVD of each
    layer's difference to the base, dW ~ up @ down with up = U_r sqrt(S_r), down = sqrt(S_r) V_r^T (kohya's
    "extract LoRA" idea, networks/extract_lora_from_models.py), 3x3 convolutions flattened to (out, in * 9) and
    written in the LoCon layout.
What a LoRA cannot hold (biases, norms, token and position embeddings, layers outside kohya's modules such as
conv_in or time_embedding) is left out and reported with its norm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from personalize import kohya
from personalize.export.changes import Changes
from personalize.kohya import Factor, LoraFormatError

DEFAULT_RANK = 16


@dataclass
class LoraExport:
    factors: dict[str, Factor]  # "unet.<module>" -> what the file holds
    errors: dict[str, float] = field(default_factory=dict)  # module -> ||dW - scale up down|| / ||dW||
    left_out: dict[str, float] = field(default_factory=dict)  # tensor -> ||d|| of a change no LoRA holds
    exact: bool = True  # the factors are the artifact's own (no SVD)

    @property
    def rank(self) -> int:
        return next(iter(self.factors.values())).rank

    @property
    def alpha(self) -> float:
        f = next(iter(self.factors.values()))
        return f.scale * f.rank

    @property
    def worst_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return kohya.state_dict(self.factors)

    def summary(self) -> str:
        parts = {p: sum(k.startswith(p + ".") for k in self.factors) for p in ("unet", "text_encoder")}
        how = "the artifact's own factors (exact)" if self.exact else "truncated SVD"
        lines = [f"rank {self.rank}, alpha {self.alpha:g}: {len(self.factors)} modules (UNet {parts['unet']}, "
                 f"text encoder {parts['text_encoder']}), {how}"]
        if not self.exact:
            lines.append("relative reconstruction error by layer (max / mean):")
            for kind, errs in sorted(by_kind(self.errors).items()):
                lines.append(f"  {kind:<28} {max(errs):.2e} / {sum(errs) / len(errs):.2e}  ({len(errs)})")
        if self.left_out:
            lines.append(f"left out (no LoRA holds them; largest norm {max(self.left_out.values()):.2e}): "
                         + left_out_summary(self.left_out))
        return "\n".join(lines)


def left_out_summary(left_out: dict[str, float]) -> str:
    """'12 biases, 40 norms, 2 embeddings, other layers: unet.conv_in.weight, ...' (the others named: they
    are what a user may not expect to lose)."""
    groups: dict[str, list[str]] = {"biases": [], "norms": [], "embeddings": [], "other layers": []}
    for key in sorted(left_out, key=left_out.get, reverse=True):
        module = key.rsplit(".", 1)[0].split(".")[-1]
        group = ("biases" if key.endswith(".bias") else "norms" if "norm" in module
                 else "embeddings" if "embedding" in module else "other layers")
        groups[group].append(key)
    counts = [f"{len(v)} {k}" for k, v in groups.items() if v and k != "other layers"]
    others = groups["other layers"]
    if others:
        counts.append(f"other layers ({len(others)}): " + ", ".join(others[:6]) + (" ..." if len(others) > 6 else ""))
    return ", ".join(counts)


def layer_kind(module: str) -> str:
    """'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k' -> 'unet attn2.to_k' (indices dropped)."""
    part, _, path = module.partition(".")
    words = re.sub(r"\.\d+(?=\.|$)", "", path).split(".")
    tail = words[-3:] if words[-2:-1] == ["net"] else words[-2:]  # ff.net.proj (ff.net.0.proj) and ff.net (.2)
    return f"{'te' if part == 'text_encoder' else part} {'.'.join(tail)}"


def by_kind(errors: dict[str, float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for module, err in errors.items():
        out.setdefault(layer_kind(module), []).append(err)
    return out


def holdable(key: str, diff: torch.Tensor) -> str | None:
    """The module a LoRA holds this parameter's change in (a Linear or Conv2d weight kohya has a module for)."""
    if not key.endswith(".weight") or diff.ndim not in (2, 4):
        return None
    module = key.removesuffix(".weight")
    return module if kohya.kohya_name(module) else None


def parse_rank(rank: str | int | None, diffs: dict[str, torch.Tensor]) -> int | None:
    """--rank: None (the default), an integer >= 1, or 'full' (the largest any layer allows); larger is an error."""
    if rank is None:
        return None
    top = max((kohya.max_rank(d) for d in diffs.values()), default=0)
    if str(rank) == "full":
        return top
    if not str(rank).isdigit() or int(rank) < 1:
        raise LoraFormatError(f"--rank must be a positive integer or 'full', got {rank!r}")
    if top and int(rank) > top:
        raise LoraFormatError(f"--rank {rank} is larger than any of these layers allows (at most {top}: the "
                              f"smaller side of the largest layer); use --rank {top} or --rank full")
    return int(rank)


def to_lora(changes: Changes, rank: str | int | None = None) -> LoraExport:
    """The LoRA of `changes`: adapters exactly unless a `rank` is asked for, differences by SVD at `rank`
    (default 16, or the adapters' rank when both come together)."""
    factors = {m: f for m, f in changes.factors.items() if kohya.kohya_name(m)}
    left_out = {m: float(f.delta().norm())
                for m, f in changes.factors.items() if m not in factors}
    diffs = {}
    for key, d in changes.diffs.items():
        module = holdable(key, d)
        if module is None:
            left_out[key] = float(d.norm())
        else:
            diffs[module] = d
    if rank is not None and factors:  # a new rank for adapters too: their products go through the SVD
        diffs |= {m: f.delta() for m, f in factors.items()}
        factors = {}
    r = parse_rank(rank, diffs) or max([f.rank for f in factors.values()] or [DEFAULT_RANK])
    out = LoraExport({}, left_out=left_out, exact=not diffs)
    for module, d in sorted(diffs.items()):
        out.factors[module], out.errors[module] = kohya.factor(d, r)
    if factors and out.factors or len({(f.rank, f.scale) for f in factors.values()}) > 1:
        factors = {m: uniform(f, r) for m, f in factors.items()}  # one rank and alpha per file (personalize.kohya)
    out.factors |= factors
    _loadable_in_diffusers(out.factors)
    if not out.factors:
        raise LoraFormatError("the artifact changes no layer a LoRA can hold (only "
                              + (", ".join(sorted(left_out)[:3]) or "nothing") + ")")
    return out


def _loadable_in_diffusers(factors: dict[str, Factor]) -> None:
    """diffusers 0.42 tells a text-encoder LoRA's layout by an out_proj or MLP module (`state_dict_utils.
    convert_state_dict_to_diffusers`) and refuses one of q/k/v_proj only: such a file gets a zero out_proj beside
    them, which changes nothing in any tool."""
    te = [m for m in factors if m.startswith("text_encoder.")]
    if te and not any(m.endswith(("out_proj", "fc1", "fc2")) for m in te):
        f = factors[te[0]]  # q/k/v_proj and out_proj are all (width, width)
        factors[te[0].rsplit(".", 1)[0] + ".out_proj"] = Factor(torch.zeros_like(f.down), torch.zeros_like(f.up),
                                                                 f.scale)


def uniform(f: Factor, rank: int) -> Factor:
    """The same change at scale 1 and rank `rank` >= f.rank (the scale folded into up, zero rows padded)."""
    down = torch.zeros(rank, *f.down.shape[1:])
    up = torch.zeros(f.up.shape[0], rank, *f.up.shape[2:])
    down[: f.rank], up[:, : f.rank] = f.down, f.up * f.scale
    return Factor(down, up, 1.0)
