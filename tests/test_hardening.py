"""Hostile and unlucky inputs (issue 38): each is refused with one line naming what was wrong and what was
expected, before anything is written."""

import pytest
from helpers import one_line, train_argv, write_concept_images

from personalize.batch import parse_seeds
from personalize.errors import PersonalizeError


@pytest.mark.parametrize("text, message", [
    ("1-", "'1-' is not a seed or a range"),
    ("5-1,7", "the range '5-1' runs downward"),
    ("0-100000000", "asks for 100,000,001 seeds per prompt"),
    (str(2**63), r"seeds go up to 9223372036854775807"),
    ("-3", "'-3' is not a seed or a range"),
    ("", "'' is not a seed or a range"),
])
def test_bad_seed_lists_are_refused(text, message):
    with pytest.raises(PersonalizeError, match=message):
        parse_seeds(text)


def test_good_seed_lists():
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10] and parse_seeds(" 7 ") == [7] and parse_seeds("2-2") == [2]


@pytest.mark.parametrize("kwargs, message", [
    ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number"),
    ({"height": -8}, "height must be a positive multiple of 8"),
    ({"width": 33}, "width must be a positive multiple of 8"),
    ({"height": 0}, "height must be a positive multiple of 8"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"seed": 2**63}, r"seeds must be in 0..2\*\*63-1"),
])
def test_generate_refuses_settings_diffusers_would_misread(pipe_sd1, kwargs, message, monkeypatch):
    monkeypatch.setattr(pipe_sd1, "sd", None)  # nothing may reach the model
    with pytest.raises(PersonalizeError, match=message):
        pipe_sd1.generate("a photo of a dog", **({"seed": 0} | kwargs))


