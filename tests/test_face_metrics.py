"""Identity / detection / CLIP text scores of generated faces (personalize.eval.faces, `personalize evaluate-faces`).

Offline: the face models are the fake insightface-layout ONNX models of tests/face_models.py, CLIP is a tiny random
CLIPModel saved with the repo's real CLIP tokenizer. Expected values are computed here from the models' own math
(the fake recognizer: average-pool 14x14 -> flatten -> a saved random projection), not by the code under test.
"""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from face_models import FakeFace, model_pack
from personalize.cli import main
from personalize.eval.faces import (EvalError, IDENTIFIER, ClipScorer, Recognizer, evaluate_faces, evaluate_folder,
                                    scored_text)
from personalize.face import TEMPLATE_112, resolve_detector

SCALE = 112 / 64  # the fake detector reads 64 x 64; our photos are 112 x 112


def blocks(seed: int) -> np.ndarray:
    """A 112 x 112 RGB photo of 8 x 8 flat blocks of 14 px: the fake recognizer's pooling sees the block colours."""
    colours = np.random.default_rng(seed).integers(0, 256, (8, 8, 3))
    return np.kron(colours, np.ones((14, 14, 1))).astype(np.uint8)


def fake_embedding(pack, rgb: np.ndarray) -> np.ndarray:
    """The fake ArcFace by hand: RGB scaled to [-1, 1], (3, 112, 112) -> 14x14 means (3, 8, 8) -> flat @ W."""
    import onnx
    from onnx import numpy_helper

    weight = numpy_helper.to_array(onnx.load(str(pack / "w600k_r50.onnx")).graph.initializer[0])  # (192, 64)
    x = (rgb.astype(np.float64) - 127.5) / 127.5
    pooled = x.transpose(2, 0, 1).reshape(3, 8, 14, 8, 14).mean((2, 4))  # (3, 8, 8)
    return pooled.ravel() @ weight


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """A fake pack whose detector always reports one face with the template's landmarks (on a 112 px photo the
    alignment is then the identity)."""
    marks = TEMPLATE_112 / SCALE
    box = (marks[:, 0].min() - 10, marks[:, 1].min() - 15, marks[:, 0].max() + 10, marks[:, 1].max() + 5)
    return model_pack(tmp_path_factory.mktemp("pack") / "buffalo_fake", [FakeFace(box, marks)])


