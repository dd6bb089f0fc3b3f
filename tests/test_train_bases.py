"""Per-base training: only the parameters that should change change, and the artifact reloads and matters."""

import re

import numpy as np
import pytest
import torch
from helpers import pixels, train_config

from personalize.artifacts import load_artifact
from personalize.components import load_components
from personalize.pipeline import load_pipeline
from personalize.trainer import train

PROMPT = "a photo of sks dog"


def _base_state(model):
    c = load_components(str(model))
    return {
        "unet": {k: v.clone() for k, v in c.unet.state_dict().items()},
        "text_encoder": {k: v.clone() for k, v in c.text_encoder.state_dict().items()},
        "vae": {k: v.clone() for k, v in c.vae.state_dict().items()},
    }


def _changed(before: dict, module, normalize=lambda k: k) -> set[str]:
    """Names of parameters of `module` that differ from `before` (keys normalised; the added LoRA and Custom
    Diffusion processor weights skipped: those are checked through the artifact)."""
    after = {normalize(k): v for k, v in module.state_dict().items() if "lora_" not in k and "processor." not in k}
    assert set(after) == set(before) or set(after) - set(before) <= {"embeddings.token_embedding.weight"}
    return {k for k, v in after.items() if v.shape != before[k].shape or not torch.equal(v.float(), before[k])}


def _run(tmp_path, tiny_sd1, concept_dir, method, opts=None, **train_opts):
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", method, opts, **train_opts)
    return train(cfg)


def test_textual_inversion_changes_only_its_rows(tmp_path, tiny_sd1, concept_dir):
    base = _base_state(tiny_sd1)
    result = _run(tmp_path, tiny_sd1, concept_dir, "textual_inversion", {"num_vectors": 2,
                                                                        "initializer_token": "dog"})
    c = result.method.c
    assert _changed(base["unet"], c.unet) == set() and _changed(base["vae"], c.vae) == set()
    table = c.text_encoder.get_input_embeddings().weight.detach()
    n_base = base["text_encoder"]["embeddings.token_embedding.weight"].shape[0]
    assert torch.equal(table[:n_base], base["text_encoder"]["embeddings.token_embedding.weight"])
    others = {k for k in _changed(base["text_encoder"], c.text_encoder) if "token_embedding" not in k}
    assert others == set()
    dog = base["text_encoder"]["embeddings.token_embedding.weight"][c.tokenizer.encode("dog", add_special_tokens=False)[0]]
    assert not torch.equal(table[n_base], dog) and not torch.equal(table[n_base + 1], dog)  # both rows learned
    art = load_artifact(result.artifact)
    assert result.artifact.name == "sks.safetensors" and list(art.embeddings) == ["sks"]
    assert art.embeddings["sks"].shape == (2, 32) and not art.weights and art.kind == "none"


def test_custom_diffusion_changes_only_cross_attention_kv(tmp_path, tiny_sd1, concept_dir):
    base = _base_state(tiny_sd1)
    result = _run(tmp_path, tiny_sd1, concept_dir, "custom_diffusion")
    c = result.method.c
    assert _changed(base["unet"], c.unet) == set()  # the UNet's own weights: untouched, K/V live in processors
    art = load_artifact(result.artifact)
    n_cross = sum(1 for name, _ in c.unet.named_modules() if name.endswith(".attn2"))
    assert art.kind == "delta"
    assert n_cross == 4 and len(art.weights) == 2 * n_cross  # tiny UNet: down 1, mid 1, up 2
    assert all(re.fullmatch(r"unet\..*\.attn2\.to_[kv]\.weight", k) for k in art.weights)
    changed = [k for k, v in art.weights.items() if not torch.equal(v, base["unet"][k[5:]])]
    assert len(changed) == len(art.weights)  # every K/V moved
    assert list(art.embeddings) == ["sks"]
    types = {type(p).__name__ for n, p in c.unet.attn_processors.items() if n.endswith("attn2.processor")}
    assert types == {"CustomDiffusionAttnProcessor2_0"}


