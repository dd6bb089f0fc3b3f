"""Discriminative class tokens' claim in the toy world, over training seeds: one token steered by Judge A's heads
alone (no words, no images) makes "a photo of a <token> person" draw a held-out face identity (round face, brown
skin, short brown hair) that "a photo of a person" draws only by chance, while prompts with other asks (an
expression, a hat, glasses, a background) still get them; scored by Judge B, which the token never saw.

Recipe configs/toyworld/dct.yaml, chosen on training seeds 0 and 100 (sampling seeds 2000+/12000+; docs/effects.md,
"Discriminative class tokens"); measured on training seeds 1-5 with sampling seeds 7000 + 100 x seed (MEASURED);
this test re-runs seeds 1-3 (about 4 min each on one core)."""

import pytest

from personalize.eval import class_tokens
from personalize.eval.stats import means

pytestmark = pytest.mark.effect

# MEASURED (Judge B, training seeds 1-5; identity/base/words 16 images per seed, the six asks 4 each; mean (sd)):
#   identity 0.700 (0.259)  in context 0.683 (0.214)  other asks 0.892 (0.056)  base 0.000 (0)  words 0.938 (0.044)
#   per seed, identity 0.75 0.50 0.875 1.00 0.375; Judge A on the same images 0.812 (the token fools it a little)
# The 0.80 identity bar is not reached (docs/effects.md). Bars here: 2.5 standard errors of a 3-seed mean
# under the measured means (identity 0.70 - 0.37, in context 0.68 - 0.31), the 0.80 for the other asks
# (0.89 - 0.08), and the base at chance (0.000; 1/144 for a random face).
IDENTITY_MIN, OTHER_ASKS_MIN, IN_CONTEXT_MIN, BASE_MAX = 0.30, 0.80, 0.35, 0.15


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    return means(class_tokens.measure([1, 2, 3], tmp_path_factory.mktemp("dct")))["dct"]


def test_the_token_draws_the_identity_the_plain_prompt_draws_by_chance(rates):
    assert rates["base"] <= BASE_MAX, rates
    assert rates["identity"] >= IDENTITY_MIN, rates


def test_prompts_with_other_asks_still_get_them_and_keep_the_identity(rates):
    assert rates["other_asks"] >= OTHER_ASKS_MIN, rates
    assert rates["in_context"] >= IN_CONTEXT_MIN, rates
