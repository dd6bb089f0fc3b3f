"""The toy-world effect of ClassDiffusion and SuDe against the same base without them (issue 5).

Both arms of a test train on the same images with the same seeds (configs/toyworld/<method>.yaml), then draw
the subject in compositions the examples never show (small, stripes, dots; personalize.toyworld.effects), scored
by the toy world's judge on fixed seeds."""

from pathlib import Path

import pytest

from personalize.toyworld.effects import arms_from_config, compare

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "toyworld"


def _run(name, tmp_path, n_images):
    arms, train, prompt = arms_from_config(CONFIGS / f"{name}.yaml")
    train = {k: v for k, v in train.items() if k not in ("output_dir", "validation_prompt")}
    return compare(arms, tmp_path, train, n_images=n_images, instance_prompt=prompt)


def test_classdiffusion_keeps_compositions_custom_diffusion_loses(tmp_path):
    """Measured: composition 0.54 -> 0.70 (+0.16; 600 steps: 0.50 -> 0.68), look 0.10 -> 0.10. The margin 0.08
    is half the measured gain, about one binomial standard error of the difference over these 92 attribute
    checks; runs are deterministic on one torch build, the margin absorbs numeric drift across builds."""
    r = _run("classdiffusion", tmp_path, 5)
    base, reg = r["base"], r["regularized"]
    assert reg["composition"] >= base["composition"] + 0.08, r
    assert reg["look"] >= base["look"] - 0.05, r  # the subject's own attributes are kept as often


def test_sude_pulls_the_one_shot_subject_toward_its_look_not_toward_compositions(tmp_path):
    """What SuDe measurably does in the toy world (one image, DreamBooth, instance prompt 'a sks', weight 1.6):
    look 0.60 -> 0.80 and embedding fidelity 0.81 -> 0.89, but composition 0.875 -> 0.54. The paper's effect
    (compositions kept) is NOT reproduced here: with the class word in the prompt ('a sks circle') the gate
    fires on ~1 % of steps and the arms are equal; without it, the push along eps(category) - eps(uncond) at the
    subject's own noisy latent acts as extra guidance toward the subject. This test pins the measured direction
    (margin 0.1, half the measured +0.2) so a change in the loss shows; see issue 5's closing note."""
    r = _run("sude", tmp_path, 1)
    base, reg = r["base"], r["regularized"]
    assert reg["look"] >= base["look"] + 0.1, r
    assert reg["category"] >= base["category"] - 0.05, r  # still a circle as often
