"""What a new user trips on (issue 16): threads, bundled data, config spellings, hints, labels, file modes."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from personalize.cli import main

ROOT = Path(__file__).resolve().parents[1]


# --- threads -------------------------------------------------------------------------------------------------

def test_available_cpus_reads_the_cgroup_quota(tmp_path):
    from personalize.cpu import available_cpus

    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity  # no quota
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert available_cpus(tmp_path) == 1  # half a CPU rounds up to one
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(v1) == 1


def test_configure_threads_respects_omp_and_the_cap():
    from personalize.cpu import configure_threads

    before = torch.get_num_threads()
    try:
        assert configure_threads(environ={"OMP_NUM_THREADS": "3"}) == 3 == torch.get_num_threads()
        torch.set_num_threads(4)
        assert configure_threads(max_threads=1, environ={}) == 1 == torch.get_num_threads()
        torch.set_num_threads(64)
        assert configure_threads(environ={}) == min(64, len(os.sched_getaffinity(0)))  # never more than the CPUs
    finally:
        torch.set_num_threads(before)


# --- bundled data, found from anywhere --------------------------------------------------------------------

def test_data_root_override_and_its_error(tmp_path, monkeypatch):
    from personalize import resources
    from personalize.errors import PersonalizeError

    assert resources.data_root() == ROOT  # a checkout uses its own assets/
    (tmp_path / "assets").mkdir()
    monkeypatch.setenv("PERSONALIZE_DATA", str(tmp_path))
    assert resources.asset("toyworld") == tmp_path / "assets" / "toyworld"
    monkeypatch.setenv("PERSONALIZE_DATA", str(tmp_path / "nope"))
    with pytest.raises(PersonalizeError, match="PERSONALIZE_DATA.*must be a folder holding assets"):
        resources.data_root()


def test_bundled_configs_and_examples_from_another_folder(tmp_path, monkeypatch):
    from personalize.config import ConfigError, load_config
    from personalize.data import list_images

    monkeypatch.chdir(tmp_path)
    for name in ("configs/lora.yaml", "lora.yaml", "lora", "toyworld/sude"):
        assert load_config([name]).method["name"] in ("lora", "sude"), name
    with pytest.raises(ConfigError, match=r"config file not found: nope\.yaml \(bundled configs: .*lora\.yaml"):
        load_config(["nope.yaml"])
    assert len(list_images("assets/examples/new-person")) == 3
    assert list_images("assets/examples/one-face")[0].is_absolute()


# --- config spellings and one validation path --------------------------------------------------------------

@pytest.mark.parametrize("raw, want", [("no", "no"), ("fp16", "fp16"), ("bf16", "bf16")])
def test_mixed_precision_diffusers_spelling(raw, want):
    from personalize.config import load_config

    assert load_config([], [f"--train.mixed_precision={raw}"]).train.mixed_precision == want


def test_config_command_checks_method_keys(capsys):
    assert main(["config", "--config", "configs/lora.yaml", "--method.foo=1"]) == 2
    err = capsys.readouterr().err
    assert "method.foo" in err and "not an option of method lora" in err
    assert main(["config", "--config", "configs/lora.yaml", "--method.rank=8"]) == 0
    assert "rank: 8" in capsys.readouterr().out


# --- prompts the toy world cannot read ---------------------------------------------------------------------

def test_toy_world_names_the_words_it_does_not_know():
    from personalize.toyworld import vocabulary

    known = vocabulary.vocabulary()
    assert vocabulary.unknown_words("a photo of a dog on the beach", known) == ["dog", "beach"]
    assert vocabulary.unknown_words("a man without glasses", known) == ["man", "without"]
    assert vocabulary.unknown_words("a small sks on a black background", known, ["sks"]) == []
    assert vocabulary.unknown_words("a close-up photo of a smiling person wearing glasses on a grey background",
                                    known) == []
    assert vocabulary.hint_for([]) is None and "'dog'" in vocabulary.hint_for(["dog"])


def test_generate_on_the_toy_world_prints_the_hint(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="personalize.pipeline"):
        assert main(["generate", "--prompt", "a photo of a dog on the beach", "--steps", "1", "--out",
                     str(tmp_path / "o"), "--no-progress"]) == 0
    assert "does not know 'dog', 'beach'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="personalize.pipeline"):
        assert main(["generate", "--prompt", "a red circle", "--steps", "1", "--out", str(tmp_path / "p"),
                     "--no-progress"]) == 0
    assert "does not know" not in caplog.text
    with open(next((tmp_path / "p").glob("0*.png")), "rb") as f:
        from PIL import Image

        assert "CFG scale: 5.0" in Image.open(f).text["parameters"]  # the toy world's own default guidance


def test_a_real_model_config_on_the_toy_world_says_so(caplog, tmp_path):
    from personalize.config import load_config
    from personalize.trainer import _vocabulary_note

    with caplog.at_level(logging.WARNING, logger="personalize.trainer"):
        _vocabulary_note(load_config(["configs/sude.yaml"]))
    assert "'dog'" in caplog.text and "--model.pretrained" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="personalize.trainer"):
        _vocabulary_note(load_config(["configs/toyworld/sude.yaml"]))
    assert caplog.text == ""


# --- generate checks '{}' before loading the model -----------------------------------------------------------

def test_braces_with_a_tokenless_artifact_fail_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from personalize import pipeline
    from personalize.artifacts import save_artifact

    art = save_artifact(tmp_path / "db.safetensors", "dreambooth", "toyworld", weights={"x": torch.zeros(1)},
                        kind="delta")
    monkeypatch.setattr(pipeline, "load_components", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["generate", "--artifact", str(art), "--prompt", "a {} person", "--out", str(tmp_path / "o")]) == 2
    assert "0 trigger words are loaded" in capsys.readouterr().err and not (tmp_path / "o").exists()


# --- short repr, artifact labels, file modes, log noise ------------------------------------------------------

def test_artifact_repr_is_one_short_line(tmp_path):
    from personalize.artifacts import load_artifact, save_artifact

    path = save_artifact(tmp_path / "db.safetensors", "dreambooth", "toyworld",
                         weights={"unet.w": torch.zeros(300, 300)}, kind="delta")
    text = repr(load_artifact(path))
    assert "\n" not in text and len(text) < 300 and "90,000 values" in text and "tensor(" not in text


def test_app_labels_tell_two_runs_apart_and_show_the_training_prompt(tmp_path):
    from personalize.artifacts import save_artifact
    from personalize.studio import scan_artifacts

    for run in ("run-a", "run-b"):
        save_artifact(tmp_path / run / "dreambooth.safetensors", "dreambooth", "toyworld",
                      weights={"x": torch.zeros(1)}, kind="delta",
                      config=json.dumps({"data": {"instance_prompt": f"a photo of a sks person ({run})"}}))
    labels = [e.label for e in scan_artifacts(tmp_path, 768)]
    assert labels[0].startswith("run-a/dreambooth.safetensors | dreambooth | prompt: 'a photo of a sks person (run-a)'")
    assert labels[1].startswith("run-b/dreambooth.safetensors") and labels[0] != labels[1]
    assert all(label.count(" | ") == 4 for label in labels)  # ... | base: toyworld | YYYY-MM-DD HH:MM


def test_atomic_files_get_the_umask_mode(tmp_path):
    from personalize.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    finally:
        os.umask(old)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o644


def test_quiet_drops_only_the_named_noise():
    from personalize.quiet import NOISE, quiet

    quiet()
    quiet()  # idempotent
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("transformers.utils.import_utils")
    log.addHandler(handler)
    try:
        log.warning("`CLIPImageProcessor` %s; falling back", NOISE["transformers.utils.import_utils"])
        log.warning("something else")
    finally:
        log.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["something else"]
    assert sum(1 for f in log.filters if type(f).__name__ == "DropMessages") == 1


def test_app_shows_tiny_images_enlarged_with_nearest():
    pytest.importorskip("gradio")
    from PIL import Image

    from personalize.app.ui import shown

    tiny = Image.new("RGB", (32, 32), "red")
    tiny.putpixel((0, 0), (0, 0, 255))
    big = shown(tiny)
    assert big.size == (256, 256) and big.getpixel((7, 7)) == (0, 0, 255) and big.getpixel((8, 8)) == (255, 0, 0)
    assert shown(Image.new("RGB", (512, 512))).size == (512, 512)


def test_the_hint_knows_the_words_a_tokenless_artifact_was_trained_with(tmp_path):
    from personalize.artifacts import load_artifact, save_artifact
    from personalize.pipeline import Pipeline

    path = save_artifact(tmp_path / "db.safetensors", "dreambooth", "toyworld", weights={"x": torch.zeros(1)},
                         kind="delta", config=json.dumps({"data": {"instance_prompt": "a photo of a sks person"}}))
    pipe = Pipeline(None, "toyworld")
    assert "'sks'" in pipe.prompt_hint(["a photo of a smiling sks person"])
    pipe._applied.append(type("A", (), {"artifact": load_artifact(path)})())  # as add_artifact records it
    assert pipe.prompt_hint(["a photo of a smiling sks person"]) is None
    assert Pipeline(None, "path/to/sd15").prompt_hint(["a photo of a dog"]) is None  # real bases: no hint


def test_a_trigger_is_cut_out_of_a_prompt_only_as_a_whole_word():
    from personalize.toyworld.vocabulary import unknown_words

    known = {"a", "photo", "of", "person"}
    assert unknown_words("a photo of f l", known, ["f", "l"]) == []  # not the "o" left of "of"
    assert unknown_words("a photo of sks tasks", known, ["sks"]) == ["tasks"]
    assert unknown_words("a photo of dct-person-18 person", known, ["dct-person-18"]) == []
