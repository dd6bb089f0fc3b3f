"""Issue 39's neighbour claims in the toy world, over training seeds: erasing the bare word "red"
(configs/toyworld/esd-red.yaml: templates putting the color on each shape, the other colors preserved) takes red
objects away and keeps green, blue and yellow ones; erasing glasses with All-but-One toward the same face without
them (configs/toyworld/abo-glasses.yaml) takes the glasses away and keeps the asked expression and hats.

Training seed 100 chose the recipes (each the first one tried; docs/effects.md); measured on training seeds 1-5
(MEASURED below). This test re-runs seeds 1-3, scored by Judge B, which no erasure trains against; the base is
1.00 on every probe and seed (not re-run here, to keep CI short). Bars: the issue's (other colors, hats and the
expression >= 0.90); for what is erased, the 5-seed mean plus about 2.5 standard errors of a 3-seed mean."""

import pytest

from personalize.eval import erasure
from personalize.eval.stats import means
from personalize.resources import config_file

pytestmark = pytest.mark.effect

# MEASURED (Judge B, training seeds 1-5, 4 images per prompt; mean (sd)):
#   red:     direct 0.100 (0.224; seed 1 0.50, seeds 2-5 0.00)  red object of a pair 0.163 (0.363; seed 1 0.81)
#            other colors 1.000 (0)  other object of a pair 1.000 (0)  uncond drift 0.020 (0.004)
#   glasses: direct 0.050 (0.052)  hats 1.000 (0)  the expression asked beside the glasses 1.000 (0)
# Red's erasure fails on one seed in five (seed 1, which this test runs), so its bars are the 5-seed mean plus
# 2.5 standard errors of a 3-seed mean (0.10 + 0.32, 0.16 + 0.52): they catch a recipe that stops erasing on
# most seeds, not the one-seed failure, which docs/effects.md reports.
BARS = {
    "red": ("toyworld/esd-red.yaml", {"direct": ("<=", 0.45), "pairs_erased_object": ("<=", 0.70),
                                      "other_colors": (">=", 0.90), "pairs_other_object": (">=", 0.90)}),
    "glasses": ("toyworld/abo-glasses.yaml", {"direct": ("<=", 0.15), "face_kept": (">=", 0.90),
                                              "other_accessories": (">=", 0.90)}),
}


@pytest.mark.parametrize("concept", list(BARS))
def test_the_concept_goes_and_its_neighbours_stay(concept, tmp_path):
    config, bars = BARS[concept]
    rows = erasure.measure({concept: str(config_file(config))}, concept, [1, 2, 3], tmp_path, progress=False,
                           base=False)
    rates = means(rows)[concept]
    for probe, (op, bar) in bars.items():
        assert (rates[probe] <= bar) if op == "<=" else (rates[probe] >= bar), (probe, rates)
