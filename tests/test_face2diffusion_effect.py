"""Face2Diffusion's toy-world effect, as far as it reproduces (docs/effects.md, "Face2Diffusion"): one photo of a
held-out person through the shipped encoder (assets/toyworld_f2d/, training seed 0) carries that person's skin and
hair color into new prompts (chance 1/4 each), the prompts' other asks are still followed and the photo's
expression does not leak. Judge B scores; 8 of the 16 held-out identities, sampling seeds 7000+ (the
measurement's), the measurement prompts.

CI trains nothing here (a stage-2 run is 15 min on 2 CPU cores); the bars sit below the lowest per-seed value
of the five measured training seeds (1-5, all 16 identities, 2 images per prompt): skin 0.73-0.95, hair color
0.72-0.90, other asks 0.76-0.98, expression leak 0.00 on every seed. The identity as a whole (all four traits)
is NOT asserted: 0.00-0.13 per seed, far from the issue's 0.70 (not reproduced in the toy world). This subset
with the shipped encoder measured skin 0.72, hair color 0.84, other asks 1.00, leak 0.00.
"""

from __future__ import annotations

import pytest

from personalize.eval import face_effect
from personalize.toyworld import faces


@pytest.fixture(scope="module")
def rates():
    from personalize.resources import asset

    return face_effect.measure_encoder(asset("toyworld_f2d", "face2diffusion.safetensors"), per_prompt=1,
                                       identities=faces.HELD_OUT[::2])


def test_the_photo_gives_skin_and_hair_color(rates):
    assert rates["skin"] >= 0.60 and rates["hair_color"] >= 0.60, rates  # chance 0.25 each


def test_the_prompt_still_decides_the_rest(rates):
    assert rates["other_asks"] >= 0.60, rates
    assert rates["leak_expression"] <= 0.15, rates


def test_without_the_face_the_person_is_not_drawn(rates):
    assert rates["base"] <= 0.05, rates
