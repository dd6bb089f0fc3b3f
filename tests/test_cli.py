"""`personalize generate|convert|config`: outputs, resume, and bad input -> clear error, exit 2, nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from personalize.artifacts import save_embedding
from personalize.cli import main

ROOT = Path(__file__).parents[1]


def _gen(model, out, *extra):
    return main(["generate", "--base", str(model), "--out", str(out), "--steps", "2", "--no-progress", *extra])


def test_generate_outputs_and_resume(tiny_sd1, tmp_path, capsys):
    emb = save_embedding(tmp_path, "sks-cat", torch.randn(1, 32), "textual_inversion", "tiny")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of {}\n# comment\n\na {} on the beach\n")
    out = tmp_path / "out"
    assert _gen(tiny_sd1, out, "--prompts", str(prompts), "--seeds", "0-2", "--artifact", str(emb)) == 0
    pngs = sorted(p.name for p in out.glob("0*.png"))
    assert len(pngs) == 6 and pngs[0] == "0000-a_photo_of_sks_cat-s0.png"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in records][:4] == [
        ("a photo of sks-cat", 0), ("a photo of sks-cat", 1), ("a photo of sks-cat", 2), ("a sks-cat on the beach", 0)]
    assert records[0]["artifacts"] == ["sks-cat"] and records[0]["steps"] == 2
    with Image.open(out / pngs[0]) as im:
        assert "Seed: 0" in im.text["parameters"] and json.loads(im.text["personalize"])["prompt"] == "a photo of sks-cat"
    with Image.open(out / "grid.png") as grid, Image.open(out / pngs[5]) as last:
        # a line of seeds on top, a line with its prompt above each row (14 px each), cells of 16 px
        assert grid.size == (3 * 16, 14 + 2 * (14 + 16))
        label = np.asarray(grid.convert("L"))[:14]
        assert label.min() < 128 and label.max() == 255  # dark text on white
        assert np.array_equal(np.asarray(grid)[14 + 30 + 14:, 32:], np.asarray(last.convert("RGB")))
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("0*.png")}
    capsys.readouterr()
    assert _gen(tiny_sd1, out, "--prompts", str(prompts), "--seeds", "0-2", "--artifact", str(emb)) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("0*.png")} == mtimes  # resumed: nothing regenerated
    assert f"6 images in {out} (grid.png, results.jsonl): 0 new, 6 already there with these settings" \
        in capsys.readouterr().out
    assert _gen(tiny_sd1, out, "--prompts", str(prompts), "--seeds", "0-3", "--artifact", str(emb)) == 0
    assert len(list(out.glob("0*.png"))) == 8 and {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_changed_settings_regenerate(tiny_sd1, tmp_path):
    out = tmp_path / "out"
    assert _gen(tiny_sd1, out, "--prompt", "a dog") == 0
    first = (out / "0000-a_dog-s0.png").stat().st_mtime_ns
    assert main(["generate", "--base", str(tiny_sd1), "--out", str(out), "--steps", "3", "--no-progress",
                 "--prompt", "a dog"]) == 0
    assert (out / "0000-a_dog-s0.png").stat().st_mtime_ns != first


def _bad_inputs(tmp_path: Path) -> dict:
    tmp_path.mkdir(exist_ok=True)
    notst = tmp_path / "notes.safetensors"
    notst.write_text("not tensors at all")
    pickle = tmp_path / "emb.pt"
    torch.save({"emb_params": torch.ones(1, 32)}, str(pickle))
    wide = save_embedding(tmp_path / "w", "wide", torch.ones(1, 768), "textual_inversion", "sd15")
    unknown = tmp_path / "u.safetensors"
    save_file({"t": torch.ones(1, 32)}, str(unknown), metadata={"method": "nope", "format_version": "1", "tokens": '["t"]'})
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    return {
        "missing file": (["--artifact", str(tmp_path / "missing.safetensors")], "not found"),
        "not safetensors": (["--artifact", str(notst)], "not a safetensors file"),
        "pickle": (["--artifact", str(pickle)], "personalize convert"),
        "wrong width": (["--artifact", str(wide)], "width 768.*width 32"),
        "unknown method": (["--artifact", str(unknown)], "unknown method 'nope'"),
        "empty prompt file": (["--prompts", str(empty)], "is empty"),
        "bad seeds": (["--seeds", "a-b"], "--seeds"),
        "{} without artifact": (["--prompt", "a {} dog"], "exactly one embedding artifact"),
        "bad dtype": (["--dtype", "float8"], "dtype 'float8' is not supported"),
        "missing GPU": (["--device", "cuda"], "sees no CUDA GPU"),
        "bad scheduler": (["--scheduler", "heun2"], "scheduler 'heun2' is not known"),
        "no safety checker": (["--safety-checker"], "has none"),
        "suppress word not in a prompt": (["--prompt", "a dog", "--prompt", "a cat", "--suppress", "dog"],
                                          "'dog': it is not a word or span of the prompt 'a cat'"),
        "suppress option without words": (["--suppress-alpha", "2"], "need --suppress"),
        "unknown suppress option": (["--suppress", "dog", "--suppress-option", "alhpa=1"], "unknown suppress option"),
        "suppress option format": (["--suppress", "dog", "--suppress-option", "alpha"], "expected KEY=VALUE"),
        "suppress option value": (["--suppress", "dog", "--suppress-option", "alpha=[1"], "alpha: value '\\[1' is not"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(Path("/tmp/unused")).keys()))
def test_bad_input_clear_error_nothing_written(tiny_sd1, tmp_path, capsys, case):
    if case == "missing GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    args, message = _bad_inputs(tmp_path / "in")[case]
    if "--prompt" not in args and "--prompts" not in args:
        args = args + ["--prompt", "a dog"]
    out = tmp_path / "out"
    assert _gen(tiny_sd1, out, *args) == 2
    import re

    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("personalize generate: error:") and re.search(message, err), err
    assert not out.exists()


def test_unknown_config_key_exit_code(tmp_path, capsys):
    assert main(["config", "--train.learning_rat=1e-5"]) == 2
    assert "unknown config key 'train.learning_rat'" in capsys.readouterr().err
    bad = tmp_path / "c.yaml"
    bad.write_text("model: {pretrained: x, precision: fp16}\n")
    assert main(["config", "--config", str(bad)]) == 2
    assert "unknown config key 'model.precision'" in capsys.readouterr().err
    assert main(["config", "--train.seed=4"]) == 0
    assert "seed: 4" in capsys.readouterr().out


def test_convert_cli(tmp_path, capsys):
    torch.save({"string_to_param": {"*": torch.ones(1, 8)}, "name": "style"}, str(tmp_path / "s.pt"))
    assert main(["convert", str(tmp_path / "s.pt")]) == 0
    assert (tmp_path / "style.safetensors").exists()
    assert main(["convert", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    """The installed entry point exits non-zero with one clear line."""
    proc = subprocess.run([sys.executable, "-m", "personalize.cli", "generate", "--prompt", "x", "--out",
                           str(tmp_path / "o"), "--base", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and "model.pretrained" in proc.stderr and not (tmp_path / "o").exists()


def test_multi_process_split(tiny_sd1, tmp_path):
    """Two CPU processes under accelerate launch split the jobs; rank 0 writes the grid and results."""
    out = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu",
           "-m", "personalize.cli", "generate", "--base", str(tiny_sd1), "--prompt", "a dog", "--prompt", "a cat",
           "--seeds", "0-1", "--steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generate[0]" in proc.stderr and "generate[1]" in proc.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["seed"]) for r in records] == [("a dog", 0), ("a dog", 1), ("a cat", 0), ("a cat", 1)]
    assert (out / "grid.png").exists()


def test_two_rank_zero_processes_are_refused(monkeypatch):
    from personalize.dist import check_world, process_state
    from personalize.errors import PersonalizeError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PersonalizeError, match="every process would act as rank 0"):
        check_world(1)
    check_world(2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert process_state().num_processes == 1