def test_the_cli_refuses_them_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from personalize import pipeline
    from personalize.cli import main

    monkeypatch.setattr(pipeline, "load_components", lambda *a, **k: pytest.fail("the model was loaded"))
    for flags, message in ((["--height", "-8"], "height must be a positive multiple of 8"),
                           (["--guidance-scale", "nan"], "guidance_scale must be a finite number"),
                           (["--seeds", "5-1"], "runs downward"),
                           (["--prompt", "a \udcff dog"], "is not valid UTF-8 text"),  # argv from a latin-1 terminal
                           (["--prompt", " "], "prompt 2 of 2 is empty")):
        assert main(["generate", "--prompt", "a red circle", "--out", str(tmp_path / "o"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_a_face_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    import numpy as np
    from PIL import Image

    from personalize.methods.face2diffusion.edit import read_photo

    upright = np.zeros((32, 32, 3), np.uint8)
    upright[:8] = 255  # a white band at the top
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a camera stores sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: rotate 90 degrees clockwise to view
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    read, _ = read_photo(tmp_path / "phone.jpg", 32)
    assert read[:8].mean() > 200 and read[-8:].mean() < 50  # the band is on top again


def _gray16(path, value: int, size=(24, 24)):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full(size[::-1], value, np.uint16)).save(path)
    return path


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from personalize.data import load_image
    from personalize.methods.face2diffusion.edit import read_photo
    from personalize.photos import to_rgb

    path = _gray16(tmp_path / "g16.png", 207 * 257)  # 16-bit 53199 is 8-bit 207
    with Image.open(path) as im:
        assert im.mode.startswith("I") and im.convert("RGB").getpixel((0, 0)) == (255, 255, 255)  # Pillow clips
    assert load_image(path).getpixel((0, 0)) == (207, 207, 207)
    assert read_photo(path, 24)[0].mean() == 207
    assert to_rgb(Image.fromarray(__import__("numpy").array([[0, 65535, 128]], "int32"), "I")).getpixel((1, 0)) \
        == (255, 255, 255)
    assert to_rgb(Image.new("CMYK", (1, 1), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_a_training_image_too_large_to_decode_is_refused_by_its_header(tmp_path, monkeypatch):
    from PIL import Image

    from personalize import photos
    from personalize.data import DataError, examples_from_folder

    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(photos, "MAX_PIXELS", 50_000)  # 300x200 = 60,000 stands in for 20000x20000
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded before the size check"))
    with pytest.raises(DataError, match=r"big.png: 300x200 is larger than 50,000 pixels; expected a smaller"):
        examples_from_folder(tmp_path, "a photo", "data.instance_data_dir")


def test_pillows_own_bomb_limit_is_one_line_too(tmp_path, monkeypatch):
    from PIL import Image

    from personalize.photos import PhotoError, open_photo

    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow raises DecompressionBombError above 2x
    with pytest.raises(PhotoError, match="big.png: not a readable image .*decompression bomb"):
        open_photo(tmp_path / "big.png", "image")


@pytest.mark.parametrize("prompt, negative, message", [
    ("", None, "the prompt is empty: describe the image to generate"),
    (["a dog", "  "], None, "prompt 2 of 2 is empty"),
    ("a \udcff dog", None, r"prompt 'a \\\\xff dog' is not valid UTF-8 text"),
    ("a dog", "no \udcfe", "negative prompt .* is not valid UTF-8 text"),
    ("a dog", 3, "negative_prompt must be a string or None, got int"),
])
def test_generate_refuses_prompts_the_tokenizer_would_misread(pipe_sd1, prompt, negative, message, monkeypatch):
    monkeypatch.setattr(pipe_sd1, "sd", None)
    with pytest.raises(PersonalizeError, match=message):
        pipe_sd1.generate(prompt, negative, seed=0)


def test_generate_defaults_to_the_profiles_guidance(pipe_sd1, monkeypatch):
    from personalize import pipeline

    class Called(Exception):
        pass

    def record(sd, call, edits):
        raise Called(call["guidance_scale"])

    monkeypatch.setattr(pipeline, "_edited_call", record)
    for profile, expected in (("toyworld", 5.0), ("sd1", 7.5)):  # the CLI's and the app's defaults (was 7.5 for all)
        monkeypatch.setattr(pipe_sd1, "profile", pipeline.profile_for(profile))
        with pytest.raises(Called) as called:
            pipe_sd1.generate("a red circle", seed=0)
        assert called.value.args == (expected,)


@pytest.mark.parametrize("where", ["prompts", "config", "caption"])
def test_a_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys, where, tiny_sd1, monkeypatch):
    from personalize import pipeline
    from personalize.cli import main

    monkeypatch.setattr(pipeline, "load_components", lambda *a, **k: pytest.fail("the model was loaded"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a red \xff circle\n")
    data = tmp_path / "data"
    write_concept_images(data)
    if where == "caption":
        bad = data / "0.txt"
        bad.write_bytes(b"a red \xff circle\n")
    argv = {"prompts": ["generate", "--prompts", str(bad), "--out", str(tmp_path / "o")],
            "config": ["train", "--config", str(bad)],
            "caption": ["train", "--config", "lora", f"--model.pretrained={tiny_sd1}", f"--data.instance_data_dir={data}",
                        f"--train.output_dir={tmp_path / 'o'}"]}[where]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{bad} is not UTF-8 text (byte 6 is 0xff)" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_ctrl_c_in_training_is_one_line_with_the_step_and_how_to_resume(tmp_path, tiny_sd1, concept_dir, capsys,
                                                                         monkeypatch):
    from personalize import trainer
    from personalize.cli import main

    out = tmp_path / "out"
    assert main(train_argv(tiny_sd1, concept_dir, out, "--train.max_train_steps=2")) == 0
    written = (out / "config.yaml").read_text()
    capsys.readouterr()
    real = trainer._check_finite

    def interrupt_at_step_4(total, losses, step, folder):
        if step == 4:
            raise KeyboardInterrupt
        real(total, losses, step, folder)

    monkeypatch.setattr(trainer, "_check_finite", interrupt_at_step_4)
    other = tmp_path / "other"
    assert main(train_argv(tiny_sd1, concept_dir, other, "--train.max_train_steps=6",
                            "--train.checkpointing_steps=2")) == 130
    assert f"stopped at step 3, no artifact written; resume from {other / 'checkpoint-2'} with " \
           "--train.resume_from_checkpoint=latest" in one_line(capsys)
    assert not list(other.glob("*.safetensors"))
    # a rerun in the first folder that is stopped keeps the config.yaml of the artifact beside it
    assert main(train_argv(tiny_sd1, concept_dir, out, "--train.max_train_steps=6", "--train.seed=5")) == 130
    assert one_line(capsys) == ("personalize train: stopped at step 3, before the first checkpoint: no artifact "
                                 "written; rerun to start again")
    assert (out / "config.yaml").read_text() == written


def test_a_failed_checkpoint_write_leaves_no_temp_folder(tmp_path, tiny_sd1, concept_dir, capsys, monkeypatch):
    import errno

    from personalize import checkpoint
    from personalize.cli import main

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_write_text", full_disk)
    out = tmp_path / "out"
    assert main(train_argv(tiny_sd1, concept_dir, out, "--train.max_train_steps=2",
                            "--train.checkpointing_steps=1")) == 2
    assert "could not write checkpoint-1 (No space left on device); earlier checkpoints are kept (none yet)" \
        in one_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == []  # no .checkpoint-1.tmp/, no artifact, no config.yaml


@pytest.mark.parametrize("damage, message", [
    ("truncate trainable", "cannot be resumed from (SafetensorError"),
    ("state not json", "cannot be resumed from (JSONDecodeError"),
    ("state a list", "state.json is not an object"),
    ("state without optimizer", "cannot be resumed from (KeyError: 'optimizer')"),
])
def test_resume_from_a_damaged_checkpoint_isone_line(tmp_path, tiny_sd1, concept_dir, capsys, damage, message):
    import json

    from personalize.cli import main

    out = tmp_path / "out"
    assert main(train_argv(tiny_sd1, concept_dir, out, "--train.max_train_steps=2",
                            "--train.checkpointing_steps=2")) == 0
    ckpt = out / "checkpoint-2"
    if damage == "truncate trainable":
        data = (ckpt / "trainable.safetensors").read_bytes()
        (ckpt / "trainable.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "state not json":
        (ckpt / "state.json").write_text('{"step": 2,')
    else:
        state = json.loads((ckpt / "state.json").read_text())
        state.pop("optimizer")
        (ckpt / "state.json").write_text(json.dumps([state] if damage == "state a list" else state))
    capsys.readouterr()
    assert main(train_argv(tiny_sd1, concept_dir, out, "--train.max_train_steps=4",
                            "--train.resume_from_checkpoint=latest")) == 2
    err = one_line(capsys)
    assert f"checkpoint {ckpt}" in err and message in err, err


def test_an_output_path_that_is_a_file_is_refused_before_the_model_loads(tmp_path, tiny_sd1, concept_dir, capsys,
                                                                        monkeypatch):
    from personalize import components, pipeline
    from personalize.cli import main

    monkeypatch.setattr(pipeline, "load_components", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(components, "components_from_config", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "afile").write_text("x")
    assert main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "afile")]) == 2
    assert f"--out '{tmp_path / 'afile'}': {tmp_path / 'afile'} is a file; expected a folder" in one_line(capsys)
    assert main(train_argv(tiny_sd1, concept_dir, tmp_path / "afile" / "sub")) == 2
    assert f"{tmp_path / 'afile'} is a file; expected a folder" in one_line(capsys)


@pytest.mark.parametrize("error, code, message", [
    (OSError(28, "No space left on device", "o/.0.png.tmp"), 1,
     "error: No space left on device (o/.0.png.tmp); free some space or choose another output folder"),
    (PermissionError(13, "Permission denied", "o/.0.png.tmp"), 1,
     "error: Permission denied (o/.0.png.tmp); choose a folder you can write to"),
    (KeyboardInterrupt(), 130, "personalize generate: stopped (Ctrl-C)"),
])
def test_the_machines_errors_and_ctrl_c_while_generating_areone_line(tmp_path, capsys, monkeypatch, error, code,
                                                                       message):
    from personalize import batch, pipeline
    from personalize.cli import main

    class Pipe:
        profile = pipeline.profile_for("sd1")

        def bind_edits(self, prompts, edits):
            pass

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: Pipe())
    monkeypatch.setattr(batch, "run_batch", fail)
    assert main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "o")]) == code
    assert message in one_line(capsys)


