"""ClassDiffusion and SuDe in the toy world, over training seeds (issue 15; docs/effects.md has the numbers).
SuDe's test is in test_regularizer_effects_sude.py, its own module, so that xdist trains the two side by side.

Each test trains both arms of configs/toyworld/<method>.yaml (the base alone, the base + the regularizer) on
training seeds 1-3 with the same images, draws the subject in compositions its examples never show, and scores
them with Judge B (personalize.eval.effects.measure); the paired difference per seed gives a mean and a 95 %
t interval (personalize.eval.stats). The configs' hyper-parameters were chosen on training seed 100; the
reported effects (docs/effects.md) are over seeds 1-5, of which these are the first three.

Neither paper's composition effect is reproduced in the toy world (5 seeds, docs/effects.md), so what is asserted
is (a) what each loss provably does to the model, measured on the tuned model itself
(personalize.eval.mechanism), and (b) that the regularizer costs nothing, with margins of about 3 standard
errors of a 3-seed mean, taken from the 5-seed spread."""

from pathlib import Path

import pytest

from personalize.eval.effects import measure
from personalize.eval.stats import effects

pytestmark = pytest.mark.effect  # runs by default; `pytest -m 'not effect'` leaves it out

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "toyworld"
SEEDS = [1, 2, 3]


def _effects(name, tmp_path_factory):
    rows = measure(CONFIGS / f"{name}.yaml", SEEDS, tmp_path_factory.mktemp(name), progress=False)
    found = effects(rows, "base")["regularized"]
    print(name, {m: str(e) for m, e in found.items()})
    return found


@pytest.fixture(scope="module")
def classdiffusion(tmp_path_factory):
    return _effects("classdiffusion", tmp_path_factory)


def test_classdiffusion_keeps_the_phrase_nearer_its_class(classdiffusion):
    """The SPL's own target (Huang et al. 2025, sec. 3): after the same training, the EOS feature of 'a sks
    circle' is nearer that of 'a circle' with the SPL than without. Measured over seeds 1-5: drift 1.04e-2 ->
    1.02e-2, delta -2.2e-4 (95 % CI -2.4e-4 to -1.9e-4). The drift is tiny in both arms (1.00e-2 before any
    training): the toy model's compositions are lost through the UNet's K/V, which the SPL never reaches."""
    drift = classdiffusion["text_drift"]
    assert drift.harmful, drift  # the whole interval below zero: less drift with the SPL


def test_classdiffusion_costs_no_compositions_or_fidelity(classdiffusion):
    """5 seeds: composition 0.629 -> 0.625 (delta -0.004, CI -0.024 to +0.015; sd of a seed's delta 0.016, so a
    3-seed mean has se 0.009); fidelity 0.582 -> 0.582 (CI -0.002 to +0.002)."""
    assert classdiffusion["composition"].mean >= -0.03, classdiffusion["composition"]
    assert classdiffusion["fidelity"].mean >= -0.01, classdiffusion["fidelity"]
