"""The toy world's generator: deterministic, captions that say what is drawn, held-out combinations kept out."""

import random

import numpy as np

from personalize.toyworld import world as w


def test_dataset_is_deterministic_per_seed():
    a_images, a_caps, _ = w.make_dataset(40, seed=3)
    b_images, b_caps, _ = w.make_dataset(40, seed=3)
    c_images, _, _ = w.make_dataset(40, seed=4)
    assert np.array_equal(a_images, b_images) and a_caps == b_caps
    assert not np.array_equal(a_images, c_images)
    assert a_images.shape == (40, 32, 32, 3) and a_images.dtype == np.uint8


def test_world_size_meets_the_brief():
    assert len(w.SHAPES) >= 4 and len(w.COLORS) >= 6 and len(w.SIZES) == 2 and len(w.BACKGROUNDS) >= 4
    assert w.N_IDENTITIES >= 100 and 0 < len(w.HELD_OUT_IDENTITIES) < w.N_IDENTITIES
    assert set(w.EXPRESSIONS) >= {"neutral", "smiling", "surprised"} and {"hat", "glasses"} <= set(w.ACCESSORIES)
    parts = {tuple(w.identity_parts(i).values()) for i in range(w.N_IDENTITIES)}
    assert len(parts) == w.N_IDENTITIES  # every identity is a distinct combination of features


def test_training_split_never_shows_held_out_combinations():
    rng = random.Random(0)
    scenes = [w.sample_scene(rng) for _ in range(4000)]
    pairs = {(o.shape, o.color) for s in scenes for o in s.objects}
    assert pairs.isdisjoint(w.HELD_OUT_OBJECTS) and len(pairs) == 24 - len(w.HELD_OUT_OBJECTS)
    faces = [s for s in scenes if s.kind == "face"]
    assert all(s.identity not in w.HELD_OUT_IDENTITIES for s in faces)
    assert all((s.expression, s.accessory) != w.HELD_OUT_FACE for s in faces)
    assert {s.kind for s in scenes} == {"object", "pair", "face"}
    held = [w.sample_scene(rng, "heldout_objects") for _ in range(50)]
    assert {(s.objects[0].shape, s.objects[0].color) for s in held} == w.HELD_OUT_OBJECTS


def test_captions_name_what_is_drawn_and_never_the_outline():
    rng = random.Random(1)
    for _ in range(500):
        scene = w.sample_scene(rng)
        text = w.caption(scene, rng)
        assert "outline" not in text
        if scene.kind == "object":
            o = scene.objects[0]
            assert f"{o.color} {o.shape}" in text
            assert ("with stripes" in text) == (o.texture == "stripes")
            assert ("with dots" in text) == (o.texture == "dots")
        elif scene.kind == "pair":
            assert all(f"{o.color} {o.shape}" in text for o in scene.objects) and " and " in text
        else:
            assert f"a {scene.expression} person" in text
            assert ("hat" in text) == (scene.accessory == "hat")
    full = w.caption(w.Scene("object", "pink", [w.Obj("circle", "orange", "small", "dots")]))
    assert full == "a small orange circle with dots on a pink background"


def test_attributes_change_the_pixels():
    base = w.Obj("square", "red", "large", "plain")
    def px(**change):
        obj = w.Obj(**{**base.__dict__, **change})
        return np.asarray(w.render(w.Scene("object", "white", [obj])), dtype=int)
    plain = px()
    for change in ({"texture": "stripes"}, {"texture": "dots"}, {"outline": True}, {"size": "small"},
                   {"color": "blue"}, {"shape": "circle"}):
        assert np.abs(px(**change) - plain).sum() > 500, change


def test_judge_targets_and_accuracy_helpers():
    from personalize.toyworld.judge import HEADS, accuracy, scene_targets, to_input

    obj = w.Scene("object", "gray", [w.Obj("cross", "orange", "small", "dots", True)])
    t = scene_targets(obj)
    assert {k: HEADS[k][0][v] for k, v in t.items()} == {
        "kind": "object", "shape": "cross", "color": "orange", "size": "small", "background": "gray",
        "texture": "dots", "outline": "yes"}
    face = scene_targets(w.Scene("face", "blue", identity=5, expression="smiling", accessory="hat"))
    assert HEADS["hair_style"][0][face["hair_style"]] == w.identity_parts(5)["hair_style"] and "shape" not in face
    x = to_input([w.render(obj)])
    assert x.shape == (1, 3, 32, 32) and -1 <= x.min() and x.max() <= 1
    acc = accuracy([{"shape": "cross", "color": "red"}, {"shape": "circle", "color": "red"}],
                   [{"shape": "cross", "color": "red"}, {"shape": "cross"}])
    assert acc == {"color": 1.0, "shape": 0.5}
