"""Smoke runs of the toy world's training scripts (CI never retrains the shipped model)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_toyworld_training_script_runs_resumes_and_ships(tmp_path):
    work, ship = tmp_path / "work", tmp_path / "ship"
    base = [sys.executable, str(ROOT / "training" / "toyworld.py"), "--work", str(work), "--ship", str(ship),
            "--n-images", "200", "--vae-steps", "3", "--batch", "8", "--save-every", "2", "--threads", "1"]
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
    judge = subprocess.run([sys.executable, str(ROOT / "training" / "toyworld_judge.py"), "--vae",
                            str(work / "vae.safetensors"), "--out", str(judge_out), "--n-train", "256",
                            "--n-test", "64", "--epochs", "1", "--threads", "1"],
                           capture_output=True, text=True, timeout=600)
    assert judge.returncode == 0, judge.stderr[-2000:]
    from personalize.toyworld.judge import Judge

    preds = Judge.load(judge_out).predict([pipe("a red circle", num_inference_steps=2).images[0]])
    assert preds[0]["kind"] in ("object", "pair", "face")
