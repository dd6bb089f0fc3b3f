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


def test_classdiffusion_does_not_cost_compositions(tmp_path):
    """The effect measured on toy world 1.0 with Judge A (composition 0.54 -> 0.70, +0.16) is NOT reproduced on
    toy world 1.1 scored by Judge B: composition 0.33 -> 0.33, fidelity (judge-embedding cosine to the subject
    photos) 0.563 -> 0.563 (one training seed; issue 15 re-measures it over seeds). On this model neither arm
    keeps the outlined yellow circle in the new compositions (a circle in 0.03 / 0.08 of the images, the whole
    look in 0.00 / 0.03), so the toy config itself needs re-tuning (issue 15); the first 1.1 release measured
    composition 0.49 -> 0.49, look 0.075 -> 0.075. What is asserted is what ClassDiffusion must not do: cost
    compositions (margin 0.05, about half a binomial standard error over 96 checks) or fidelity (margin 0.03);
    the look is no longer asserted, since at a base rate of 0 its non-inferiority could not fail."""
    r = _run("classdiffusion", tmp_path, 5)
    base, reg = r["base"], r["regularized"]
    assert reg["composition"] >= base["composition"] - 0.05, r
    assert reg["fidelity"] >= base["fidelity"] - 0.03, r  # the images stay as close to the subject's photos


def test_sude_keeps_the_identity_of_a_one_shot_face(tmp_path):
    """One photo of a held-out face identity, DreamBooth vs DreamBooth + SuDe (weight 5, category 'person').
    On toy world 1.0 with Judge A, SuDe raised composition (expression, accessory, background asked) 0.22 ->
    0.39. That effect is NOT reproduced on toy world 1.1 scored by Judge B: DreamBooth alone already keeps the
    compositions (0.86) and SuDe keeps them (0.89; the first 1.1 release: 0.91 -> 0.80; one training seed, issue
    15 re-measures over seeds). Asserted: SuDe keeps who the person is (identity cosine 1.000 -> 0.989 measured,
    first 1.1 release 0.981 -> 0.974; margin 0.03) and draws a face (1.00)."""
    r = _run("sude", tmp_path, 1, subject="face")
    base, reg = r["base"], r["regularized"]
    assert reg["identity"] >= base["identity"] - 0.03, r  # the person stays who they are
    assert reg["category"] >= 0.9, r  # still a face
