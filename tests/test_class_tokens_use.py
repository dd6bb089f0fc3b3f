"""Discriminative class tokens in use (issue 18): the token file loads in stock diffusers exactly as in ours
(spec check 6), many classes in one command (`personalize train-classes`), bad input refused before anything
trains, and steering raises P(target) under a smooth classifier (spec check 4)."""

import json

import numpy as np
import pytest
import torch

from personalize.artifacts import load_artifact
from personalize.cli import main as cli_main
from personalize.config import load_config
from personalize.errors import PersonalizeError
from personalize.pipeline import load_pipeline
from personalize.train_classes import plan, train_classes

PROMPT = "a photo of a dct-car car on a table"


def _config(model, out, classifier, **method):
    return load_config([], {
        "model": {"pretrained": str(model), "local_files_only": True},
        "train": {"output_dir": str(out), "max_train_steps": 2, "report_to": "none", "gradient_accumulation_steps": 2,
                  "learning_rate": 5e-2, "checkpointing_steps": 10_000},
        "method": {"name": "dct", "classifier": str(classifier), "target": "car", "sample_steps": 3,
                   "guidance_scale": 3.0} | method})


def test_the_token_file_loads_in_stock_diffusers_like_in_ours(tiny_sd1, tiny_vit, tmp_path):
    from diffusers import StableDiffusionPipeline

    from personalize.trainer import train

    result = train(_config(tiny_sd1, tmp_path / "out", tiny_vit))
    from safetensors.torch import load_file

    tensors = load_file(result.artifact)
    assert list(tensors) == ["dct-car"] and tensors["dct-car"].shape == (1, 32)
    assert tensors["dct-car"].dtype == torch.float32
    ours = load_pipeline(str(tiny_sd1), artifacts=[str(result.artifact)], device="cpu")
    stock = StableDiffusionPipeline.from_pretrained(str(tiny_sd1), local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)
    stock.load_textual_inversion(str(result.artifact))
    stock.set_progress_bar_config(disable=True)
    ids = stock.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ours_ids = ours.sd.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want = ours.sd.text_encoder(ours_ids)[0]
        assert torch.equal(stock.text_encoder(ids)[0], want)  # the same text-encoder output
    expected = np.asarray(ours.generate(PROMPT, seed=0, steps=3, guidance_scale=7.5)[0].image, dtype=np.int16)
    gen = torch.Generator().manual_seed(0)
    image = stock(PROMPT, num_inference_steps=3, guidance_scale=7.5, generator=gen).images[0]
    assert np.abs(np.asarray(image, dtype=np.int16) - expected).max() <= 1


def test_many_classes_in_one_command(tiny_sd1, tiny_vit, tmp_path):
    out = tmp_path / "classes"
    cfg = _config(tiny_sd1, out, tiny_vit)
    assert cli_main(["train-classes", "--classes", "car", "1", *_flags(cfg)]) == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["class"], r["trigger"], r["label"]) for r in rows] == [("car", "dct-car", "car"),
                                                                        ("1", "dct-great-dane", "Great_Dane")]
    assert "| dct-great-dane |" in (out / "summary.md").read_text()
    combined = load_artifact(out / "dct-classes.safetensors")
    assert combined.triggers == ["dct-car", "dct-great-dane"]
    for r in rows:
        single = load_artifact(out / r["file"])
        assert single.triggers == [r["trigger"]]
        assert torch.equal(combined.embeddings[r["trigger"]], single.embeddings[r["trigger"]])
        assert r["steps"] == "2" and float(r["best_loss"]) > 0
    pipe = load_pipeline(str(tiny_sd1), artifacts=[str(out / "dct-classes.safetensors")], device="cpu")
    assert pipe.generate("a dct-car car beside a dct-great-dane great dane", seed=0, steps=2)  # both load together

    def no_training(run):  # a restart: finished classes are not retrained
        raise AssertionError(f"retrained {run.method['target']}")
    before = {r["trigger"]: load_artifact(out / r["file"]).embeddings[r["trigger"]] for r in rows}
    train_classes(cfg, ["car", "1"], train=no_training)
    assert all(torch.equal(load_artifact(out / f"{t}/{t}.safetensors").embeddings[t], v) for t, v in before.items())


