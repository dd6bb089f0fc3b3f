"""Face2Diffusion in the app: the face accordion's choices, the crop preview, generation with an uploaded photo or
a person file, through the Studio and through the running app's API (gradio_client)."""

import shutil

import numpy as np
import pytest
from PIL import Image

from personalize.errors import PersonalizeError
from personalize.toyworld import faces

PROMPT = "a photo of a smiling f l"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from helpers import train_tiny_f2d

    from personalize.methods.face2diffusion import edit, encoder

    root = tmp_path_factory.mktemp("f2d_app")
    _, f2d = train_tiny_f2d(root / "train")
    arts = root / "artifacts"
    arts.mkdir()
    shutil.copyfile(f2d, arts / "face2diffusion.safetensors")
    face = edit.encode_faces(encoder.FaceEncoder.load(f2d), [photo()])[0]
    edit.save_person(arts / "p0.f2d.safetensors", face, "toyworld")
    return arts, root / "outputs"


@pytest.fixture(scope="module")
def studio(folders):
    from personalize.pipeline import load_pipeline
    from personalize.studio import Studio

    return Studio(load_pipeline("toyworld", device="cpu"), *folders)


def photo(identity=faces.HELD_OUT[0]):
    return Image.fromarray(faces.held_out_photo(identity))


def test_face_files_are_choices_not_artifacts(studio):
    from personalize.app.ui import _choices

    assert sorted((e.rel, e.shows) for e in studio.edit_files("face2diffusion")) == [
        ("face2diffusion.safetensors", "encoder"), ("p0.f2d.safetensors", "person")]
    assert _choices(studio)[0] == []  # neither is offered as an artifact to apply


def face(photo=None, file=""):
    return {"face2diffusion": {"face": [] if photo is None else [photo], "file": file}}


def test_photo_or_person_file_through_the_studio(studio):
    crop = studio.preview(face(photo().resize((64, 64)), "face2diffusion.safetensors"))
    assert crop.size == (32, 32)  # what the encoder reads: its input size
    kw = {"seed": 4, "steps": 4}
    by_photo = studio.generate(PROMPT, edits=face(photo(), "face2diffusion.safetensors"), **kw)[0]
    by_person = studio.generate(PROMPT, edits=studio.edits(face(None, "p0.f2d.safetensors")), **kw)[0]
    plain = studio.generate(PROMPT.replace("f l", "person"), **kw)[0]
    assert np.array_equal(np.asarray(by_photo.image), np.asarray(by_person.image))
    assert not np.array_equal(np.asarray(by_photo.image), np.asarray(plain.image))
    with pytest.raises(PersonalizeError, match="is a person file"):
        studio.edits(face(photo(), "p0.f2d.safetensors"))
    with pytest.raises(PersonalizeError, match="give a face photo to go with it"):
        studio.edits(face(None, "face2diffusion.safetensors"))
    with pytest.raises(PersonalizeError, match="not a .safetensors file in"):
        studio.edits(face(photo(), "../elsewhere.safetensors"))
    with pytest.raises(PersonalizeError, match="no identifier 'f l'"):
        studio.check("a photo of a person", edits=face(photo(), "face2diffusion.safetensors"))


@pytest.fixture(scope="module")
def server(folders):
    from app.main import build_parser, make_app
    from test_app import free_port

    arts, outputs = folders
    port = free_port()
    args = build_parser().parse_args(["--artifacts-dir", str(arts), "--outputs-dir", str(outputs),
                                      "--port", str(port), "--device", "cpu"])
    demo, launch = make_app(args)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_api_generates_with_an_uploaded_face(server, tmp_path):
    from gradio_client import Client, handle_file

    photo().save(tmp_path / "face.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "wide.png")
    client = Client(server, verbose=False)
    crop = client.predict(handle_file(str(tmp_path / "face.png")), "face2diffusion.safetensors", api_name="/face_preview")
    assert Image.open(crop).size[0] >= 32
    args = (PROMPT, "", [], 4, 4, 5, 32, 32, 1, "", "off", False)
    gallery, info = client.predict(*args, handle_file(str(tmp_path / "face.png")), "face2diffusion.safetensors",
                                   api_name="/generate")
    person, _ = client.predict(*args, None, "p0.f2d.safetensors", api_name="/generate")
    pixels = [np.asarray(Image.open(g[0]["image"]).convert("RGB")) for g in (gallery, person)]
    assert '"face"' in info and np.array_equal(*pixels)
    with pytest.raises(Exception, match="expected an aligned square face crop"):
        client.predict(*args, handle_file(str(tmp_path / "wide.png")), "face2diffusion.safetensors",
                       api_name="/generate")
