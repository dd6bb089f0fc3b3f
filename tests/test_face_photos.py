"""A real photo through Face2Diffusion's ways in (issue 20): `generate --face` on an SD1-shaped model with a
112 px encoder, the official sampling preset, bad photos refused with nothing written, and the app's upload
(Studio and the running app's API) aligning the photo it is given."""

import numpy as np
import pytest
import torch
from PIL import Image

from face_models import FakeFace, model_pack
from personalize.errors import PersonalizeError

PROMPT = "a photo of f l on the beach"


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A random encoder at the official input size (112 px) whose vectors fit tiny_sd1's width (32)."""
    from personalize.artifacts import ArtifactContent, save_content
    from personalize.methods.face2diffusion.encoder import FaceEncoder
    from personalize.methods.face2diffusion.model import MappingConfig, MappingNetwork, MSIDConfig, MSIDEncoder

    torch.manual_seed(0)
    msid = MSIDEncoder(MSIDConfig(img_size=112, patch_size=16, embed_dim=16, depth=2, num_heads=2, ext_depths=(0, 1)))
    enc = FaceEncoder(msid.eval(), MappingNetwork(MappingConfig(32, 32, 32, 1, 0.0, 4)).eval())
    content = ArtifactContent("face2diffusion", {}, enc.tensors(), "f2d_encoder", enc.metadata())
    return save_content(tmp_path_factory.mktemp("enc") / "face2diffusion.safetensors", "face2diffusion", "tiny",
                        content)


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_generate_with_a_real_photo(tiny_sd1, encoder_file, astronaut, tmp_path):
    from personalize.cli import main
    from personalize.methods.face2diffusion import edit

    pack = model_pack(tmp_path / "pack", [FakeFace((16, 14, 48, 54), np.array(
        [[24, 29], [40, 27], [33, 36], [27, 45], [39, 43]], float))])
    args = ["generate", "--base", str(tiny_sd1), "--prompt", PROMPT, "--steps", "2", "--face", str(astronaut),
            "--face-encoder", str(encoder_file), "--no-progress"]
    for detector in (str(pack), "cascade"):
        out = tmp_path / f"out-{len(detector)}"
        assert main(args + ["--face-detector", detector, "--out", str(out)]) == 0
        assert "astronaut.png#" in (out / "results.jsonl").read_text()
    # the edit reads the aligned crop, not the photo: the same vectors as the crop given as an aligned photo
    cascade = edit.edit({"face": [str(astronaut)], "encoder": str(encoder_file), "detector": "cascade"})
    crop = Image.fromarray(cascade.crops[0])
    assert crop.size == (112, 112)
    direct = edit.edit({"face": [crop], "encoder": str(encoder_file), "detector": "none"})
    assert torch.equal(cascade.faces[0].first, direct.faces[0].first)
    # without a pack at the default place, a real model's photo needs a detector: the error says what to do
    with pytest.raises(PersonalizeError, match="no insightface model pack at .*--face-detector cascade"):
        edit.edit({"face": [str(astronaut)], "encoder": str(encoder_file), "base": str(tiny_sd1),
                   "detector": str(tmp_path / "no-pack")})


def test_bad_photos_are_refused_and_nothing_is_written(tiny_sd1, encoder_file, tmp_path, capsys):
    from personalize.cli import main

    (tmp_path / "text.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("RGB", (200, 160), (128, 128, 128)).save(tmp_path / "wall.png")
    Image.new("L", (7072, 7072)).save(tmp_path / "huge.png")  # 50 megapixels
    cases = [("text.png", "not a readable image"), ("dot.png", "1x1 is too small to hold a face"),
             ("wall.png", "wall.png: no face found in it"), ("huge.png", "7072x7072 is larger than")]
    for name, message in cases:
        out = tmp_path / f"out-{name}"
        code = main(["generate", "--base", str(tiny_sd1), "--prompt", PROMPT, "--steps", "2", "--face",
                     str(tmp_path / name), "--face-encoder", str(encoder_file), "--face-detector", "cascade",
                     "--out", str(out), "--no-progress"])
        assert code == 2 and message in capsys.readouterr().err and not out.exists()


def test_the_official_preset_fills_what_flags_leave(tiny_sd1, monkeypatch, tmp_path):
    import personalize.batch
    import personalize.pipeline
    from personalize.cli import main

    seen = {}
    monkeypatch.setattr(personalize.batch, "run_batch",
                        lambda pipe, *a, **kw: seen.update(kw) or personalize.batch.BatchResult([], 0))
    real = personalize.pipeline.load_pipeline
    monkeypatch.setattr(personalize.pipeline, "load_pipeline", lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    base = ["generate", "--base", str(tiny_sd1), "--prompt", "a cat", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["--preset", "face2diffusion", "--steps", "3"]) == 0
    # inference_f2d.py: Euler ancestral, guidance 7, 512 px; an explicit flag (--steps 3) wins
    assert (seen["scheduler"], seen["steps"], seen["guidance_scale"], seen["height"], seen["width"]) == (
        "euler_a", 3, 7.0, 512, 512)
    assert main(base + ["--preset", "lora"]) == 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.main import build_parser, make_app
    from test_app import free_port

    root = tmp_path_factory.mktemp("app_photos")
    port = free_port()
    args = build_parser().parse_args(["--artifacts-dir", str(root / "arts"), "--outputs-dir", str(root / "out"),
                                      "--port", str(port), "--device", "cpu", "--face-detector", "cascade"])
    demo, launch = make_app(args)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_app_aligns_an_uploaded_photo(server, astronaut, tmp_path):
    from gradio_client import Client, handle_file

    Image.new("RGB", (200, 160), (128, 128, 128)).save(tmp_path / "wall.png")
    client = Client(server, verbose=False)
    from personalize import face

    shown = np.asarray(Image.open(client.predict(handle_file(str(astronaut)), "", api_name="/face_preview")))
    # the toy encoder's input (32 px, shown 8x larger): the face aligned, not the whole photo
    aligned = face.detect_and_align(np.asarray(Image.open(astronaut)), face.CascadeDetector(), 32).crop
    gap = np.abs(shown[::8, ::8].astype(int) - aligned)  # the upload is re-encoded on the way: a few levels
    assert shown.shape == (256, 256, 3) and gap.mean() < 3 and gap.max() < 24
    args = ("a photo of a smiling f l", "", [], 2, 4, 5, 32, 32, 1, "", "off", False)
    gallery, info = client.predict(*args, handle_file(str(astronaut)), "", api_name="/generate")
    assert len(gallery) == 1 and '"face": ["photo#' in info
    assert "does not know" not in info  # the face gives "f l" a meaning (the app's note said otherwise)
    with pytest.raises(Exception, match="no face found"):
        client.predict(*args, handle_file(str(tmp_path / "wall.png")), "", api_name="/generate")
