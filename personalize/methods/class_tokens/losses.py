"""DCT's loss and its early stop as pure functions (Schwartz et al., "Discriminative Class Tokens for
Text-to-Image Diffusion Models", ICCV 2023; idansc/discriminative_class_tokens `run.py`).

The only training signal is the steering classifier's cross-entropy toward the target class on an image the
frozen model generated with the token in its prompt (`loss_ce`); there is no other term. `negate` pushes the
image *away* from the class instead (the unmerged PRs #4/#5 of the official repository: a classifier-guided
eraser; "correct" then means the argmax is not the class).

The official stop rule (run.py), applied once per optimizer step to that step's summed loss over its images:
  - summed loss > collapse_factor x the lowest so far: "training collapse", move on to the next noise seed;
  - below the lowest so far: the new best (kept: the checkpoint saved is the best-loss step, not the last),
    patience reset; otherwise patience - 1;
  - stop when the step's accuracy is > stop_accuracy (strictly), patience < 0, or max_steps steps were taken.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


def loss_ce(logits: torch.Tensor, target: int, negate: bool = False) -> torch.Tensor:
    """Mean cross-entropy of `logits` (B, n_classes) toward class `target`; `negate`: its negative (away)."""
    labels = torch.full((logits.shape[0],), int(target), dtype=torch.long, device=logits.device)
    ce = torch.nn.functional.cross_entropy(logits.float(), labels)
    return -ce if negate else ce


def correct(logits: torch.Tensor, target: int, negate: bool = False) -> int:
    """How many images the classifier reads as the target (`negate`: as anything but the target)."""
    hits = logits.argmax(-1) == int(target)
    return int((~hits if negate else hits).sum())


@dataclass(frozen=True)
class StopState:
    """Where the early stop stands: steps taken, the lowest summed loss, patience left, the noise seed."""

    steps: int = 0
    best_loss: float = float("inf")
    best_step: int = -1
    patience: int = 15
    seed: int = 35


@dataclass(frozen=True)
class StopRule:
    patience: int = 15
    stop_accuracy: float = 0.7  # stop when a step's accuracy is strictly above it
    collapse_factor: float = 2.0
    max_steps: int = 50

    def start(self, seed: int) -> StopState:
        return StopState(patience=self.patience, seed=seed)

    def update(self, state: StopState, total_loss: float, n_correct: int, n_images: int
               ) -> tuple[StopState, bool, bool]:
        """(the next state, whether this step is the new best (save it), whether to stop) after one optimizer
        step with summed loss `total_loss` and `n_correct` of `n_images` images read as the target."""
        seed = state.seed + 1 if total_loss > self.collapse_factor * state.best_loss else state.seed
        best = total_loss < state.best_loss
        state = replace(state, steps=state.steps + 1, seed=seed,
                        best_loss=total_loss if best else state.best_loss,
                        best_step=state.steps if best else state.best_step,
                        patience=self.patience if best else state.patience - 1)
        stop = (n_correct / n_images > self.stop_accuracy or state.patience < 0 or state.steps >= self.max_steps)
        return state, best, stop


def loss_heads(logits: dict[str, torch.Tensor], target: dict[str, int], negate: bool = False) -> torch.Tensor:
    """`loss_ce` summed over a classifier's heads toward {head: class} (one head for a transformers classifier;
    the toy judge's four identity heads and `kind` for a face identity)."""
    return sum(loss_ce(logits[head], k, negate) for head, k in target.items())


def correct_heads(logits: dict[str, torch.Tensor], target: dict[str, int], negate: bool = False) -> int:
    """How many images every head reads as its target (`negate`: how many miss at least one head)."""
    hits = torch.stack([logits[head].argmax(-1) == int(k) for head, k in target.items()]).all(0)  # (B,)
    return int((~hits if negate else hits).sum())
