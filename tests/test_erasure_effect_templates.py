"""Issue 39's claim in the toy world, over training seeds: ESD-x given the bare word "triangle", written into concept
templates with the other shapes preserved (configs/toyworld/esd-templates.yaml), erases triangles from direct
prompts, from phrasings and colors no template names and from the second place of a pair, while other shapes and
the partner of a pair stay. Without templates the same bare word erases nothing (docs/effects.md, "Bare names":
1.00 on every probe and seed; not re-run here, to keep CI short).

Training seed 100 chose lambda_preserve (the one value tried); measured on training seeds 1-5 (MEASURED below).
This test re-runs seeds 1-3, scored by Judge B, which no erasure trains against. Each bar is the mean of seeds
1-3 plus (or minus) about 2.5 standard errors of a 3-seed mean, the standard deviation taken over seeds 1-5."""

import pytest

from personalize.eval import erasure
from personalize.eval.stats import means
from personalize.resources import config_file

pytestmark = pytest.mark.effect

ARM = "templates+preserve"
# MEASURED (Judge B, training seeds 1-5, 4 images per prompt; base 1.00 on every probe and seed; mean (sd)):
#   direct 0.037 (0.084)  held-out phrasings 0.100 (0.081)  second in pair 0.075 (0.068)
#   other shapes 1.000 (0)  partner in a pair 0.938 (0.077)  uncond drift 0.027 (0.004)
#   seeds 1-3: direct 0.063, held-out 0.104, second 0.042, other shapes 1.000, partner 0.917
BACK_MAX = {"direct": 0.20, "held_out_phrasings": 0.25, "second_in_pair": 0.20, "pairs_erased_object": 0.10}
KEPT_MIN = {"other_shapes": 0.90, "pairs_other_object": 0.80}


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    rows = erasure.measure({ARM: str(config_file("toyworld/esd-templates.yaml"))}, "triangle", [1, 2, 3],
                           tmp_path_factory.mktemp("templates"), progress=False, base=False, phrasings=True)
    return means(rows)[ARM]


def test_the_bare_word_is_erased_across_phrasings_and_pairs(rates):
    for probe, bar in BACK_MAX.items():
        assert rates[probe] <= bar, (probe, rates)


def test_other_shapes_and_the_partner_of_a_pair_stay(rates):
    for probe, bar in KEPT_MIN.items():
        assert rates[probe] >= bar, (probe, rates)
