"""Face2Diffusion end to end on small networks: both training stages through the loop, the encoder file's strict
loading, gradients only on the mapping network, the face edit (generate(edits=edits(face=...))), the person file, folders of
identities, and clear errors for bad photos, prompts and files."""

import numpy as np
import pytest
import torch
from PIL import Image

from personalize import edits
from personalize.artifacts import ArtifactError, read_safetensors
from personalize.atomic import atomic_save_file
from personalize.config import load_config
from personalize.methods.base import MethodError
from personalize.methods.face2diffusion import data, edit, encoder, inject
from helpers import F2D_MAP_SMALL as MAP_SMALL, F2D_MSID_SMALL as MSID_SMALL, train_tiny_f2d

from personalize.toyworld import faces


def config(out, method, **train):
    return load_config([], {"model": {"pretrained": "toyworld"},
                            "train": {"output_dir": str(out), "max_train_steps": 2, "train_batch_size": 4,
                                      "checkpointing_steps": 10_000, "report_to": "none", "learning_rate": 1e-3}
                            | train, "method": method})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return train_tiny_f2d(tmp_path_factory.mktemp("f2d"))


@pytest.fixture(scope="module")
def pipe():
    from personalize.pipeline import load_pipeline

    return load_pipeline("toyworld", device="cpu")


def photo(identity=faces.HELD_OUT[0], **kw):
    return Image.fromarray(faces.held_out_photo(identity, **kw))


def test_both_stages_write_files_that_load_strictly(files):
    msid_file, f2d_file = files
    assert msid_file.name == "f2d_msid.safetensors" and f2d_file.name == "face2diffusion.safetensors"
    tensors, meta = read_safetensors(f2d_file)
    assert meta["method"] == "face2diffusion" and meta["weights"] == "f2d_encoder" and meta["identifier"] == "f l"
    assert "msid.norms.layer_1.0.num_batches_tracked" in tensors and "mapping.null_exp" in tensors
    enc = encoder.FaceEncoder.load(f2d_file)
    assert enc.face_size == 32 and enc.width == 48 and not enc.mapping.training
    first, last = enc(torch.zeros(2, 3, 32, 32))
    assert first.shape == last.shape == (2, 48)
    # the trained MSID is the stage-1 one, unchanged by stage 2 (frozen, eval mode: no BatchNorm update)
    stage1, _ = read_safetensors(msid_file)
    assert all(torch.equal(v, tensors[k]) for k, v in stage1.items())


def test_a_wrong_key_or_shape_is_named(files, tmp_path):
    tensors, meta = read_safetensors(files[1])
    bad = dict(tensors)
    bad["mapping.i2t_first.fc_out.weight"] = torch.zeros(48, 7)
    atomic_save_file(bad, tmp_path / "shape.safetensors", meta)
    with pytest.raises(ArtifactError, match=r"mapping\.i2t_first\.fc_out\.weight has shape \(48, 7\)"):
        encoder.FaceEncoder.load(tmp_path / "shape.safetensors")
    del bad["mapping.i2t_first.fc_out.weight"]
    bad["mapping.extra"] = torch.zeros(1)
    atomic_save_file(bad, tmp_path / "keys.safetensors", meta)
    with pytest.raises(ArtifactError, match=r"missing \['i2t_first\.fc_out\.weight'\], unexpected \['extra'\]"):
        encoder.FaceEncoder.load(tmp_path / "keys.safetensors")
    with pytest.raises(ArtifactError, match="first stage only"):
        encoder.FaceEncoder.load(files[0])


def test_only_the_mapping_network_gets_gradients(files):
    from personalize.components import load_components
    from personalize.methods import build_method
    from personalize.trainer import make_accelerator

    cfg = config("/tmp/unused", {"name": "face2diffusion", "msid": str(files[0]), **MAP_SMALL}, train_batch_size=2)
    method, comps = build_method(cfg), load_components("toyworld")
    method.setup(comps, cfg, make_accelerator(cfg.train))
    losses = method.training_step(next(method.dataloader(0, 0, 1)), torch.Generator().manual_seed(0))
    losses["loss_cgdr"].backward()
    assert all(p.grad is not None for p in method.mapping.parameters())
    for frozen in (comps.unet, comps.vae, comps.text_encoder, method.msid):
        assert all(p.grad is None for p in frozen.parameters())
    assert 0.1 < losses["face_fraction"].item() < 0.9  # the toy faces' masks: face and background both present


