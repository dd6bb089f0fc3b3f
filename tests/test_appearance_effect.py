"""Toy world 1.1: appearance is reachable through text embeddings.

Textual inversion on 3 photos of a held-out identity (personalize.toyworld.appearance) must ask for that
identity: the mean identity match over 3 training seeds, scored by Judge B, at or above the issue's 0.60.
The measured mean over 5 seeds with its interval is in assets/toyworld/README.md; this test uses other
training seeds (11-13) than those (1-5).
"""

import statistics

import pytest

from personalize.toyworld import appearance
from personalize.toyworld.judge import Judge

pytestmark = pytest.mark.effect


def test_photos_are_of_the_identity_and_carry_no_caption(tmp_path):
    identity = appearance.IDENTITIES[5]
    folder = appearance.write_identity(tmp_path, identity, n=3)
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "1.png", "2.png"]
    from PIL import Image

    judge = Judge.load("b")
    images = [Image.open(p) for p in sorted(folder.glob("*.png"))]
    assert appearance.identity_match(judge, images, identity) == 1.0
    assert appearance.identity_match(judge, images, appearance.IDENTITIES[6]) == 0.0


def test_textual_inversion_reaches_a_held_out_identity(tmp_path):
    judge = Judge.load("b")
    identity = appearance.IDENTITIES[5]
    rows = [appearance.textual_inversion_identity(tmp_path / str(seed), identity, seed, judge)
            for seed in (11, 12, 13)]
    tuned = statistics.mean(r["textual_inversion"] for r in rows)
    base = statistics.mean(r["base"] for r in rows)
    assert tuned >= 0.60, rows
    assert base <= 0.2, rows  # "person" alone does not draw this identity: the token carries it
