"""Smoke runs of the toy world's training scripts (CI never retrains the shipped model)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "training" / "toyworld"


def test_toyworld_training_script_runs_resumes_and_ships(tmp_path):
    work, ship = tmp_path / "work", tmp_path / "ship"
    base = [sys.executable, str(SCRIPTS / "model.py"), "--work", str(work), "--ship", str(ship),
            "--n-images", "200", "--vae-steps", "3", "--batch", "8", "--save-every", "2", "--threads", "1",
            "--oversample", "4"]  # weighted sampling across a resume
    first = subprocess.run(base + ["--unet-steps", "2"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(base + ["--unet-steps", "4"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming UNet training at step 2" in again.stdout
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(ship), local_files_only=True)
    assert pipe.unet.config.in_channels == 8 and pipe.vae.config.scaling_factor != 0.18215
    assert (ship / "tokenizer" / "vocab.json").is_file() and not (ship / "tokenizer" / "tokenizer.json").exists()

    judge_out = tmp_path / "judge"
    judge = subprocess.run([sys.executable, str(SCRIPTS / "judge.py"), "--vae",
                            str(work / "vae.safetensors"), "--out", str(judge_out), "--n-train", "256",
                            "--n-test", "64", "--epochs", "1", "--threads", "1"],
                           capture_output=True, text=True, timeout=600)
    assert judge.returncode == 0, judge.stderr[-2000:]
    from personalize.toyworld.judge import Judge

    preds = Judge.load(judge_out).predict([pipe("a red circle", num_inference_steps=2).images[0]])
    assert preds[0]["kind"] in ("object", "pair", "face")
    judge_b = subprocess.run([sys.executable, str(SCRIPTS / "judge.py"), "--arch", "judge_b",
                              "--vae", str(ship / "vae"), "--out", str(tmp_path / "judge_b"), "--n-train", "256",
                              "--n-test", "64", "--epochs", "1", "--threads", "1"],
                             capture_output=True, text=True, timeout=600)
    assert judge_b.returncode == 0, judge_b.stderr[-2000:]
    assert Judge.load(tmp_path / "judge_b").architecture == "judge_b"


def test_finetune_stage_keeps_the_vae_and_continues_the_shipped_model(tmp_path):
    """toy world 1.1's stage: `--finetune-from` a shipped folder keeps its VAE and latent scaling, starts the
    UNet and text encoder from it (0 steps: the shipped weights come back exactly)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from personalize.profiles import toy_model_dir

    ship = tmp_path / "ship"
    run = subprocess.run([sys.executable, str(SCRIPTS / "model.py"), "--finetune-from", str(toy_model_dir()),
                          "--work", str(tmp_path / "work"), "--ship", str(ship), "--n-images", "64",
                          "--unet-steps", "0", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "fine-tuning from" in run.stdout
    new, old = (StableDiffusionPipeline.from_pretrained(str(p), local_files_only=True) for p in (ship, toy_model_dir()))
    assert new.vae.config.scaling_factor == old.vae.config.scaling_factor
    import json

    assert json.loads((ship / "vae" / "config.json").read_text()) == json.loads(
        (toy_model_dir() / "vae" / "config.json").read_text())  # the same config, no path recorded
    for a, b in ((new.unet, old.unet), (new.text_encoder, old.text_encoder), (new.vae, old.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