def test_a_config_file_that_is_not_yaml_isone_line(tmp_path, capsys):
    from personalize.cli import main

    (tmp_path / "nul.yaml").write_bytes(b"\x00\x01\x02")  # valid UTF-8, not YAML
    assert main(["config", "--config", str(tmp_path / "nul.yaml")]) == 2
    assert "is not valid YAML: unacceptable character #x0000" in one_line(capsys)


def test_the_app_refuses_a_busy_port_before_loading_the_model(capsys, monkeypatch):
    import socket

    from personalize import pipeline
    from personalize.app.main import main

    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert f"--port {port} on 127.0.0.1 is not free" in captured.err and captured.err.count("\n") == 1
    assert "http://" not in captured.out


@pytest.mark.parametrize("override, message", [
    ("--train.max_train_steps=-5", "train.max_train_steps=-5: expected a positive integer"),
    ("--train.max_train_steps=1000000000000", "train.max_train_steps=1,000,000,000,000: expected at most 10,000,000"),
    ("--train.learning_rate=.nan", "train.learning_rate=nan: expected a finite number"),
])
def test_personalize_config_refuses_what_train_refuses(override, message, capsys):
    from personalize.cli import main

    assert main(["config", "--config", "lora", override]) == 2
    assert message in one_line(capsys)
    assert main(["train", "--config", "lora", override]) == 2
    assert message in one_line(capsys)
