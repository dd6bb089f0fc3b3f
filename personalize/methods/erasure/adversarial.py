"""Adversarial erasure, after AdvUnlearn (Zhang, Chen, Jia, Zhang, Fan, Liu, Hong, Liu, Liu; NeurIPS 2024,
"Defensive Unlearning with Adversarial Training for Robust Concept Erasure in Diffusion Models", sec. 4 and
Alg. 1; official code OPTML-Group/AdvUnlearn, train-scripts/AdvUnlearn.py and utils/attack_util.py).

Inner problem (the attack, attack_util.py `soft_prompt_attack`): word embeddings delta in the text encoder's
input space, put in the prompt in place of the concept's tokens, are fitted so that the model being trained
predicts for them what the original model predicts for the concept:

    delta <- argmin_delta || eps_theta(x_t, tau(P(delta))) - eps*(x_t, c_e) ||^2      (`attack_steps` Adam steps)

Outer problem (the defence): the erasure's target is asked of that prompt too,

    loss_adv = || eps_theta(x_t, tau(P(delta))) - target ||^2,   weighted by lambda_adv.

Where this departs from the official code (ours, for a CPU budget; unverified on real models):
  - delta replaces the concept's own tokens (the official `--attack_type replace_k`; its default `prefix_k` puts
    one token before the prompt) and starts from the concept's embeddings (theirs: random vocabulary words),
    then from the last round's delta (their `--attack_init latest`);
  - the attack's steps reuse the training step's x_t and t (theirs draw a fresh x_t for every attack step);
  - loss_adv is added to the plain erasure loss (theirs replaces it after `--warmup_iter` steps);
  - the erasure's filtered UNet parameters train (ESD-x's cross-attention), not the text encoder, which the
    paper finds the more robust module to unlearn (sec. 5);
  - delta is not in the training checkpoint: a resumed run restarts the attack from the concept's embeddings.
"""

from __future__ import annotations

import torch

from personalize.methods.base import MethodError


class Adversary:
    """The soft-prompt attacker of one training run: delta per concept (k tokens, width), kept between rounds."""

    def __init__(self, tokenizer, text_encoder, steps: int, lr: float):
        self.tok, self.te, self.steps, self.lr = tokenizer, text_encoder, steps, lr
        self.delta: dict[str, torch.Tensor] = {}  # concept -> (k, width), the latest round's
        self._layout: dict[tuple[str, str], tuple[list[int], int, int]] = {}  # (prompt, concept) -> (ids, start, k)

    def layout(self, prompt: str, concept: str) -> tuple[list[int], int, int]:
        """(77 ids, the first position of the concept's tokens, their count k) of `prompt`, which holds
        `concept` (a concept's training prompts are its templates filled with it)."""
        key = (prompt, concept)
        if key not in self._layout:
            at = prompt.find(concept)
            if at < 0:
                raise MethodError(f"the adversarial attack replaces the concept's words in its prompts, but "
                                  f"{prompt!r} does not contain {concept!r}")
            ids = lambda s: self.tok(s, add_special_tokens=False).input_ids if s.strip() else []  # noqa: E731
            left, word, right = ids(prompt[:at]), ids(concept), ids(prompt[at + len(concept):])
            body = [self.tok.bos_token_id] + left + word + right + [self.tok.eos_token_id]
            size = self.tok.model_max_length
            if len(body) > size:
                raise MethodError(f"{prompt!r} is longer than the text encoder's {size} tokens")
            pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
            self._layout[key] = (body + [pad] * (size - len(body)), 1 + len(left), len(word))
        return self._layout[key]

    def start(self, concept: str, prompt: str, device) -> torch.Tensor:
        """The concept's delta: the last round's, or its own word embeddings the first time, (k, width)."""
        if concept not in self.delta:
            ids, at, k = self.layout(prompt, concept)
            table = self.te.get_input_embeddings().weight
            self.delta[concept] = table[torch.tensor(ids[at:at + k], device=table.device)].detach().float().clone()
        return self.delta[concept].to(device).clone()

    def encode(self, prompts: list[str], concepts: list[str], deltas: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 77, width) text features of the prompts with each concept's tokens replaced by its delta."""
        embedding = self.te.get_input_embeddings()
        layouts = [self.layout(p, c) for p, c in zip(prompts, concepts)]
        ids = torch.tensor([ids for ids, _, _ in layouts], device=embedding.weight.device)  # (B, 77)

        def swap(module, args, out):  # out: (B, 77, width) word embeddings
            rows = [torch.cat([o[:at], deltas[c].to(o.dtype), o[at + k:]]) for o, (_, at, k), c
                    in zip(out, layouts, concepts)]
            return torch.stack(rows)

        handle = embedding.register_forward_hook(swap)
        try:
            return self.te(ids)[0]
        finally:
            handle.remove()

    def attack(self, predict, x_t, t, eps_e: torch.Tensor, prompts: list[str], concepts: list[str]) -> torch.Tensor:
        """One round of the inner problem on this step's (x_t, t); returns the adversarial text features
        (B, 77, width), detached. `predict(x_t, t, cond)` is the student's prediction; eps_e the teacher's for
        the concept. Gradients reach delta only, never the student's parameters."""
        deltas = {c: self.start(c, p, x_t.device).requires_grad_(True) for p, c in zip(prompts, concepts)}
        opt = torch.optim.Adam(list(deltas.values()), lr=self.lr)  # a fresh Adam each round, as the official
        for _ in range(self.steps):
            pred = predict(x_t, t, self.encode(prompts, concepts, deltas))
            loss = ((pred.float() - eps_e.detach().float()) ** 2).mean()
            grads = torch.autograd.grad(loss, list(deltas.values()))
            for delta, grad in zip(deltas.values(), grads):
                delta.grad = grad
            opt.step()
        self.delta |= {c: d.detach() for c, d in deltas.items()}
        with torch.no_grad():
            return self.encode(prompts, concepts, self.delta)