def test_generate_with_a_face_photo_and_a_person_file(files, pipe, tmp_path):
    f2d = str(files[1])
    kw = {"seed": 3, "steps": 4}
    a = pipe.generate("a photo of f l", edits=edits(face=photo(), face_encoder=f2d), **kw)[0]
    assert a.settings["face"][0].startswith("photo#") and a.labels[0].startswith("Face: photo#")
    same = pipe.generate("a photo of f l", edits=edits(face=photo(), face_encoder=f2d), **kw)[0]
    other = pipe.generate("a photo of f l", edits=edits(face=photo(faces.HELD_OUT[5]), face_encoder=f2d), **kw)[0]
    assert np.array_equal(np.asarray(a.image), np.asarray(same.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(other.image))
    # a person file holds the two vectors: the same images without the encoder
    face = edit.encode_faces(encoder.FaceEncoder.load(f2d), [photo()])[0]
    person = edit.save_person(tmp_path / "p18.f2d.safetensors", face, "toyworld", f2d)
    again = pipe.generate("a photo of f l", edits=edits(person=str(person)), seed=3, steps=4)[0]
    assert np.array_equal(np.asarray(a.image), np.asarray(again.image))
    # several faces in one batch: one per prompt, each row its own face
    two = edits(face=[photo(), photo(faces.HELD_OUT[5])], face_encoder=f2d)
    both = pipe.generate(["a photo of f l", "a photo of f l"], edits=two, **kw)
    gap = lambda x, y: np.abs(np.asarray(x.image, np.int16) - np.asarray(y.image, np.int16)).max()  # noqa: E731
    assert gap(both[0], a) <= 2 and gap(both[1], other) <= 2  # batched float sums: a level or two
    assert gap(a, other) > 2 * gap(both[1], other)


def test_bad_prompts_photos_and_files_are_refused(files, pipe, tmp_path):
    kw, enc = {"seed": 0, "steps": 2}, str(files[1])
    with pytest.raises(inject.IdentifierError, match="no identifier 'f l'"):
        pipe.generate("a photo of a person", edits=edits(face=photo(), face_encoder=enc), **kw)
    with pytest.raises(edit.FaceError, match="2 faces for 3 prompts"):
        pipe.generate(["a f l", "b f l", "c f l"], edits=edits(face=[photo(), photo()], face_encoder=enc), **kw)
    (tmp_path / "text.png").write_bytes(b"not an image")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("RGB", (40, 32)).save(tmp_path / "wide.png")
    Image.new("F", (32, 32)).save(tmp_path / "float.tiff")
    for name, message in [("text.png", "not a readable image"), ("dot.png", "1x1; expected an aligned square"),
                          ("wide.png", "40x32; expected an aligned square"),
                          ("float.tiff", "float.tiff: mode .F. .32-bit float. is not supported")]:
        with pytest.raises(edit.FaceError, match=message):
            pipe.generate("a photo of f l", edits=edits(face=str(tmp_path / name), face_encoder=enc), **kw)
    objects = Image.fromarray(faces.np.asarray(faces.w.render(faces.w.Scene("object", "white", [faces.w.Obj("circle", "red")]))))
    with pytest.raises(edit.FaceError, match="no face found"):
        pipe.generate("a photo of f l", edits=edits(face=objects, face_encoder=enc), **kw)
    objects.save(tmp_path / "plus0.png")
    with pytest.raises(edit.FaceError, match=r"^face photo plus0.png: no face found"):  # no '#<digest>' in the name
        pipe.generate("a photo of f l", edits=edits(face=str(tmp_path / "plus0.png"), face_encoder=enc), **kw)
    with pytest.raises(ArtifactError, match="not a pipeline artifact"):
        pipe.add_artifact(files[1])
    with pytest.raises(edit.FaceError, match="must end in .f2d.safetensors"):
        edit.save_person(tmp_path / "p.safetensors", edit.Face(torch.zeros(48), torch.zeros(48), "x"), "toyworld")
    with pytest.raises(ArtifactError, match="not a Face2Diffusion person file"):
        edit.load_person(files[1])


def test_a_folder_of_identities(tmp_path):
    root = faces.write_face_folder(tmp_path / "ids", [1, 2], per_identity=2, seed=0)
    source = data.FolderSource(root, exp_dim=3)
    assert source.people == ["001", "002"] and source.num_classes == 2
    s = source(0, 0)
    assert s["photo"].shape == (32, 32, 3) and s["mask"].shape == (32, 32) and s["exp"].shape == (3,)
    assert sorted(source(0, i)["label"] for i in range(4)) == [0, 0, 1, 1]  # one epoch visits every photo once
    batch = data.collate([s], 32, 32, 8)
    assert batch["mask"].shape == (1, 1, 8, 8) and batch["faces"].shape == (1, 3, 32, 32)
    next((root / "002").glob("*.exp.npy")).unlink()
    with pytest.raises(MethodError, match="expression guidance needs an expression vector"):
        [data.FolderSource(root, exp_dim=3)(0, i) for i in range(4)]
    with pytest.raises(MethodError, match="expected 5 values"):
        data.read_item(data.FaceItem(root / "001" / "0.png", 0), exp_dim=5)
    with pytest.raises(MethodError, match="is not a folder"):
        data.FolderSource(tmp_path / "nothing", None)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(MethodError, match="holds no photos"):
        data.FolderSource(tmp_path / "empty", None)


def test_stage_options_are_checked_before_loading(tmp_path):
    from personalize.methods import build_method

    with pytest.raises(MethodError, match="method.msid is empty"):
        build_method(config(tmp_path, {"name": "face2diffusion"}))
    with pytest.raises(MethodError, match="must contain the identifier"):
        build_method(config(tmp_path, {"name": "face2diffusion", "msid": "x", "prompt": "a photo of sks"}))
    with pytest.raises(MethodError, match="ext_depths"):
        build_method(config(tmp_path, {"name": "f2d_msid", **MSID_SMALL, "ext_depths": [5]}))


def test_generate_command_with_faces(files, tmp_path, capsys):
    from personalize.cli import main

    photo().save(tmp_path / "a.png")
    photo(faces.HELD_OUT[5]).save(tmp_path / "b.png")
    out = tmp_path / "out"
    args = ["generate", "--prompt", "a photo of f l", "--prompt", "a photo of a smiling f l", "--seeds", "0-1",
            "--steps", "2", "--batch-size", "1", "--face-encoder", str(files[1]), "--no-progress"]
    assert main(args + ["--face", str(tmp_path / "a.png"), "--face", str(tmp_path / "b.png"), "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 4 + 1  # 2 prompts x 2 seeds, plus grid.png
    records = [line for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4 and "a.png#" in records[0]
    (tmp_path / "bad.png").write_bytes(b"nope")
    for bad, message in [(["--face", str(tmp_path / "bad.png")], "not a readable image"),
                         (["--face", str(tmp_path / "a.png"), "--prompt", "a person"], "no identifier"),
                         (["--face", str(tmp_path / "a.png"), "--suppress", "f"], "do not combine")]:
        fresh = tmp_path / f"none-{len(message)}"
        assert main(args + bad + ["--out", str(fresh)]) == 2
        assert message in capsys.readouterr().err and not fresh.exists()


def test_the_identifier_is_a_known_word_with_a_face(files, pipe, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="personalize.pipeline"):
        pipe.generate("a photo of f l", edits=edits(face=photo(), face_encoder=str(files[1])), seed=0, steps=2)
    assert "does not know" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="personalize.pipeline"):
        pipe.generate("a photo of f l", seed=0, steps=2)  # without a face, "f l" are unknown words
    assert "does not know 'f', 'l'" in caplog.text


def test_no_shipped_toy_encoder_is_a_clear_error(pipe, tmp_path, monkeypatch):
    import personalize.resources

    monkeypatch.setattr(personalize.resources, "asset", lambda *parts: tmp_path.joinpath(*parts))
    with pytest.raises(edit.FaceError, match="train one with `python training/toyworld/f2d.py`"):
        pipe.generate("a photo of f l", edits=edits(face=photo()), seed=0, steps=2)