def _flags(cfg):
    return [f"--model.pretrained={cfg.model.pretrained}", "--model.local_files_only=true",
            f"--train.output_dir={cfg.train.output_dir}", "--train.max_train_steps=2", "--train.report_to=none",
            "--train.gradient_accumulation_steps=2", "--train.learning_rate=5e-2",
            *(f"--method.{k}={v}" for k, v in cfg.method.items())]


def test_a_trigger_with_digits_is_a_known_word_of_the_toy_world():
    from personalize.toyworld.vocabulary import unknown_words, vocabulary

    known = vocabulary(300)
    assert unknown_words("a photo of a dct-person-18 person", known, ["dct-person-18"]) == []
    assert unknown_words("a photo of a dct-person-18 person", known) == ["dct-person"]


def test_each_class_gets_its_own_trigger():
    from personalize.methods.class_tokens.dct import Options, trigger

    assert trigger(Options(target="tiger cat"), "tiger cat") == "dct-tiger-cat"
    assert trigger(Options(target="identity:18"), "person") == "dct-person-18"  # toy identities share "person"
    assert trigger(Options(target="identity:18", placeholder_token="sks"), "person") == "sks"


def test_bad_classes_fail_before_anything_trains(tiny_sd1, tiny_vit, tmp_path, capsys):
    out = tmp_path / "bad"
    cfg = _config(tiny_sd1, out, tiny_vit)
    with pytest.raises(PersonalizeError, match="class 'zebra'.*no class 'zebra'"):
        plan(cfg, ["car", "zebra"])
    toy = _config(tiny_sd1, out, "toyworld")
    with pytest.raises(PersonalizeError, match="class 'identity:500'.*identities are 0..143"):
        plan(toy, ["identity:18", "identity:500"])
    with pytest.raises(PersonalizeError, match="expected identity:<number>"):
        plan(toy, ["identity:x"])
    assert plan(toy, ["identity:18", "identity:27"]) == [("identity:18", "dct-person-18"),
                                                         ("identity:27", "dct-person-27")]
    with pytest.raises(PersonalizeError, match="same trigger 'dct-car'"):
        plan(cfg, ["car", "2"])
    with pytest.raises(PersonalizeError, match="placeholder_token"):
        plan(_config(tiny_sd1, out, tiny_vit, placeholder_token="sks"), ["car", "1"])
    with pytest.raises(PersonalizeError, match="method dct.*'lora'"):
        plan(load_config([], {"method": {"name": "lora"}}), ["car"])
    assert cli_main(["train-classes", "--classes", "car", "zebra", *_flags(cfg)]) == 2
    assert "class 'zebra'" in capsys.readouterr().err and not out.exists()


def test_the_toy_probes_ask_for_the_identity_and_keep_the_other_asks_apart():
    from personalize.eval.class_tokens import IDENTITY, probes, read_as_asked

    assert IDENTITY == 18
    p = probes("dct-person", 18)
    who = {"kind": "face", "face_shape": "round", "skin": "brown", "hair_color": "brown", "hair_style": "short"}
    assert p["identity"] == [("a photo of a dct-person person", who)]
    assert p["words"] == [("a photo of a person with short brown hair, a round face and brown skin", who)]
    assert p["base"] == [("a photo of a person", who)]
    glasses = ("a photo of a dct-person person wearing glasses", {"kind": "face", "accessory": "glasses"})
    assert glasses in p["other_asks"]
    assert [q for q, _ in p["in_context"]] == [q for q, _ in p["other_asks"]] and len(p["in_context"]) == 6
    assert all(want == who for _, want in p["in_context"])

    class Reads:  # a judge that reads every image as this face
        def predict(self, images):
            return [who | {"accessory": "glasses"}] * len(images)
    assert read_as_asked(Reads(), [0, 0], [who, {"accessory": "hat"}]) == 0.5