def test_custom_diffusion_crossattn_also_trains_q_and_out(tmp_path, tiny_sd1, concept_dir):
    result = _run(tmp_path, tiny_sd1, concept_dir, "custom_diffusion", {"freeze_model": "crossattn"})
    art = load_artifact(result.artifact)
    assert art.kind == "delta"
    names = {k.split("attn2.")[1] for k in art.weights}
    assert names == {"to_k.weight", "to_v.weight", "to_q.weight", "to_out.0.weight", "to_out.0.bias"}


def test_lora_changes_only_adapters(tmp_path, tiny_sd1, concept_dir):
    base = _base_state(tiny_sd1)
    result = _run(tmp_path, tiny_sd1, concept_dir, "lora", {"rank": 2, "alpha": 4})
    c = result.method.c
    unlora = lambda k: k.replace(".base_layer", "")  # noqa: E731  peft renames the wrapped weights
    assert _changed(base["unet"], c.unet, unlora) == set()
    assert _changed(base["text_encoder"], c.text_encoder) == set()
    art = load_artifact(result.artifact)
    assert art.kind == "lora" and art.weights and not art.embeddings
    # kohya's layout: lora_unet_<diffusers path, '.' -> '_'>.lora_down.weight / .lora_up.weight / .alpha
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
               for k in art.weights)
    assert {float(v) for k, v in art.weights.items() if k.endswith(".alpha")} == {4.0}  # alpha, not alpha / rank
    ups = [v for k, v in art.weights.items() if ".lora_up." in k]
    assert any(v.abs().sum() > 0 for v in ups)  # B starts at zero and has learned


def test_dreambooth_changes_unet_not_text_encoder(tmp_path, tiny_sd1, concept_dir):
    base = _base_state(tiny_sd1)
    result = _run(tmp_path, tiny_sd1, concept_dir, "dreambooth")
    c = result.method.c
    assert len(_changed(base["unet"], c.unet)) > 0.5 * len(base["unet"])
    assert _changed(base["text_encoder"], c.text_encoder) == set()
    art = load_artifact(result.artifact)
    assert art.kind == "delta"
    assert set(art.weights) == {f"unet.{k}" for k, _ in c.unet.named_parameters()}


def test_dreambooth_text_encoder_keeps_token_table(tmp_path, tiny_sd1, concept_dir):
    base = _base_state(tiny_sd1)
    result = _run(tmp_path, tiny_sd1, concept_dir, "dreambooth", {"train_text_encoder": True})
    changed = _changed(base["text_encoder"], result.method.c.text_encoder)
    assert changed and "embeddings.token_embedding.weight" not in changed
    art = load_artifact(result.artifact)
    assert art.kind == "delta"
    assert any(k.startswith("text_encoder.") for k in art.weights)
    assert "text_encoder.text_model.embeddings.token_embedding.weight" not in art.weights
    assert not any("token_embedding" in k for k in art.weights)


# Reload, apply, change the output and undo exactly: every registry entry's row in tests/test_methods.py.


@pytest.mark.parametrize("method", ["textual_inversion", "lora"])
def test_trained_files_load_in_stock_diffusers_the_same(tmp_path, tiny_sd1, concept_dir, method):
    """diffusers' own loaders (load_textual_inversion / load_lora_weights) give the images our pipeline gives."""
    from diffusers import StableDiffusionPipeline

    result = _run(tmp_path, tiny_sd1, concept_dir, method, learning_rate=5e-2)
    ours = load_pipeline(str(tiny_sd1), artifacts=[str(result.artifact)], device="cpu")
    expected = pixels(ours.generate(PROMPT, seed=0, steps=3, guidance_scale=7.5)[0])
    stock = StableDiffusionPipeline.from_pretrained(str(tiny_sd1), local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)
    if method == "lora":
        stock.load_lora_weights(str(result.artifact))
    else:
        stock.load_textual_inversion(str(result.artifact))
    stock.set_progress_bar_config(disable=True)
    image = stock(PROMPT, num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.abs(np.asarray(image, dtype=np.int16) - expected).max() <= 1
