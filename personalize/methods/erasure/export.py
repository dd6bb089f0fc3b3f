"""An erasure artifact as a LoRA file that AUTOMATIC1111, ComfyUI and diffusers' `load_lora_weights` read.

Each changed weight's difference dW (out, in) is factored by a truncated SVD, dW ~ up @ down with
up = U_r sqrt(S_r) (out, r) and down = sqrt(S_r) V_r^T (r, in), and written in kohya's layout:

    lora_unet_<module path, '.' -> '_'>.lora_down.weight   (r, in)
    lora_unet_<module path, '.' -> '_'>.lora_up.weight     (out, r)
    lora_unet_<module path, '.' -> '_'>.alpha              r  (scale alpha / r = 1)

kohya's sd-scripts name UNet modules by their diffusers paths (networks/lora.py), which is what diffusers
converts back (`_convert_non_diffusers_lora_to_diffusers`). A 1x1 convolution is exported as a linear map. A LoRA
holds no biases and no k x k convolutions: such differences are left out and reported (ESD-x trains the to_out
bias; `train_method: xattn-strict` trains only to_k/to_v weights and exports exactly at full rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from personalize.artifacts import Artifact, ArtifactError


@dataclass
class Export:
    state_dict: dict[str, torch.Tensor]
    rank: int
    errors: dict[str, float] = field(default_factory=dict)  # module -> ||dW - up down||_F / ||dW||_F
    left_out: dict[str, float] = field(default_factory=dict)  # key -> ||d|| of a difference a LoRA cannot hold

    @property
    def worst_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def summary(self) -> str:
        lines = [f"rank {self.rank}: {len(self.errors)} modules, relative reconstruction error "
                 f"max {self.worst_error:.2e}, mean {sum(self.errors.values()) / max(len(self.errors), 1):.2e}"]
        if self.left_out:
            lines.append(f"left out ({len(self.left_out)} tensors a LoRA cannot hold, largest norm "
                         f"{max(self.left_out.values()):.2e}): {', '.join(sorted(self.left_out)[:3])}"
                         + (" ..." if len(self.left_out) > 3 else ""))
        return "\n".join(lines)


def factor(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up (out, rank), down (rank, in), relative error) of the truncated SVD of a 2-D difference; a matrix of
    smaller rank is zero-padded to `rank`, so that every module of the file has the same rank (diffusers' kohya
    converter drops some modules' alpha, e.g. the mid block's, and then scales them by alpha / r of the others)."""
    u, s, vh = torch.linalg.svd(diff.double(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    up = torch.zeros(diff.shape[0], rank, dtype=torch.float64)
    down = torch.zeros(rank, diff.shape[1], dtype=torch.float64)
    up[:, :r], down[:r] = u[:, :r] * root, root[:, None] * vh[:r]
    norm = diff.double().norm()
    err = float((diff.double() - up @ down).norm() / norm) if norm > 0 else 0.0
    return up.float().contiguous(), down.float().contiguous(), err


def as_matrix(key: str, diff: torch.Tensor) -> torch.Tensor | None:
    """The 2-D map a LoRA can hold for this difference (a Linear weight, a 1x1 convolution flattened), else None
    (a bias, a k x k convolution)."""
    if not key.endswith(".weight"):
        return None
    if diff.ndim == 4 and diff.shape[2:] == (1, 1):
        return diff.flatten(1)
    return diff if diff.ndim == 2 else None


def to_lora(art: Artifact, rank: int = 16) -> Export:
    """The kohya-layout LoRA of an erasure artifact's `diff` weights at `rank` (capped at the largest rank any
    module can have), alpha = rank."""
    if art.kind != "diff":
        raise ArtifactError(f"{art.path}: only erasure artifacts (weights kind 'diff') export to LoRA; this one "
                            f"is {art.kind!r}")
    if rank < 1:
        raise ArtifactError(f"LoRA rank must be >= 1, got {rank}")
    matrices = {key: as_matrix(key, diff) for key, diff in sorted(art.weights.items())}
    # no zero-padding beyond the largest rank any module can have
    rank = min(rank, max((min(m.shape) for m in matrices.values() if m is not None), default=rank))
    out = Export({}, rank)
    for key, flat in matrices.items():
        if flat is None:
            out.left_out[key] = float(art.weights[key].norm())
            continue
        module = key.removeprefix("unet.").removesuffix(".weight")
        up, down, err = factor(flat, rank)
        name = "lora_unet_" + module.replace(".", "_")
        out.state_dict |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                           f"{name}.alpha": torch.tensor(float(rank))}
        out.errors[module] = err
    if not out.errors:
        raise ArtifactError(f"{art.path}: no weight difference a LoRA can hold (only biases or k x k convolutions)")
    return out


def write_lora(art: Artifact, path, rank: int = 16) -> Export:
    """Export and write atomically; the file's metadata names the source, concepts, rank and worst error."""
    from personalize.atomic import atomic_save_file

    export = to_lora(art, rank)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(export.rank),
            "ss_network_alpha": str(export.rank),
            "personalize_source": str(art.path), "personalize_method": art.method,
            "concepts": art.metadata.get("concepts", ""), "reconstruction_error": f"{export.worst_error:.3e}"}
    atomic_save_file(export.state_dict, path, meta)
    return export
