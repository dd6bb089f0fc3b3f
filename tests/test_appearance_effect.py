"""The measurement of appearance through text embeddings (personalize.toyworld.appearance).

Its result on toy world 1.1 is negative (textual inversion on 3 photos of held-out identity 45: identity match
0.00 on training seeds 1-5 and 11-13, base 0.00; assets/toyworld/README.md), so no effect is asserted yet;
what is tested is that the measurement reads what it should.
"""

import statistics


from personalize.toyworld import appearance
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
