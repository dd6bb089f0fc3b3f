"""Appearance through text embeddings (personalize.eval.appearance): textual inversion on 3 photos of a
held-out identity asks the model for a person it never saw.

Measured on toy world 1.1 (Judge B, identity 45, 16 images per seed): identity match 1.00, 1.00, 1.00, 0.81,
1.00 on training seeds 1-5 (mean 0.96, 95 % t-interval 0.86-1.07, clipped at 1), base prompts ("person")
0.00; settings chosen on identity 18 with seeds 11-12. On the first 1.1 release it was 0.00 on every seed.
Identity 45 is an easy one: over all 16 held-out identities (seed 1) the mean is 0.47 (95 % interval
0.30-0.64), 0.00 to 1.00 by identity; this test guards the mechanism on 45, not a typical rate.
"""

import statistics

import pytest

from personalize.eval import appearance
from personalize.toyworld.judge import Judge



def test_photos_are_of_the_identity_and_carry_no_caption(tmp_path):
    identity = appearance.IDENTITIES[5]
    folder = appearance.write_identity(tmp_path, identity, n=3)
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "1.png", "2.png"]
    from PIL import Image

    judge = Judge.load("b")
    images = [Image.open(p) for p in sorted(folder.glob("*.png"))]
    assert appearance.identity_match(judge, images, identity) == 1.0
    assert appearance.identity_match(judge, images, appearance.IDENTITIES[6]) == 0.0


@pytest.mark.effect  # minutes: three textual-inversion trainings
def test_textual_inversion_reaches_a_held_out_identity(tmp_path):
    """Mean over 3 training seeds >= 0.60 (the issue's acceptance; measured 1.00 on these seeds, the lowest
    single seed of five 0.81), and the base prompts never draw the identity by chance."""
    judge = Judge.load("b")
    identity = appearance.IDENTITIES[5]
    rows = [appearance.textual_inversion_identity(tmp_path / f"s{s}", identity, s, judge) for s in (1, 2, 3)]
    assert statistics.mean(r["textual_inversion"] for r in rows) >= 0.60, rows
    assert max(r["base"] for r in rows) <= 0.125, rows
