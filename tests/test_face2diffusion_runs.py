"""The Face2Diffusion measurement tooling: the sweep's choice rule, an encoder assembled from a checkpoint, the
id_noise option and the per-attribute probes (training/toyworld/f2d.py, training/toyworld/f2d_effect.py,
personalize/eval/face_effect.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "training" / "toyworld" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_rates(out: Path, variant: str, rows: dict) -> None:
    (out / f"sweep2-{variant}").mkdir(parents=True)
    (out / f"sweep2-{variant}" / "rates.json").write_text(json.dumps(rows))


def rate(identity: float, asks: float) -> dict:
    return {"identity": identity, "other_asks": asks, "in_context": 0.0}


def test_choice_is_the_best_identity_among_candidates_that_follow_the_asks(tmp_path):
    effect = script("f2d_effect")
    a = SimpleNamespace(steps2=3000)
    write_rates(tmp_path, "base", {"checkpoint-1000": rate(0.30, 0.90), "final": rate(0.40, 0.70)})
    write_rates(tmp_path, "noise", {"checkpoint-2000": rate(0.30, 0.95), "final": rate(0.35, 0.85)})
    write_rates(tmp_path, "no_eg", {"final": rate(0.90, 0.99)})  # an ablation: never a candidate
    c = effect.choose(tmp_path, a)
    assert (c["variant"], c["steps"], c["identity"]) == ("noise", 3000, 0.35)  # base's 0.40 follows asks in 0.70
    write_rates(tmp_path, "short", {"checkpoint-1000": rate(0.35, 0.85)})
    c = effect.choose(tmp_path, a)
    assert (c["variant"], c["steps"]) == ("short", 1000)  # a tie goes to the fewer steps
    assert c["stage1"] == "s1short" and c["set2"] == []


def test_no_sweep_rates_means_no_choice(tmp_path):
    assert script("f2d_effect").choose(tmp_path, SimpleNamespace(steps2=3000)) is None


def test_encoder_from_a_checkpoint_equals_the_run_stopped_there(tmp_path):
    """A 4-step stage-2 run on the shipped stage-1 file with a checkpoint at 2, against a 2-step run."""
    from safetensors.torch import load_file

    msid = ROOT / "assets" / "toyworld_f2d" / "f2d_msid.safetensors"
    base = [sys.executable, str(ROOT / "training" / "toyworld" / "f2d.py"), "--msid", str(msid), "--seed", "3",
            "--set", "train.train_batch_size=2", "--set", "method.middle_dim=16"]

    def run(*args):
        subprocess.run(base + list(args), check=True, capture_output=True, cwd=ROOT)

    run("--out", str(tmp_path / "long"), "--work", str(tmp_path / "wl"), "--set", "train.max_train_steps=4",
        "--set", "train.checkpointing_steps=2")
    run("--out", str(tmp_path / "short"), "--work", str(tmp_path / "ws"), "--set", "train.max_train_steps=2")
    run("--out", str(tmp_path / "built"), "--from-checkpoint", str(tmp_path / "wl" / "map" / "checkpoint-2"))
    short = load_file(str(tmp_path / "short" / "face2diffusion.safetensors"))
    built = load_file(str(tmp_path / "built" / "face2diffusion.safetensors"))
    long = load_file(str(tmp_path / "long" / "face2diffusion.safetensors"))
    assert short.keys() == built.keys()
    assert all((short[k] == built[k]).all() for k in short)
    assert any((long[k] != built[k]).any() for k in long if k.startswith("mapping."))  # steps 3-4 moved it


def test_negative_id_noise_is_refused():
    from personalize.config import load_config
    from personalize.methods import build_method
    from personalize.methods.base import MethodError

    cfg = load_config([str(ROOT / "configs" / "toyworld" / "face2diffusion.yaml")], {"method": {"id_noise": -0.1}})
    with pytest.raises(MethodError, match="id_noise=-0.1"):
        build_method(cfg)


def test_attribute_probes_share_the_identity_prompt():
    from personalize.eval import face_effect
    from personalize.toyworld import world as w

    p = face_effect.probes(27)
    parts = w.identity_parts(27)
    for head in ("face_shape", "skin", "hair_color", "hair_style"):
        assert p[head] == [(p["identity"][0][0], {"kind": "face", head: parts[head]})]
        assert face_effect.IMAGES[head] == face_effect.IMAGES["identity"]  # so they read the same images
    dreambooth = face_effect.probes(27, subject="sks person")
    assert dreambooth["identity"][0][0] == "a portrait of sks person"
    assert dreambooth["other_asks"][2][0] == "a portrait of sks person wearing a hat"
