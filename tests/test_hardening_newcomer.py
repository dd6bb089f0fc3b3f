"""Hostile and unlucky inputs (issue 38), continued: what a new user meets (item 10) and documentation that
contradicted the official code (item 11)."""

import pytest
from helpers import one_line, train_argv, write_concept_images


# --------------------------------------------------------------------------------- a new user's run (item 10)


@pytest.mark.parametrize("captions", [True, False])
def test_the_app_shows_the_caption_training_used_not_the_unused_instance_prompt(tmp_path, tiny_sd1, captions):
    from personalize.artifacts import load_artifact, trained_on
    from personalize.cli import main

    data = write_concept_images(tmp_path / "data")
    if captions:
        for p in data.glob("*.png"):
            p.with_suffix(".txt").write_text(f"a photo of a {p.stem} square")
    assert main(train_argv(tiny_sd1, data, tmp_path / "out", "--train.max_train_steps=1",
                            "--data.instance_prompt=a photo of sks dog")) == 0
    art = load_artifact(tmp_path / "out" / "lora.safetensors")
    assert trained_on(art) == ("a photo of a 0 square" if captions else "a photo of sks dog")


@pytest.mark.parametrize("override, message", [
    ("--train.learning_rat=1e-4", "unknown config key 'train.learning_rat' (did you mean 'learning_rate'?)"),
    ("--data.resolutoin=64", "unknown config key 'data.resolutoin' (did you mean 'resolution'?)"),
    ("--method.rnak=4", "is not an option of method lora (no method has it) (did you mean 'rank'?)"),
])
def test_a_misspelt_key_gets_a_did_you_mean(override, message, capsys):
    from personalize.cli import main

    assert main(["config", "--config", "lora", override]) == 2
    assert message in one_line(capsys)


def test_no_suggestion_for_a_key_nothing_resembles(capsys):
    from personalize.cli import main

    assert main(["config", "--config", "lora", "--train.zzzz=1"]) == 2
    assert "did you mean" not in one_line(capsys)


def test_the_vocabulary_note_names_only_the_prompts_this_run_uses(tmp_path, caplog):
    import logging

    from personalize.config import load_config
    from personalize.trainer import _vocabulary_note

    data = write_concept_images(tmp_path / "data")
    for p in data.glob("*.png"):
        p.with_suffix(".txt").write_text("a photo of a sks square")  # every image captioned
    cfg = load_config(["lora"], [f"--data.instance_data_dir={data}", "--train.validation_prompt=a sks circle"])
    with caplog.at_level(logging.WARNING, logger="personalize.trainer"):
        _vocabulary_note(cfg)  # lora.yaml's instance and class prompts ("a photo of sks dog") go unused here
    assert caplog.text == ""
    (data / "0.txt").unlink()
    with caplog.at_level(logging.WARNING, logger="personalize.trainer"):
        _vocabulary_note(cfg)
    assert "'dog' (data.instance_prompt)" in caplog.text and "class_prompt" not in caplog.text


def test_an_error_comes_without_a_vocabulary_note_ahead_of_it(tmp_path, capsys, caplog):
    from personalize.cli import main

    assert main(["train", "--config", "lora", f"--data.instance_data_dir={tmp_path / 'missing'}"]) == 2
    assert "note:" not in caplog.text and "missing" in one_line(capsys)


def test_the_unknown_word_note_comes_once_on_its_own_line_before_the_bar(tmp_path):
    import re
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "personalize.cli", "generate", "--base", "toyworld", "--prompt", "a photo of a dog",
           "--prompt", "a dog on grass", "--seeds", "0-1", "--batch-size", "1", "--steps", "1", "--out",
           str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 0, err
    notes = [m.start() for m in re.finditer("note: the toy world does not know", err)]
    assert len(notes) == 1, err  # one note for the job (it was logged once per pipeline call)
    assert err[notes[0] - 1] == "\n" and "'dog', 'grass'" in err  # not glued to a progress bar line
    assert err.index("note:") < err.index("generate[")


@pytest.mark.parametrize("command", ["train", "train-classes", "config"])
def test_help_of_the_config_commands_names_dotted_overrides(command, capsys):
    from personalize.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--section.key=value" in out and "--train.max_train_steps=400" in out


def test_load_pipeline_from_python_prints_no_torchvision_lines(tmp_path):
    import subprocess
    import sys

    code = "import personalize; personalize.load_pipeline('toyworld')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "requires torchvision" not in proc.stderr  # two lines per load before (transformers' fallback note)


# ----------------------------------------------------------------- documentation against the official code (11)


def test_sude_clamp_is_off_by_default_and_not_called_official():
    """The official LDM code never clamps (LatentDiffusion sets clip_denoised = False): the default is the
    faithful one, and nothing calls the clamp "official"."""
    from personalize.methods.personalization import sude
    from personalize.resources import config_file

    assert sude.Options().clamp_x0 is False
    for text in (sude.__doc__, config_file("sude.yaml").read_text(), open(sude.__file__).read()):
        assert "official clamp" not in text and "official asymmetric" not in text


def test_classdiffusion_refuses_a_base_with_several_concepts():
    from types import SimpleNamespace

    from personalize.methods.base import MethodError
    from personalize.methods.personalization.classdiffusion import Options, SemanticPreservation

    base = SimpleNamespace(tokenizer=None, rows=SimpleNamespace(triggers={"sks": 0, "zwx": 1}))
    with pytest.raises(MethodError, match=r"one concept per run, but the base has 2 trigger words"):
        SemanticPreservation(Options(class_word="dog")).setup(base)
