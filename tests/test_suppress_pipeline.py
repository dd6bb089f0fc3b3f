"""generate(edits=edits(suppress=...)) and `personalize generate --suppress` on a tiny SD1 model: what reaches the UNet."""

import json

import pytest
import torch
from PIL import Image

from helpers import pixels, same_state, state
from personalize import edits
from personalize.artifacts import save_embedding
from personalize.cli import main
from personalize.methods.suppression.suppress_eot import SuppressError


def _contexts(pipe):
    """Record the encoder_hidden_states of every UNet call (CFG batch = [uncond, cond])."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    return seen, pipe.sd.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_alpha_zero_is_plain_generation(pipe_sd1):
    plain = pipe_sd1.generate("a man wearing glasses", seed=[3, 4], steps=4)
    same = pipe_sd1.generate("a man wearing glasses", seed=[3, 4], steps=4, edits=edits(suppress=["glasses"],
                             suppress_options={"alpha": 0.0, "retain_fraction": 0.0}))
    assert all(abs(pixels(a).astype(int) - pixels(b)).max() <= 1 for a, b in zip(plain, same))


def test_schedule_and_unconditional_rows(pipe_sd1):
    sd = pipe_sd1.sd
    cond, uncond = sd.encode_prompt("a man wearing glasses", "cpu", 1, True)
    seen, handle = _contexts(pipe_sd1)
    try:
        pipe_sd1.generate("a man wearing glasses", seed=0, steps=5, edits=edits(suppress="glasses"))  # retain 0.2 -> step 1 on
    finally:
        handle.remove()
    assert len(seen) == 5 and all(torch.equal(c[0], uncond[0]) for c in seen)  # the unconditional row, every step
    assert torch.equal(seen[0][1], cond[0])  # step 0: the prompt as written
    n = len(sd.tokenizer("a man wearing glasses").input_ids)  # 6: SOT a man wearing glasses EOT
    for c in seen[1:]:
        assert torch.equal(c[1][: n - 2], cond[0][: n - 2])  # SOT and the kept words bitwise
        assert not torch.allclose(c[1][n - 2:], cond[0][n - 2:])  # 'glasses' and the [EOT] block changed


def test_ito_only_changes_the_embedding(pipe_sd1):
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet0, te0 = state(pipe_sd1.sd.unet), state(pipe_sd1.sd.text_encoder)
    kwargs = {"seed": 0, "steps": 5}
    swr = pipe_sd1.generate("a man wearing glasses", edits=edits(suppress=["glasses"]), **kwargs)[0]
    ito = pipe_sd1.generate("a man wearing glasses", edits=edits(suppress=["glasses"], suppress_mode="swr+ito",
                            suppress_options={"ito_iters": 2, "ito_step_size": 1000.0}), **kwargs)[0]
    assert not (pixels(swr) == pixels(ito)).all()  # ITO ran (step 1, the one step in [1, 2))
    assert same_state(state(pipe_sd1.sd.unet), unet0) and same_state(state(pipe_sd1.sd.text_encoder), te0)
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe_sd1.sd.unet.attn_processors.values())
    assert all(p.grad is None for p in pipe_sd1.sd.unet.parameters())
    assert ito.settings["suppress"]["ito_iters"] == 2 and swr.settings["suppress"]["ito_iters"] == 0


def test_with_a_multi_vector_trigger(pipe_sd1, tmp_path):
    pipe_sd1.add_artifact(save_embedding(tmp_path, "sks-cat", torch.randn(2, 32), "textual_inversion", "tiny"))
    sd = pipe_sd1.sd
    prompt = "a sks-cat wearing a hat"  # expanded: SOT a sks-cat sks-cat_1 wearing a hat EOT, 'hat' at 6
    cond, _ = sd.encode_prompt(prompt, "cpu", 1, True)
    seen, handle = _contexts(pipe_sd1)
    try:
        pipe_sd1.generate(prompt, seed=0, steps=2, edits=edits(suppress="hat", suppress_options={"retain_fraction": 0.0}))
    finally:
        handle.remove()
    assert torch.equal(seen[0][1][:6], cond[0][:6]) and not torch.allclose(seen[0][1][6], cond[0][6])


def test_sd2_shaped_model_runs(tiny_sd2):
    """SD2 tokenizers pad with '!': the official [EOT] rule (positions n-1..76) is kept; the mechanics run."""
    from personalize.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_sd2), device="cpu")
    plain = pipe.generate("a man wearing glasses", seed=0, steps=5)[0]
    swr = pipe.generate("a man wearing glasses", seed=0, steps=5, edits=edits(suppress="glasses", suppress_mode="swr+ito",
                        suppress_options={"ito_iters": 1}))[0]
    assert not (pixels(plain) == pixels(swr)).all()


def test_bad_suppress_arguments(pipe_sd1):
    with pytest.raises(SuppressError, match="'cat': it is not a word or span of the prompt 'a dog'"):
        pipe_sd1.generate("a dog", steps=2, edits=edits(suppress="cat"))
    with pytest.raises(SuppressError, match="suppress_mode"):
        pipe_sd1.generate("a dog", steps=2, edits=edits(suppress="dog", suppress_mode="ito"))
    with pytest.raises(Exception, match="callback_on_step_end"):
        pipe_sd1.generate("a dog", steps=2, edits=edits(suppress="dog"), callback_on_step_end=lambda *a: a[-1])


def test_cli_suppress_writes_its_settings_and_reruns_when_they_change(tiny_sd1, tmp_path):
    out = tmp_path / "out"
    args = ["generate", "--base", str(tiny_sd1), "--out", str(out), "--steps", "3", "--no-progress",
            "--prompt", "a man wearing a hat", "--suppress", "a hat"]
    assert main(args) == 0
    png = out / "0000-a_man_wearing_a_hat-s0.png"
    with Image.open(png) as im:
        settings = json.loads(im.text["personalize"])
        assert "Suppress: a hat (alpha 1.0, ITO 0)" in im.text["parameters"]
    assert settings["suppress"]["words"] == ["a hat"] and settings["suppress"]["alpha"] == 1.0
    first = png.stat().st_mtime_ns
    assert main(args) == 0 and png.stat().st_mtime_ns == first  # same settings: resumed
    assert main(args + ["--suppress-alpha", "0.5"]) == 0 and png.stat().st_mtime_ns != first
    assert main(args + ["--suppress-mode", "swr+ito", "--suppress-option", "ito_iters=1"]) == 0
    with Image.open(png) as im:
        assert json.loads(im.text["personalize"])["suppress"]["ito_iters"] == 1