@pytest.fixture(scope="module")
def empty_pack(tmp_path_factory):
    """A fake pack whose detector never finds a face."""
    return model_pack(tmp_path_factory.mktemp("empty") / "no_faces", [])


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, tokenizer_dir):
    """A random CLIPModel (tiny text and vision towers) saved with the real CLIP tokenizer and an image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config={"vocab_size": 49408, "max_position_embeddings": 77, **tower},
                        vision_config={"image_size": 32, "patch_size": 8, **tower}, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def test_identity_is_the_recognizers_cosine_computed_by_hand(pack):
    """No detector: the images are the crops, so the expected cosine is exact. The second image's expectation
    differs from the one with red and blue swapped (insightface reads BGR): a channel mix-up would fail."""
    ref, other = blocks(4), blocks(5)
    report = evaluate_faces([ref], [ref, other], ["a photo of f l", "a photo of f l"], None, [Recognizer(pack)])
    name = "arcface buffalo_fake/w600k_r50.onnx"
    expected = cosine(fake_embedding(pack, ref), fake_embedding(pack, other))
    swapped = cosine(fake_embedding(pack, ref[:, :, ::-1]), fake_embedding(pack, other[:, :, ::-1]))
    assert abs(expected - swapped) > 0.05 and expected < 0.99
    assert report["models"] == {"detector": "none (images are aligned face crops)", "identity": [name], "text": None}
    scores = [r["identity"][name] for r in report["per_image"]]
    assert scores == pytest.approx([1.0, expected], abs=1e-5)
    assert report["summary"]["identity_all_images"][name] == pytest.approx((1 + expected) / 2, abs=1e-5)
    assert report["summary"]["detection_rate"] == 1.0 and report["summary"]["harmonic_mean"] is None


def test_identity_through_the_detector_and_alignment(pack):
    """The fake SCRFD reports the template's landmarks: the aligned crop is the photo (to a grey level at block
    edges), so the cosine matches the hand computation to 1e-3, and the same photo gives 1."""
    ref, other = blocks(8), blocks(9)
    detector = resolve_detector(str(pack))
    report = evaluate_faces([ref], [other, ref], ["f l", "f l"], detector, [Recognizer(pack)])
    name = report["models"]["identity"][0]
    assert "det_10g.onnx" in report["models"]["detector"]
    expected = cosine(fake_embedding(pack, ref), fake_embedding(pack, other))
    swapped = cosine(fake_embedding(pack, ref[:, :, ::-1]), fake_embedding(pack, other[:, :, ::-1]))
    assert abs(expected - swapped) > 0.05  # the tolerance below tells the channel orders apart
    assert [r["identity"][name] for r in report["per_image"]] == pytest.approx([expected, 1.0], abs=1e-3)
    assert report["per_image"][1]["identity"][name] == pytest.approx(1.0, abs=1e-5)
    assert [(r["detected"], r["faces_found"]) for r in report["per_image"]] == [(True, 1), (True, 1)]


def test_no_face_counts_as_zero_identity_and_lowers_the_detection_rate(pack, empty_pack):
    """References go through the pack that finds a face, generated images through the pack that finds none."""
    ref, other = blocks(1), blocks(2)
    finds, finds_none = resolve_detector(str(pack)), resolve_detector(str(empty_pack))

    class Picky:
        name = "picky (the reference only)"

        def __call__(self, image):
            return finds(image) if np.array_equal(image, ref) else finds_none(image)

    report = evaluate_faces([ref], [other, blocks(3)], ["f l"] * 2, Picky(), [Recognizer(pack)])
    name = report["models"]["identity"][0]
    summary = report["summary"]
    assert summary["detection_rate"] == 0.0 and summary["detected"] == 0
    assert summary["identity_all_images"][name] == 0.0 and summary["identity_detected_images"][name] is None
    assert [(r["detected"], r["identity"][name]) for r in report["per_image"]] == [(False, 0.0), (False, 0.0)]
    half = evaluate_faces([ref], [ref, other], ["f l"] * 2, Picky(), [Recognizer(pack)])["summary"]
    assert half["detection_rate"] == 0.5
    assert half["identity_all_images"][name] == pytest.approx(0.5, abs=1e-5)  # (1 + 0) / 2
    assert half["identity_detected_images"][name] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(EvalError, match="reference face photo alice.png: no face"):
        evaluate_faces([ref], [ref], ["f l"], finds_none, [Recognizer(pack)], reference_names=["alice.png"])


def test_a_second_recognizer_is_any_named_callable(pack):
    ref, other = blocks(6), blocks(7)

    class MeanColour:  # (N, 112, 112, 3) -> (N, 3), not normalised: the evaluation normalises
        name = "mean colour"

        def __call__(self, crops):
            return np.stack([c.reshape(-1, 3).mean(0) for c in crops])

    report = evaluate_faces([ref], [other], ["f l"], None, [Recognizer(pack), MeanColour()])
    assert report["models"]["identity"] == ["arcface buffalo_fake/w600k_r50.onnx", "mean colour"]
    expected = cosine(ref.reshape(-1, 3).mean(0), other.reshape(-1, 3).mean(0))
    assert report["per_image"][0]["identity"]["mean colour"] == pytest.approx(expected, abs=1e-9)
    assert report["summary"]["identity_detected_images"]["mean colour"] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(EvalError, match="each with its own name"):
        evaluate_faces([ref], [other], ["f l"], None, [MeanColour(), MeanColour()])


def test_scored_text_replaces_the_identifier_only():
    from personalize.methods.face2diffusion.inject import IDENTIFIER as METHOD_IDENTIFIER

    assert IDENTIFIER == METHOD_IDENTIFIER
    assert scored_text("a photo of f l smiling") == "a photo of a person smiling"
    assert scored_text("f l's dog, f l") == "a person's dog, a person"
    assert scored_text("an elf lamp") == "an elf lamp"


def _clip_cosine(folder, image: np.ndarray, text: str) -> float:
    """CLIP's projected image and text embeddings, by the model's own feature methods."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    tokens = CLIPTokenizer.from_pretrained(folder)([text], return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=[Image.fromarray(image)], return_tensors="pt")
    with torch.no_grad():
        t = model.get_text_features(input_ids=tokens.input_ids)
        i = model.get_image_features(pixel_values=pixels.pixel_values)
    t, i = (getattr(x, "pooler_output", x)[0].numpy().astype(np.float64) for x in (t, i))  # transformers 5 / 4
    return cosine(t, i)


def test_clip_text_score_is_the_cosine_with_the_identifier_replaced(pack, tiny_clip):
    image = blocks(10)
    scorer = ClipScorer(str(tiny_clip), local_files_only=True)
    report = evaluate_faces([image], [image], ["a photo of f l smiling"], None, [Recognizer(pack)], scorer)
    row, summary = report["per_image"][0], report["summary"]
    assert report["models"]["text"] == f"CLIP {tiny_clip}" and row["text"] == "a photo of a person smiling"
    expected = _clip_cosine(tiny_clip, image, "a photo of a person smiling")
    assert abs(expected - _clip_cosine(tiny_clip, image, "a photo of f l smiling")) > 1e-4  # the text matters
    assert row["text_score"] == pytest.approx(expected, abs=1e-5)
    assert summary["text_score"] == pytest.approx(expected, abs=1e-5)
    a, b = 1.0, expected  # identity of the same image: 1
    assert summary["harmonic_mean"]["value"] == pytest.approx(2 * a * b / (a + b) if b > 0 else 0.0, abs=1e-5)
    assert summary["harmonic_mean"]["text"] == f"CLIP {tiny_clip}"


