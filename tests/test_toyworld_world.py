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


def _names_texture(text: str, texture: str) -> bool:
    words = {"stripes": ("with stripes", "striped"), "dots": ("with dots", "spotted", "dotted")}
    return any(x in text for x in words.get(texture, ()))


def test_captions_name_what_is_drawn_and_nothing_else():
    rng = random.Random(1)
    named_outline = drawn_outline = described = faces = 0
    for _ in range(3000):
        scene = w.sample_scene(rng)
        text = w.caption(scene, rng)
        assert not any(text.startswith(p) for p in w.HELD_OUT_PREFIXES), text
        if scene.kind == "object":
            o = scene.objects[0]
            assert f"{o.color} {o.shape}" in text or f"{o.shape}, {o.color}" in text, text
            for texture in ("stripes", "dots"):
                assert _names_texture(text, texture) == (o.texture == texture), text
            assert "outline" not in text or o.outline, text  # named only when drawn
            drawn_outline += o.outline
            named_outline += "outline" in text
            size_words = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
            other = "large" if o.size == "small" else "small"
            assert not any(f" {x} " in f" {text} " for x in size_words[other]), text
        elif scene.kind == "pair":
            assert all(f"{o.color} {o.shape}" in text for o in scene.objects) and " and " in text
        else:
            faces += 1
            assert f"a {scene.expression} person" in text
            assert ("hat" in text) == (scene.accessory == "hat")
            parts = w.identity_parts(scene.identity)
            if " with " in text:
                described += 1
                said = text.split(" with ", 1)[1]
                for value in parts.values():
                    others = [x for x in (*w.FACE_SHAPES, *w.SKINS, *w.HAIR_COLORS, *w.HAIR_STYLES) if x != value]
                    assert all(f" {x} " not in f" {said} " for x in others if x not in parts.values()), text
    assert 0.35 < named_outline / drawn_outline < 0.65  # a share of outlines is named, the rest is not
    assert 0.45 < described / faces < 0.75
    full = w.caption(w.Scene("object", "pink", [w.Obj("circle", "orange", "small", "dots")]))
    assert full == "a small orange circle with dots on a pink background"  # the canonical caption, unchanged


def test_captions_use_the_phrasings_of_sd_users():
    rng = random.Random(2)
    texts = [w.caption(w.sample_scene(rng), rng) for _ in range(3000)]
    for prefix in ("a photo of a", "a picture of a", "an image of a", "a rendering of a", "a close-up photo of a",
                   "a good photo of a", "a drawing of a", "a portrait of a"):
        assert any(t.startswith(prefix + " ") or t.startswith(prefix + "n ") for t in texts), prefix
    for word in ("big", "tiny", "little", "striped", "spotted", "dotted", "grey", "outlined", "with an outline"):
        assert any(f" {word} " in f" {t} " for t in texts), word
    assert any(t.startswith("a circle, ") for t in texts)  # a word-order variant
    assert any("person with short" in t and " face" in t for t in texts)
    held = w.caption(w.sample_scene(rng, "heldout_objects"), rng, prefixes=w.HELD_OUT_PREFIXES)
    assert held.startswith(tuple(w.HELD_OUT_PREFIXES)) or not held.startswith(tuple(w.PREFIXES))


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
