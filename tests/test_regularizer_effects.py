"""The toy-world effect of ClassDiffusion and SuDe against the same base without them (issue 5).

Both arms of a test train on the same images with the same seeds (configs/toyworld/<method>.yaml), then draw
the subject in compositions the examples never show (small, stripes, dots; personalize.toyworld.effects), scored
by the toy world's judge on fixed seeds."""

from pathlib import Path

import pytest

from personalize.toyworld.effects import arms_from_config, compare

pytestmark = pytest.mark.effect  # runs by default; `pytest -m 'not effect'` leaves it out

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "toyworld"


def _run(name, tmp_path, n_images, subject="circle"):
    arms, train, prompt = arms_from_config(CONFIGS / f"{name}.yaml")
    train = {k: v for k, v in train.items() if k not in ("output_dir", "validation_prompt")}
    return compare(arms, tmp_path, train, n_images=n_images, instance_prompt=prompt, subject=subject)


def test_classdiffusion_keeps_compositions_custom_diffusion_loses(tmp_path):
    """Measured: composition 0.54 -> 0.70 (+0.16; 600 steps: 0.50 -> 0.68), look 0.10 -> 0.10. The margin 0.08
    is half the measured gain, about one binomial standard error of the difference over these 92 attribute
    checks; runs are deterministic on one torch build, the margin absorbs numeric drift across builds."""
    r = _run("classdiffusion", tmp_path, 5)
    base, reg = r["base"], r["regularized"]
    assert reg["composition"] >= base["composition"] + 0.08, r
    assert reg["look"] >= base["look"] - 0.05, r  # the subject's own attributes are kept as often


def test_sude_keeps_compositions_of_a_one_shot_face(tmp_path):
    """One photo of a held-out face identity, DreamBooth vs DreamBooth + SuDe (weight 5, category 'person').
    Measured: composition (expression, accessory, background asked) 0.22 -> 0.39, identity cosine 0.995 ->
    0.997. Margin 0.08: half the measured gain, about one binomial standard error over these 64 checks; runs
    are deterministic on one torch build. (On the circle subject SuDe does not show this effect: the subject
    never stops being a 'circle' to the model; see configs/toyworld/sude.yaml and issue 5's note.)"""
    r = _run("sude", tmp_path, 1, subject="face")
    base, reg = r["base"], r["regularized"]
    assert reg["composition"] >= base["composition"] + 0.08, r
    assert reg["identity"] >= base["identity"] - 0.03, r  # the person stays who they are