def _write(path, rgb):
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """A `generate` output folder: 2 prompts x 2 seeds, and the two face photos (one per prompt)."""
    out = tmp_path / "out"
    out.mkdir()
    a, b = _write(tmp_path / "alice.png", blocks(11)), _write(tmp_path / "bob.png", blocks(12))
    shown = [blocks(11), blocks(13), blocks(12), blocks(11)]  # prompt 0: alice, other; prompt 1: bob, alice
    records = []
    for k, (prompt, image) in enumerate(zip(["a photo of f l", "a photo of f l", "f l at the beach",
                                             "f l at the beach"], shown)):
        _write(out / f"{k // 2:04d}-x-s{k % 2}.png", image)
        records.append({"file": f"{k // 2:04d}-x-s{k % 2}.png", "prompt": prompt, "seed": k % 2, "base": "tiny",
                        "face": ["alice.png#0a1b2c3d4e5f", "bob.png#5f4e3d2c1b0a"]})  # as generate records them
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out, a, b


def test_evaluate_folder_matches_one_face_per_prompt(folder, pack, caplog):
    import logging

    out, a, b = folder
    with caplog.at_level(logging.WARNING, logger="personalize.eval.faces"):
        report = evaluate_folder(out, [a, b], str(pack), [])
    assert "results.jsonl says" not in caplog.text  # the recorded faces are these files (names before '#')
    name = "arcface buffalo_fake/w600k_r50.onnx"  # the default recognizer: the detector's pack
    assert report["models"]["identity"] == [name]
    scores = [r["identity"][name] for r in report["per_image"]]
    alice, bob, other = (fake_embedding(pack, blocks(s)) for s in (11, 12, 13))
    assert scores == pytest.approx([1.0, cosine(alice, other), 1.0, cosine(bob, alice)], abs=1e-3)
    assert [r["reference"] for r in report["per_image"]] == [str(a), str(a), str(b), str(b)]
    with caplog.at_level(logging.WARNING, logger="personalize.eval.faces"):
        one_face = evaluate_folder(out, [a], str(pack), [str(pack / "w600k_r50.onnx")])
    assert "results.jsonl says the images were made from" in caplog.text  # one face given, two recorded
    assert one_face["models"]["identity"] == ["arcface w600k_r50.onnx"]
    assert one_face["per_image"][3]["identity"]["arcface w600k_r50.onnx"] == pytest.approx(1.0, abs=1e-5)


def test_cli_writes_the_report_naming_the_models(folder, pack, tiny_clip, capsys):
    out, a, b = folder
    rc = main(["evaluate-faces", "--images", str(out), "--face", str(a), "--face", str(b), "--face-detector",
               str(pack), "--clip", str(tiny_clip), "--local-files-only"])
    assert rc == 0
    report = json.loads((out / "face_scores.json").read_text())
    assert report["models"]["identity"] == ["arcface buffalo_fake/w600k_r50.onnx"]
    assert report["models"]["text"] == f"CLIP {tiny_clip}" and "det_10g.onnx" in report["models"]["detector"]
    assert len(report["per_image"]) == 4 and report["summary"]["harmonic_mean"]["identity"].startswith("arcface")
    printed = capsys.readouterr().out
    assert "arcface buffalo_fake/w600k_r50.onnx" in printed and f"CLIP {tiny_clip}" in printed
    assert "face_scores.json" in printed


@pytest.mark.parametrize("case", ["no_results", "bad_json", "faces", "face_missing", "detector_pack", "recognizer_pack",
                                  "recognizer_missing", "clip"])
def test_cli_bad_input_clear_error_no_report(folder, pack, tmp_path, capsys, case):
    out, a, b = folder
    faces = ["--face", str(a), "--face", str(b)]
    extra, expected = {
        "no_results": ([], "no results.jsonl in"),
        "bad_json": ([], "results.jsonl line 2: not JSON"),
        "faces": (["--face", str(a)], "3 faces for 2 distinct prompts"),
        "face_missing": ([], f"face photo {tmp_path / 'carol.png'}: not a readable image"),
        "detector_pack": (["--face-detector", str(tmp_path / "nowhere")],
                          f"no insightface model pack at {tmp_path / 'nowhere'}"),
        "recognizer_pack": (["--recognizer", str(tmp_path)], "no recognition model (.onnx) in this folder"),
        "recognizer_missing": (["--recognizer", str(tmp_path / "gone")], f"no insightface model pack at {tmp_path / 'gone'}"),
        "clip": (["--clip", str(tmp_path / "no_clip"), "--local-files-only"], "not a CLIP model folder"),
    }[case]
    if case == "no_results":
        (out / "results.jsonl").unlink()
    if case == "bad_json":
        lines = (out / "results.jsonl").read_text().splitlines()
        (out / "results.jsonl").write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    if case == "face_missing":
        faces[-1] = str(tmp_path / "carol.png")
    detector = [] if case == "detector_pack" else ["--face-detector", str(pack)]
    report = tmp_path / "scores.json"
    rc = main(["evaluate-faces", "--images", str(out), *faces, *detector, *extra, "--out", str(report)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("personalize evaluate-faces: error:") and expected in err, err
    assert not report.exists() and not (out / "face_scores.json").exists()
