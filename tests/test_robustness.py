"""The erasure robustness card (personalize.eval.robustness, `personalize erasure-card`): its probes ask what
they say, the attackers' renders are the concept, the erased model folder is the erased model, and an erasure
that changes nothing gets a card whose erased column equals the base column."""

import json
import re

import pytest
import torch

from personalize.artifacts import load_artifact, save_artifact
from personalize.cli import main
from personalize.eval import robustness as r
from personalize.toyworld import world as w


def words(prompt: str) -> list[str]:
    return re.findall(r"[a-z]+", prompt)


def _probe(probes, name):
    return next(p for p in probes if p.name == name)


@pytest.mark.parametrize("concept", ["triangle", "red"])
def test_object_probes_ask_for_the_concept_where_they_score_it(concept):
    probes = r.probes(concept)
    attr = "shape" if concept in w.SHAPES else "color"
    held_out = ["held-out colors and phrasings"] if attr == "shape" else []
    assert [p.name for p in probes] == ["direct", "paraphrases", *held_out, "pairs, concept first",
                                        "pairs, concept second", "attack: textual inversion", "attack: relearning",
                                        "neighbours", "pair partner", "unrelated"]
    for p in probes:
        assert len(p.items) >= 2, p.name
        for prompt, want in p.items:
            if p.name == "attack: textual inversion":
                assert r.TRIGGER in words(prompt) and concept not in words(prompt), prompt
            elif p.back:
                assert concept in words(prompt), prompt
            if p.back:
                assert concept in want.values() and len(want) == 1, (prompt, want)
            elif p.name == "neighbours":
                assert concept not in words(prompt) and want[attr] != concept, prompt
    second = _probe(probes, "pairs, concept second").items
    assert all(prompt.split(" and ")[1].split()[-1 if attr == "shape" else -2] == concept for prompt, _ in second)
    assert all(want == {f"right_{attr}": concept} for _, want in second)
    paraphrases = [p for p, _ in _probe(probes, "paraphrases").items]
    assert any(p.startswith(tuple(w.HELD_OUT_PREFIXES)) for p in paraphrases)
    assert not set(paraphrases) & {p for p, _ in _probe(probes, "direct").items}


def test_glasses_probes_score_the_accessory_and_skip_the_held_out_face():
    probes = r.probes("glasses")
    assert "pairs, concept first" not in [p.name for p in probes]
    assert all("wearing glasses" in p for p, _ in _probe(probes, "direct").items)
    neighbours = _probe(probes, "neighbours").items
    assert neighbours and all("wearing a hat" in p and e == {"accessory": "hat"} for p, e in neighbours)
    assert not any("surprised" in p for p, _ in neighbours)  # (surprised, hat) is never trained on
    assert all("wearing sks" in p for p, _ in _probe(probes, "attack: textual inversion").items)


def test_unknown_concepts_are_refused_with_what_the_card_knows():
    with pytest.raises(ValueError, match="shapes .* colors .* accessories"):
        r.probes("dog")


@pytest.mark.parametrize("concept", ["triangle", "red", "glasses"])
def test_the_attackers_renders_are_the_concept_and_their_captions_name_it(concept, tmp_path):
    from PIL import Image

    from personalize.toyworld.judge import Judge

    relearn = r.write_attack_images(concept, tmp_path / "relearn")
    ti = r.write_attack_images(concept, tmp_path / "ti", trigger="sks")
    images = [Image.open(p) for p in sorted(relearn.glob("*.png"))]
    assert len(images) == 6
    attr = r.attribute(concept)
    assert all(p[attr] == concept for p in Judge.load("b").predict(images))
    for k in range(6):
        assert concept in (relearn / f"{k}.txt").read_text().split()
        words = (ti / f"{k}.txt").read_text().split()
        assert "sks" in words and concept not in words


@pytest.fixture(scope="module")
def esd_artifact(tmp_path_factory):
    """A real (2-step) ESD-x artifact of "a triangle" and a copy whose differences are all zero."""
    from personalize.config import load_config
    from personalize.resources import config_file
    from personalize.trainer import train

    out = tmp_path_factory.mktemp("esd")
    cfg = load_config([str(config_file("toyworld/esd.yaml"))],
                      {"train": {"output_dir": str(out / "run"), "max_train_steps": 2, "report_to": "none",
                                 "validation_prompt": None, "checkpointing_steps": 100},
                       "method": {"ddim_steps": 2}})
    real = train(cfg).artifact
    art = load_artifact(real)
    extra = {k: v for k, v in art.metadata.items() if k not in ("method", "base_model", "tokens", "config",
                                                                 "weights", "format_version")}
    zero = save_artifact(out / "zero.safetensors", "esd", "toyworld", weights={k: torch.zeros_like(v) for k, v in
                                                                              art.weights.items()},
                         kind="diff", **extra)
    return real, zero


def test_the_erased_model_folder_is_the_erased_model(esd_artifact, tmp_path):
    from personalize.pipeline import load_pipeline

    real, _ = esd_artifact
    folder = r.erased_model(real, tmp_path / "model")
    saved = load_pipeline(str(folder), device="cpu").sd.unet.state_dict()
    base = load_pipeline("toyworld", device="cpu").sd.unet.state_dict()
    diff = load_artifact(real).weights
    changed = {k for k in base if not torch.equal(base[k], saved[k])}
    assert changed and len(changed) == len([k for k, v in diff.items() if v.abs().max() > 0])
    key = next(iter(changed))
    assert torch.allclose(saved[key], base[key] + next(v for k, v in diff.items() if k.endswith(key)), atol=1e-6)


def test_a_card_of_an_erasure_that_changes_nothing_shows_the_base(esd_artifact, tmp_path):
    _, zero = esd_artifact
    code = main(["erasure-card", str(zero), "--out", str(tmp_path / "card"), "--images", "1", "--steps", "8",
                 "--ti-steps", "1", "--relearn-steps", "1"])
    assert code == 0
    result = json.loads((tmp_path / "card" / "card.json").read_text())
    assert result["concept"] == "triangle"
    rows = {row["probe"]: row for row in result["rows"]}
    assert len(rows) == 10 and len(list((tmp_path / "card" / "grids").glob("*.png"))) == 10  # a shape: 10 probes
    assert rows["direct"]["base"] >= 0.75  # the toy model draws its triangles (in 8 steps too)
    for name, row in rows.items():
        if not name.startswith("attack"):
            assert row["erased"] == row["base"], row
    text = (tmp_path / "card" / "card.md").read_text()
    assert "| direct | triangle comes back |" in text and "of base" in text


def test_the_card_refuses_what_is_not_a_toy_erasure(esd_artifact, tmp_path, capsys):
    real, _ = esd_artifact
    assert main(["erasure-card", str(real), "--concept", "dog", "--out", str(tmp_path / "a")]) == 2
    assert "dog" in capsys.readouterr().err and not (tmp_path / "a").exists()
    embedding = tmp_path / "ti.safetensors"
    save_artifact(embedding, "textual_inversion", "toyworld", embeddings={"sks": torch.zeros(1, 48)})
    assert main(["erasure-card", str(embedding), "--out", str(tmp_path / "b")]) == 2
    assert "kind 'diff'" in capsys.readouterr().err and not (tmp_path / "b").exists()
