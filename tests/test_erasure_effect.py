"""Concept erasure's claim in the toy world, over training seeds: ESD-x and All-but-One erase "triangle" from
direct prompts while other shapes, and the other object of "a <color> triangle and a <color> <shape>", stay; and
All-but-One keeps the unconditional prediction nearer the original than ESD-x.

Recipes (configs/toyworld/esd.yaml, abo.yaml) chosen on training seed 100 with other probe prompts (docs/effects.md,
"Concept erasure"); measured on training seeds 1-5 (MEASURED below). This test re-runs seeds 1-3 and holds the
rates to the issue's acceptance (every measured seed is inside it with room: the worst per-seed values were
direct 0.06, other shapes 0.95, other object 0.88); scored by Judge B, which no erasure trains against."""

import pytest

from personalize.resources import config_file
from personalize.toyworld import erasure
from personalize.toyworld.stats import means

pytestmark = pytest.mark.effect

ARMS = {"esd-x": str(config_file("toyworld/esd.yaml")), "abo": str(config_file("toyworld/abo.yaml"))}
# MEASURED (Judge B, training seeds 1-5, 4 images per prompt; base 1.00 on every probe and seed; mean (sd)):
#   esd-x  direct 0.013 (0.028)  other shapes 0.995 (0.011)  other object 0.925 (0.028)  uncond drift 0.048 (0.003)
#   abo    direct 0.000 (0)      other shapes 0.980 (0.014)  other object 1.000 (0)      uncond drift 0.022 (0.005)
DIRECT_MAX, OTHER_SHAPES_MIN, PAIR_OTHER_MIN = 0.10, 0.90, 0.85  # the acceptance (x base, base = 1.00)


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    rows = erasure.measure(ARMS, "triangle", [1, 2, 3], tmp_path_factory.mktemp("erase"), progress=False)
    return means(rows)


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_the_erased_shape_is_gone_from_direct_prompts_and_pairs(rates, arm):
    assert rates["base"]["direct"] >= 0.9, rates["base"]
    assert rates[arm]["direct"] <= DIRECT_MAX, rates[arm]
    assert rates[arm]["pairs_erased_object"] <= DIRECT_MAX, rates[arm]


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_other_shapes_and_the_other_object_stay(rates, arm):
    base = rates["base"]
    assert rates[arm]["other_shapes"] >= OTHER_SHAPES_MIN * base["other_shapes"], (rates[arm], base)
    assert rates[arm]["pairs_other_object"] >= PAIR_OTHER_MIN * base["pairs_other_object"], (rates[arm], base)


def test_all_but_one_keeps_the_unconditional_prediction_nearer_the_original(rates):
    # measured: 0.022 vs 0.048, paired delta -0.026 (95 % CI -0.029 to -0.023) over seeds 1-5
    assert rates["abo"]["uncond_drift"] < 0.75 * rates["esd-x"]["uncond_drift"], (rates["abo"], rates["esd-x"])
