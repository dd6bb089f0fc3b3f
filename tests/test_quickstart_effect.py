"""The quickstart's claim, over training seeds: DreamBooth on 3 photos of a person the toy model never saw draws
that person in new prompts, where the base model draws them only by chance.

Settings (3 captioned photos, lr 1e-4, 300 steps) chosen on identities 27 and 63 with training seeds 1-2;
measured on the quickstart's identity 90 with training seeds 3-7 and on 8 other held-out identities
(docs/effects.md, "Quickstart"). This test re-runs seeds 3-5 of identity 90 (MEASURED below); the person's bar
is about 3 standard errors of a 3-seed mean under the 5-seed mean, prompt following (no spread measured) is held
to the quickstart's acceptance, 0.90."""

import pytest

from personalize.eval import quickstart
from personalize.eval.stats import means

pytestmark = pytest.mark.effect

PERSON, FOLLOWS = "the person (all 4 traits)", "follows the prompt"
# MEASURED, identity 90, training seeds 3-7 (24 images each): the person 0.992 (95 % CI 0.969-1.015, sd 0.019),
# follows the prompt 1.000 (every seed); base 0.000 / 1.000. Without captions it was 0.992 / 0.767 ("smiling" lost).
PERSON_BAR, FOLLOWS_BAR = 0.95, 0.90


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    rows = quickstart.measure([quickstart.IDENTITY], [3, 4, 5], tmp_path_factory.mktemp("qs"), progress=False)
    got = means(rows)
    print(got)
    return got


def test_the_personalized_images_are_the_person_and_follow_the_prompts(rates):
    assert rates["personalized"][PERSON] >= PERSON_BAR, rates
    assert rates["personalized"][FOLLOWS] >= FOLLOWS_BAR, rates


def test_the_base_model_draws_the_person_only_by_chance(rates):
    assert rates["base"][PERSON] <= 0.05, rates  # chance: 1 in 144 identities
    assert rates["base"][FOLLOWS] >= FOLLOWS_BAR, rates
