"""SDXL bases (issue 40): a tiny SDXL folder loads as the stock `StableDiffusionXLPipeline` and generates the
same images through the API and the CLI; the family comes from the model itself; an SDXL refiner is refused."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from personalize.cli import main
from personalize.components import ComponentsError, load_components
from personalize.pipeline import load_pipeline


def stock(folder, prompt, seed, steps, guidance, negative=None):
    from diffusers import StableDiffusionXLPipeline

    plain = StableDiffusionXLPipeline.from_pretrained(str(folder), local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    gen = torch.Generator("cpu").manual_seed(seed)
    return np.asarray(plain(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                            generator=gen).images[0], dtype=np.float32)


def test_components_and_profile_are_sdxl(tiny_sdxl):
    comps = load_components(str(tiny_sdxl))
    assert comps.profile.name == "sdxl" and comps.profile.family == "sdxl"
    assert comps.text_encoder_2 is not None and comps.tokenizer_2.pad_token == "!"
    assert comps.tokenizer.pad_token == "<|endoftext|>"
    assert comps.pipeline_config == {"force_zeros_for_empty_prompt": True}
    assert type(comps.pipeline()).__name__ == "StableDiffusionXLPipeline"


def test_generate_equals_the_stock_sdxl_pipeline(tiny_sdxl):
    pipe = load_pipeline(str(tiny_sdxl), device="cpu")
    assert type(pipe.sd).__name__ == "StableDiffusionXLPipeline" and pipe.profile.name == "sdxl"
    out = pipe.generate("a red circle on a blue background", seed=3, steps=4, negative_prompt="blurry")[0]
    assert out.settings["guidance_scale"] == 5.0  # SDXL's default, not SD's 7.5
    assert out.image.size == (16, 16)  # the UNet's sample size x the VAE factor (1024 px on the real model)
    ours = np.asarray(out.image, dtype=np.float32)
    theirs = stock(tiny_sdxl, "a red circle on a blue background", 3, 4, 5.0, "blurry")
    assert ours.std() > 1.0  # not a blank image
    assert np.abs(ours - theirs).mean() <= 1.0  # issue 40's bar: mean abs diff <= 1/255


def test_cli_generate_on_sdxl_equals_stock(tiny_sdxl, tmp_path):
    out = tmp_path / "out"
    assert main(["generate", "--base", str(tiny_sdxl), "--prompt", "a green square", "--seeds", "5",
                 "--steps", "3", "--guidance-scale", "6", "--out", str(out), "--no-progress"]) == 0
    (png,) = sorted(out.glob("0000-*.png"))
    ours = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    assert np.abs(ours - stock(tiny_sdxl, "a green square", 5, 3, 6.0)).mean() <= 1.0
    assert "CFG scale: 6.0" in Image.open(png).text["parameters"]


def test_scheduler_choice_on_sdxl(tiny_sdxl):
    pipe = load_pipeline(str(tiny_sdxl), device="cpu", scheduler="ddim")
    assert type(pipe.sd.scheduler).__name__ == "DDIMScheduler"
    a = pipe.generate("a circle", seed=0, steps=2)[0]
    b = pipe.generate("a circle", seed=0, steps=2)[0]
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


@pytest.mark.parametrize("index", [
    {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None],
     "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]},
    {"_class_name": "StableDiffusionXLPipeline", "text_encoder": [None, None]},
])
def test_an_sdxl_refiner_is_refused_naming_it(tmp_path, index):
    (tmp_path / "model_index.json").write_text(json.dumps({"_diffusers_version": "0.42.1", **index}))
    with pytest.raises(ComponentsError, match="refiner"):
        load_components(str(tmp_path))


def test_sdxl_safety_checker_is_refused(tiny_sdxl):
    with pytest.raises(ComponentsError, match="safety checker"):
        load_components(str(tiny_sdxl), safety_checker=True)


def test_an_sd_artifact_on_an_sdxl_base_is_refused_before_it_loads(tiny_sdxl, tiny_sd1, tmp_path, monkeypatch):
    from personalize import pipeline
    from personalize.artifacts import ArtifactError, save_embedding

    emb = save_embedding(tmp_path, "sks", torch.zeros(1, 32), "textual_inversion", str(tiny_sd1))
    loaded = []
    monkeypatch.setattr(pipeline, "load_components", lambda *a, **k: loaded.append(1))
    with pytest.raises(ArtifactError, match=r"SD 1\.x/2\.x models, but the base .* is SDXL"):
        load_pipeline(str(tiny_sdxl), artifacts=[emb], device="cpu")
    assert not loaded
    assert main(["generate", "--base", str(tiny_sdxl), "--artifact", str(emb), "--prompt", "a {}",
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert not (tmp_path / "o").exists()


def test_a_kohya_sdxl_lora_is_refused_on_an_sd_base(pipe_sd1, tmp_path):
    from safetensors.torch import save_file

    from personalize.artifacts import ArtifactError

    path = tmp_path / "xl_lora.safetensors"
    save_file({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(16, 4),
               "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 64)}, str(path))
    with pytest.raises(ArtifactError, match=r"made for SDXL models, but the base .* is SD 1\.x/2\.x"):
        pipe_sd1.add_artifact(path)
    assert pipe_sd1.artifacts == []


def test_an_sd_only_method_is_refused_on_sdxl_before_the_model_loads(tiny_sdxl, tmp_path, monkeypatch):
    from helpers import train_config, write_concept_images

    from personalize import components
    from personalize.methods import MethodError
    from personalize.trainer import train

    data = write_concept_images(tmp_path / "data")
    monkeypatch.setattr(components, "components_from_config", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(MethodError, match="does not run on SDXL bases; it supports SD 1.x/2.x"):
        train(train_config(tiny_sdxl, data, tmp_path / "out", "dreambooth"))
    assert not (tmp_path / "out").exists()


def test_an_sd_only_edit_is_refused_on_sdxl(tiny_sdxl):
    from personalize.methods import MethodError

    pipe = load_pipeline(str(tiny_sdxl), device="cpu")
    with pytest.raises(MethodError, match="generation edit 'suppress_eot' does not run on SDXL"):
        pipe.generate("a man wearing glasses", seed=0, steps=2, edits={"suppress_eot": {"words": ["glasses"]}})
