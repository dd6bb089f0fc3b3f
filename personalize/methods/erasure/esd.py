"""ESD, "Erasing Concepts from Diffusion Models" (Gandikota et al., ICCV 2023): fine-tune the UNet so that its
prediction for the concept equals the original unconditional prediction pushed against the concept (negative
guidance, eq. 3). ESD-x trains cross-attention (`train_method: xattn`), ESD-u everything else (`noxattn`).

Defaults are the paper-era code's (rohitgandikota/erasing, train-scripts/train-esd.py at commit a2189e9): eta 1,
lr 1e-5 (configs/esd.yaml), 1000 iterations, batch 1, x_t from a 50-step DDIM run at guidance 3 by the model being
trained. The newer `esd_sd.py` trains 200 iterations at lr 5e-5 with `--negative_guidance 2`; its target is built
on eps*(c_e), not eps*(c_0) (`losses.py`), so its 2 is our eta 1: `--method.eta=1 --train.learning_rate=5e-5
--train.max_train_steps=200 --method.xt_sampler=teacher` is that recipe. Which filter fits which concept (paper
sec. 4.1): a style or one object -> xattn; a concept prompts rarely name, such as nudity -> noxattn.
"""

from dataclasses import dataclass, field

from personalize.methods.erasure.eraser import Eraser


@dataclass
class Options:
    name: str = "esd"
    concepts: list[str] = field(default_factory=list)  # prompts to erase, e.g. ["van gogh"]; one drawn per sample
    # erase an attribute *from* a concept (e.g. "glasses" from "a photo of a person"): the official esd_sd.py's
    # --erase_from, not in the paper; one for all concepts or one per concept ("" for none)
    erase_from: list[str] = field(default_factory=list)
    # each concept written into these templates ("a photo of a {}", or a kind: object, style, attribute), one
    # drawn per sample; [] (default): the concept is the one prompt, the official recipe (templates.py)
    templates: list[str] = field(default_factory=list)
    eta: float = 1.0  # negative guidance (paper eq. 3); esd_sd.py's --negative_guidance is this + 1 (its 2 = our 1)
    # neighbour prompts kept as the original model draws them (as All-but-One's neighbour term): loss_preserve
    # = ||eps_theta(x_t, c_p) - eps*(x_t, c_p)||^2, weighted by lambda_preserve; ours, not in the ESD paper
    preserve: list[str] = field(default_factory=list)
    lambda_preserve: float = 0.0
    train_method: str = "xattn"  # xattn | xattn-strict | noxattn | full | selfattn (or esd-x, esd-u, ...)
    xt_sampler: str = "student"  # who draws x_t: the model being trained (paper) or the frozen "teacher"
    ddim_steps: int = 50
    xt_guidance: float = 3.0  # classifier-free guidance while drawing x_t
    # teacher x_t only: keep this many DDIM trajectories per concept and draw x_t from them (0: a fresh sample
    # every step, as the official code). Ours, for speed: a step then costs about one DreamBooth step.
    xt_cache: int = 0
    # adversarial training after AdvUnlearn (adversarial.py): each step, attack_steps Adam steps (lr attack_lr)
    # fit word embeddings in place of the concept's tokens to bring it back; loss_adv (weight lambda_adv) erases
    # it from that prompt too. 0 (default): off. The official code's defaults: 30 steps at lr 1e-3
    attack_steps: int = 0
    attack_lr: float = 1e-3
    lambda_adv: float = 1.0


def build(options: Options, config) -> Eraser:
    return Eraser(options, config)
