"""All-but-One, "Surgical Concept Erasing with Model Preservation" (Hong, Lee, Woo, AAAI 2024).

Edit only the concept's guidance term, toward an alternative concept when one is given (Fig. 1: "Van Gogh style"
-> "dry brushing", "image of pig" -> "image of cow"), while anchoring the unconditional prediction to the
original model so that prompts without the concept, layout and DDIM inversion stay as they were. The paper's
exact equations and schedule were not available to us and no official code exists: the losses in
`personalize.methods.erasure.losses` are a reconstruction from that stated idea (unverified), and the defaults
below are ESD's paper-era values, our choice, not the paper's. With no alternative, eta = 1 + eta_ESD and
lambda_uncond = 0 the objective is exactly ESD's.
"""

from dataclasses import dataclass, field

from personalize.methods.erasure.eraser import Eraser


@dataclass
class Options:
    name: str = "abo"
    concepts: list[str] = field(default_factory=list)  # prompts to erase; one drawn per sample
    alternatives: list[str] = field(default_factory=list)  # c_a per concept (or one for all); none: toward ""
    # each concept written into these templates ("a photo of a {}", or a kind: object, style, attribute), one
    # drawn per sample; [] (default): the concept is the one prompt, the official recipe (templates.py)
    templates: list[str] = field(default_factory=list)
    eta: float = 1.0  # 1: the concept's prediction becomes the alternative's
    lambda_uncond: float = 1.0  # weight of loss_uncond (unverified placeholder)
    preserve: list[str] = field(default_factory=list)  # neighbour prompts kept as the original draws them
    lambda_preserve: float = 0.0
    train_method: str = "xattn"
    xt_sampler: str = "student"
    ddim_steps: int = 50
    xt_guidance: float = 3.0
    xt_cache: int = 0  # as esd's: cached teacher trajectories per concept (0: a fresh x_t every step)
    # adversarial training after AdvUnlearn (adversarial.py): each step, attack_steps Adam steps (lr attack_lr)
    # fit word embeddings in place of the concept's tokens to bring it back; loss_adv (weight lambda_adv) erases
    # it from that prompt too. 0 (default): off. The official code's defaults: 30 steps at lr 1e-3
    attack_steps: int = 0
    attack_lr: float = 1e-3
    lambda_adv: float = 1.0


def build(options: Options, config) -> Eraser:
    return Eraser(options, config)
