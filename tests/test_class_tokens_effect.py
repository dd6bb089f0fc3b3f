"""Discriminative class tokens' claim in the toy world, over training seeds: one token steered by Judge A's heads
alone (no words, no images) makes "a photo of a <token> person" draw a held-out face identity (round face, brown
skin, short brown hair) that "a photo of a person" draws only by chance, while prompts with other asks (an
expression, a hat, glasses, a background) still get them; scored by Judge B, which the token never saw.

Recipe configs/toyworld/dct.yaml, chosen on training seeds 0 and 100 (sampling seeds 2000+/12000+; docs/effects.md,
"Discriminative class tokens"); measured on training seeds 1-5 with sampling seeds 7000 + 100 x seed (MEASURED);
this test re-runs seeds 1-3."""

import pytest

from personalize.toyworld import class_tokens
from personalize.toyworld.stats import means

pytestmark = pytest.mark.effect

# MEASURED (Judge B, training seeds 1-5; identity/base/words 16 images per seed, the six asks 4 each; mean (sd)):
#   identity 0.963 (0.034)  in context 0.825 (0.068)  other asks 1.000 (0)  base 0.000 (0)  words 0.938 (0.044)
#   Judge A on the identity prompt 0.963: the same as Judge B's, no gap
# Bars: the acceptance (identity and other asks >= 0.80); the identity in the company of another ask
# >= 0.70 (3 standard errors of a 3-seed mean under the measured 0.825); the base stays at chance.
IDENTITY_MIN, OTHER_ASKS_MIN, IN_CONTEXT_MIN, BASE_MAX = 0.80, 0.80, 0.70, 0.15


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    return means(class_tokens.measure([1, 2, 3], tmp_path_factory.mktemp("dct")))["dct"]


def test_the_token_draws_the_identity_the_plain_prompt_draws_by_chance(rates):
    assert rates["base"] <= BASE_MAX, rates
    assert rates["identity"] >= IDENTITY_MIN, rates


def test_prompts_with_other_asks_still_get_them_and_keep_the_identity(rates):
    assert rates["other_asks"] >= OTHER_ASKS_MIN, rates
    assert rates["in_context"] >= IN_CONTEXT_MIN, rates
