"""Discriminative class tokens' claim in the toy world, over training seeds: one token steered by Judge A's heads
alone (no words, no images) makes "a photo of a <token> person" draw a held-out face identity (round face, brown
skin, short brown hair) that "a photo of a person" draws only by chance, while prompts with other asks (an
expression, a hat, glasses, a background) still get them; scored by Judge B, which the token never saw.

Recipe configs/toyworld/dct.yaml, chosen on training seed 0 with sampling seeds 2000/3000 (docs/effects.md,
"Discriminative class tokens"); measured on training seeds 1-5 with sampling seeds 7000 + 100 x seed (MEASURED);
this test re-runs seeds 1-3."""

import pytest

from personalize.toyworld import class_tokens
from personalize.toyworld.stats import means

pytestmark = pytest.mark.effect

# MEASURED (Judge B, training seeds 1-5; identity/base/words 16 images per seed, the six asks 4 each; mean (sd)):
MEASURED = {}
IDENTITY_MIN, OTHER_ASKS_MIN, BASE_MAX = None, None, None


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    return means(class_tokens.measure([1, 2, 3], tmp_path_factory.mktemp("dct")))["dct"]


def test_the_token_draws_the_identity_the_plain_prompt_draws_by_chance(rates):
    assert rates["base"] <= BASE_MAX, rates
    assert rates["identity"] >= IDENTITY_MIN, rates


def test_prompts_with_other_asks_still_get_them(rates):
    assert rates["other_asks"] >= OTHER_ASKS_MIN, rates
