"""Concept erasure's claim in the toy world, over training seeds: ESD-x and All-but-One erase "triangle" from
direct prompts while other shapes, and the other object of "a <color> triangle and a <color> <shape>", stay; and
All-but-One keeps the unconditional prediction nearer the original than ESD-x.

Recipes (configs/toyworld/esd.yaml, abo.yaml) chosen on training seed 100 with other probe prompts (docs/effects.md,
"Concept erasure"); measured on training seeds 1-5 (MEASURED below). This test re-runs seeds 1-3 and holds the
rates to the issue's acceptance (the worst per-seed values were direct 0.06 for ESD-x and 0.125 for All-but-One
on seed 5, other shapes 0.95, other object 0.88; seeds 1-3 of both stay under 0.07 direct); scored by Judge B,
which no erasure trains against."""

import pytest

from personalize.eval import erasure
from personalize.eval.stats import means
from personalize.resources import config_file

pytestmark = pytest.mark.effect

ARMS = {"esd-x": str(config_file("toyworld/esd.yaml")), "abo": str(config_file("toyworld/abo.yaml"))}
# MEASURED (Judge B, training seeds 1-5, 4 images per prompt; base 1.00 on every probe and seed; mean (sd)):
#   esd-x  direct 0.013 (0.028)  other shapes 0.995 (0.011)  other object 0.925 (0.028)  uncond drift 0.048 (0.003)
#   abo    direct 0.025 (0.056)  other shapes 0.985 (0.022)  other object 0.988 (0.028)  uncond drift 0.023 (0.003)
#          (x_t from 16 cached teacher trajectories; sampled fresh by the student: 0.000, 0.980, 1.000, 0.022)
DIRECT_MAX, OTHER_SHAPES_MIN, PAIR_OTHER_MIN = 0.10, 0.90, 0.85  # the acceptance (x base, base = 1.00)
ESD_X_DRIFT = 0.048  # measured above; All-but-One must stay under 0.75 x it (measured 0.022)


BASE = {"direct": 1.0, "other_shapes": 1.0, "pairs_other_object": 1.0}  # the base on seeds 1-5 (every seed)


def measured(arm: str, tmp_path_factory, base: bool = True) -> dict:
    """Means over training seeds 1-3 of `arm` (one arm per module: xdist runs them side by side) and of the base
    (`base=False`: BASE, as measured; this module's ESD-x run re-measures it)."""
    rows = erasure.measure({arm: ARMS[arm]}, "triangle", [1, 2, 3], tmp_path_factory.mktemp(arm), progress=False,
                           base=base)
    return {"base": BASE} | means(rows)


def check_erased(rates: dict, arm: str) -> None:
    assert rates["base"]["direct"] >= 0.9, rates["base"]
    assert rates[arm]["direct"] <= DIRECT_MAX, rates[arm]
    assert rates[arm]["pairs_erased_object"] <= DIRECT_MAX, rates[arm]


def check_kept(rates: dict, arm: str) -> None:
    base = rates["base"]
    assert rates[arm]["other_shapes"] >= OTHER_SHAPES_MIN * base["other_shapes"], (rates[arm], base)
    assert rates[arm]["pairs_other_object"] >= PAIR_OTHER_MIN * base["pairs_other_object"], (rates[arm], base)


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    return measured("esd-x", tmp_path_factory)


def test_esd_x_erases_the_shape_from_direct_prompts_and_pairs(rates):
    check_erased(rates, "esd-x")


def test_esd_x_keeps_other_shapes_and_the_other_object(rates):
    check_kept(rates, "esd-x")


def test_the_base_draws_what_the_kept_bars_are_relative_to(rates):
    for probe, value in BASE.items():
        assert rates["base"][probe] >= value - 0.05, (probe, rates["base"])
