"""The shipped toy model and judges (assets/toyworld): they load with plain diffusers and draw their world.

Thresholds are the issue's acceptance figures; measured values are in assets/toyworld/README.md.
"""

import random

import numpy as np
import pytest
import torch

from personalize.profiles import toy_model_dir

TOYWORLD_DIR = toy_model_dir()
from personalize.eval.evaluate import ACCEPTANCE, SUITES, evaluate, load_stock_pipeline
from personalize.toyworld import world as w
from personalize.toyworld.judge import HEADS, Judge, scene_targets


@pytest.fixture(scope="module")
def judge():
    """Judge B, the evaluator (Judge A is a training signal)."""
    return Judge.load("b")


@pytest.fixture(scope="module")
def stock_pipe():
    return load_stock_pipeline(str(TOYWORLD_DIR))


def test_shipped_folder_is_small():
    size = sum(p.stat().st_size for p in TOYWORLD_DIR.rglob("*") if p.is_file())
    assert size <= 30 * 10**6, f"assets/toyworld is {size / 1e6:.1f} MB"


def test_plain_diffusers_generates(stock_pipe):
    image = stock_pipe("a large red circle on a white background", num_inference_steps=10,
                       generator=torch.Generator().manual_seed(0)).images[0]
    pixels = np.asarray(image, dtype=int)
    assert image.size == (32, 32) and pixels.std() > 10
    assert type(stock_pipe.tokenizer).__name__.startswith("CLIPTokenizer") and len(stock_pipe.tokenizer) == 49408


def test_everything_defaults_to_toyworld():
    from personalize.cli import build_parser
    from personalize.config import Config
    from personalize.pipeline import load_pipeline

    assert Config().model.pretrained == "toyworld"
    assert build_parser().parse_args(["generate", "--prompt", "x", "--out", "o"]).base == "toyworld"
    pipe = load_pipeline("toyworld", device="cpu")
    assert pipe.native_size == 32


def test_the_two_judges_are_different_networks():
    a, b = Judge.load("a"), Judge.load("b")
    assert (a.architecture, b.architecture) == ("judge_a", "judge_b")
    kinds = lambda net: {type(m).__name__ for m in net.modules()}  # noqa: E731
    assert "MaxPool2d" in kinds(a.net) and "GroupNorm" in kinds(a.net)
    assert "BatchNorm2d" in kinds(b.net) and not {"MaxPool2d", "GroupNorm"} & kinds(b.net)


@pytest.mark.parametrize("which", ["a", "b"])
def test_judge_is_right_on_held_out_procedural_images(which):
    """>= 98 % per head on scenes of a seed neither judge trained on (every combination, clean renders)."""
    judge = Judge.load(which)
    rng = random.Random(2026)
    splits = ["train"] * 6 + ["heldout_objects", "heldout_faces"]
    scenes = [w.sample_scene(rng, rng.choice(splits)) for _ in range(1500)]
    images = np.stack([np.asarray(w.render(s)) for s in scenes])
    _, logits = judge.logits(images)
    for head in HEADS:
        pairs = [(i, t[head]) for i, t in enumerate(map(scene_targets, scenes)) if head in t]
        pred = logits[head].argmax(-1)
        acc = np.mean([int(pred[i]) == t for i, t in pairs])
        assert acc >= 0.98, f"{head}: {acc:.3f} on {len(pairs)} images"


def test_judge_embeddings(judge):
    same = [w.Scene("face", bg, identity=7, expression=e) for bg, e in [("blue", "smiling"), ("gray", "neutral")]]
    other = w.Scene("face", "blue", identity=100, expression="smiling")
    ident = judge.identity_embedding([w.render(s) for s in same + [other]])
    assert torch.allclose(ident.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert ident[0] @ ident[1] > ident[0] @ ident[2] + 0.2
    emb = judge.embed([w.render(s) for s in same + [other]])
    assert emb.shape == (3, 256) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("suite", SUITES)
def test_the_model_draws_what_it_is_asked(stock_pipe, judge, suite):
    """Every suite at or above its acceptance (issue 4's five, toy world 1.1's phrasings and appearance in
    words), on sampling seeds 100-103 (the README's figures use 0-3), scored by Judge B. The first 1.1 release
    fails the appearance suites (identity words 0.09, outline 0.68 on seeds 0-3)."""
    score = evaluate(stock_pipe, judge, [suite], per_prompt=4, seed=100)[suite]
    assert score >= ACCEPTANCE[suite], f"{suite}: {score:.3f} < {ACCEPTANCE[suite]}"


def test_quickstart_writes_grids_and_a_report(tmp_path):
    """The job's files (the rates themselves are measured in docs/effects.md): labelled, enlarged grids and a
    report with both columns and every prompt. The shipped photos are the identity's own renders."""
    from PIL import Image

    from personalize.eval import quickstart

    lines = []
    report = quickstart.run(tmp_path / "qs", seeds=1, train_overrides={"max_train_steps": 5}, say=lines.append)
    text = report.read_text()
    assert sorted(p.name for p in (tmp_path / "qs").glob("*.*")) == sorted(quickstart.WRITTEN)  # what the CLI lists
    assert "`assets/" not in text  # paths this install has (a wheel keeps its assets inside the package)
    assert "| the person (all 4 traits) |" in text and "| follows the prompt |" in text
    assert all(f"`{p.format('sks ')}`" in text for p in quickstart.NEW_PROMPTS)
    assert [line[:5] for line in lines] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    cell, label = 32 * 3, 14  # cells enlarged 3x (nearest), a label line above each row
    assert Image.open(tmp_path / "qs" / "samples.png").size == (cell, (cell + label) * len(quickstart.SAMPLE_PROMPTS))
    assert Image.open(tmp_path / "qs" / "subject.png").size == (3 * cell, (cell + label) * (1 + len(quickstart.NEW_PROMPTS)))
    # step 5: one photo through the shipped Face2Diffusion encoder, base | f l per prompt (seeds=1: 2 columns)
    assert Image.open(tmp_path / "qs" / "face.png").size == (2 * cell, (cell + label) * (1 + len(quickstart.NEW_PROMPTS)))
    assert "## Face2Diffusion: one photo, no tuning" in text and "| the person (all 4 traits) |" in text.split("##")[-1]
    shipped = sorted(quickstart.examples_dir().glob("*.*"))
    fresh = sorted(quickstart.write_examples(tmp_path / "photos").glob("*.*"))
    assert [p.name for p in shipped] == ["0.png", "0.txt", "1.png", "1.txt", "2.png", "2.txt"]
    assert [p.read_bytes() for p in shipped] == [p.read_bytes() for p in fresh]
    assert (quickstart.examples_dir() / "1.txt").read_text() == "a photo of a neutral sks person on a white background\n"