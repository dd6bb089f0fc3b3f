"""`personalize export --format lora|embedding`: kohya's naming rules, the SVD by hand, and round trips through
stock diffusers `load_lora_weights` on a tiny model whose parameter names equal SD-1.5's.

The naming rule (kohya sd-scripts `networks/lora.py`, https://github.com/kohya-ss/sd-scripts; A1111's
`extensions-builtin/Lora/networks.py` and ComfyUI's `comfy/lora.py` read the same names): a module's key is
`lora_unet_` + its diffusers path with '.' -> '_' (UNet), `lora_te_` + its transformers CLIPTextModel path
(`text_model.encoder.layers.N...`) with '.' -> '_' (text encoder); then `.lora_down.weight` (r, in[, k, k]),
`.lora_up.weight` (out, r[, 1, 1]) and `.alpha`; the change is up @ down * alpha / r. kohya makes modules only for
the Linear/Conv2d layers of Transformer2DModel, ResnetBlock2D, Downsample2D, Upsample2D, CLIPAttention, CLIPMLP.
"""

import math
import re

import pytest
import torch
from safetensors.torch import load_file

from personalize import kohya
from personalize.artifacts import load_artifact, make_metadata
from personalize.cli import main

KEY_RE = re.compile(r"^lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")


# ------------------------------------------------------------------------------------------- naming, by hand


@pytest.mark.parametrize("key, name", [
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
     "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"),
    ("unet.up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0",
     "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0"),
    ("unet.mid_block.attentions.0.proj_in", "lora_unet_mid_block_attentions_0_proj_in"),
    ("unet.down_blocks.1.resnets.0.conv_shortcut", "lora_unet_down_blocks_1_resnets_0_conv_shortcut"),
    ("unet.up_blocks.0.upsamplers.0.conv", "lora_unet_up_blocks_0_upsamplers_0_conv"),
    ("unet.down_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj",
     "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_ff_net_0_proj"),
    ("text_encoder.encoder.layers.11.mlp.fc2", "lora_te_text_model_encoder_layers_11_mlp_fc2"),
    ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj", "lora_te_text_model_encoder_layers_0_self_attn_q_proj"),
    ("unet.conv_in", None), ("unet.time_embedding.linear_1", None), ("unet.down_blocks.0.resnets.0.norm1", None),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.norm1", None), ("text_encoder.final_layer_norm", None),
])
def test_kohya_names_by_hand(key, name):
    assert kohya.kohya_name(key) == name


def test_kohya_module_counts_on_sd15_shapes():
    """On SD-1.5's real module tree (built on the meta device) the rule gives the module counts kohya's trainer
    logs for SD 1.5: 'create LoRA for U-Net: 192 modules' (Transformer2DModel layers), 278 with conv_dim (LoCon:
    + 22 resnets x conv1/conv2/time_emb_proj, 14 conv_shortcut, 3 down- and 3 upsamplers), 'create LoRA for Text
    Encoder: 72 modules' (12 layers x q/k/v/out_proj, fc1, fc2)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "gpu"))
    import model

    with torch.device("meta"):
        unet, _, text_encoder = model.sd15_modules()
    layers = lambda part, m: [kohya.kohya_name(f"{part}.{n}") for n, x in m.named_modules()  # noqa: E731
                              if isinstance(x, (torch.nn.Linear, torch.nn.Conv2d))]
    unet_names, te_names = [n for n in layers("unet", unet) if n], [n for n in layers("text_encoder", text_encoder) if n]
    assert len(unet_names) == 278 and len(set(unet_names)) == 278
    assert sum("_attentions_" in n for n in unet_names) == 192
    assert len(te_names) == 72 and all(n.startswith("lora_te_text_model_encoder_layers_") for n in te_names)


def test_factor_by_hand():
    d = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    f, err = kohya.factor(d, 1)
    assert torch.allclose(f.up @ f.down, torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    assert err == pytest.approx(1 / math.sqrt(10))  # ||diag(0, 1)|| / ||diag(3, 1)||
    f, err = kohya.factor(d, 4)  # padded to the file's rank with zeros, exact
    assert f.down.shape == (4, 2) and f.up.shape == (2, 4) and err < 1e-12
    assert torch.equal(f.down[2:], torch.zeros(2, 2)) and torch.allclose(f.delta((2, 2)), d)
    conv = torch.einsum("o,ikl->oikl", torch.tensor([1.0, -2.0]), torch.arange(27.0).reshape(3, 3, 3))  # rank 1
    f, err = kohya.factor(conv, 1)
    assert f.down.shape == (1, 3, 3, 3) and f.up.shape == (2, 1, 1, 1) and err < 1e-12  # LoCon
    assert torch.allclose(f.delta(conv.shape), conv, atol=1e-5)


def test_state_dict_needs_one_rank_and_alpha_and_a_kohya_layer():
    from personalize.export.lora import uniform

    a = kohya.Factor(torch.ones(2, 4), torch.ones(3, 2), 0.5)
    b = kohya.Factor(torch.ones(1, 4), torch.ones(3, 1), 1.0)
    q, k = "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "unet.mid_block.attentions.0.proj_out"
    with pytest.raises(kohya.LoraFormatError, match="same rank and alpha"):
        kohya.state_dict({q: a, k: b})
    with pytest.raises(kohya.LoraFormatError, match="no module for this layer"):
        kohya.state_dict({"unet.conv_in": a})
    folded = uniform(b, 2)  # scale 1, rank 2: the same change
    assert folded.rank == 2 and folded.scale == 1.0 and torch.equal(folded.delta((3, 4)), b.delta((3, 4)))
    sd = kohya.state_dict({q: a})
    assert set(sd) == {f"{kohya.kohya_name(q)}.{s}" for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert float(sd[f"{kohya.kohya_name(q)}.alpha"]) == 1.0  # alpha = scale * r


# ------------------------------------------------------------------------------------------- round trips


@pytest.fixture(scope="module")
def named_sd1(tmp_path_factory, tokenizer_dir):
    from personalize.tiny import save_named_model

    return save_named_model(tmp_path_factory.mktemp("named_sd1"), tokenizer_dir, "sd1")


@pytest.fixture(scope="module")
def trained(named_sd1, tmp_path_factory):
    """Short runs of the bases and erasures on the SD-1.5-named model: name -> (artifact path, train result)."""
    from helpers import train_config, write_concept_images

    from personalize.trainer import train

    root = tmp_path_factory.mktemp("runs")
    data = write_concept_images(root / "data")
    runs = {"lora": ("lora", {"rank": 2, "alpha": 4}), "esd_x": ("esd", {"train_method": "xattn"}),
            "esd_u": ("esd", {"train_method": "noxattn"}), "dreambooth": ("dreambooth", {"train_text_encoder": True}),
            "custom_diffusion": ("custom_diffusion", {}), "textual_inversion": ("textual_inversion", {}),
            "classdiffusion": ("classdiffusion", {"class_word": "dog"})}  # on its default base, Custom Diffusion
    out = {}
    for name, (method, opts) in runs.items():
        if method == "esd":
            opts = opts | {"concepts": ["a photo of a dog"], "ddim_steps": 2}
        result = train(train_config(named_sd1, data, root / name, method, opts, max_train_steps=2))
        out[name] = (result.artifact, result)
    return out


def _stock(model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(model), local_files_only=True, safety_checker=None)


def _weights(sd) -> dict[str, torch.Tensor]:
    return ({f"unet.{k}": v.clone() for k, v in sd.unet.state_dict().items()}
            | {f"text_encoder.{k}": v.clone() for k, v in sd.text_encoder.state_dict().items()})


def _diffusers_applies(model, lora_file) -> dict[str, torch.Tensor]:
    """What stock diffusers does with the file: `load_lora_weights`, then each layer's change as the peft adapter
    it installed computes it (scaling * lora_B @ lora_A, in float64: a fused float32 weight would drown a small
    change in the weight's rounding). The base weights must not move."""
    from personalize.export.changes import adapters

    sd = _stock(model)
    before = _weights(sd)
    sd.load_lora_weights(str(lora_file))
    after = {k.replace(".base_layer", ""): v for k, v in _weights(sd).items() if "lora_" not in k}
    assert all(torch.equal(after[k], v) for k, v in before.items())
    return {f"{m}.weight": f.delta(before[f"{m}.weight"].shape) for m, f in adapters(sd).items()}


def _live_adapters(result) -> dict:
    """The adapters of a finished training run's own modules, as peft holds them (changes.adapters reads any object
    with `unet` and `text_encoder`)."""
    from types import SimpleNamespace

    from personalize.export.changes import adapters

    return adapters(SimpleNamespace(unet=result.method.c.unet, text_encoder=result.method.c.text_encoder))


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_lora_method_writes_kohya_layout_that_diffusers_applies(trained, named_sd1):
    """The `lora` method's own file: kohya keys, alpha as trained; diffusers applies the live adapters' change."""
    path, result = trained["lora"]
    tensors = load_file(path)
    assert tensors and all(KEY_RE.match(k) for k in tensors)
    assert len(tensors) == 128 * 3  # 16 transformer blocks x attn1/attn2 x to_q/k/v/out.0, down/up/alpha each
    live = _live_adapters(result)
    applied = _diffusers_applies(named_sd1, path)
    assert set(applied) == {f"{m}.weight" for m in live}
    for module, f in live.items():
        assert f.scale == 2.0 and _rel(applied[f"{module}.weight"], f.delta(applied[f"{module}.weight"].shape)) < 1e-5


def test_export_of_a_lora_is_exact(trained, tmp_path):
    path, _ = trained["lora"]
    out = tmp_path / "x.safetensors"
    assert main(["export", str(path), "--format", "lora", "--out", str(out)]) == 0
    assert load_file(out).keys() == load_file(path).keys()
    assert all(torch.equal(load_file(out)[k], v) for k, v in load_file(path).items())  # no SVD: the same factors


@pytest.mark.parametrize("name", ["esd_x", "esd_u", "dreambooth", "custom_diffusion", "classdiffusion"])
def test_full_rank_export_reproduces_the_artifact_in_diffusers(trained, named_sd1, tmp_path, name, capsys):
    """Every key is read by diffusers (its converter raises on a key it leaves), every module it applies equals
    the artifact's own change (erasure `diff`: the stored differences; `delta`: new values minus the base's)."""
    path, _ = trained[name]
    art, base = load_artifact(path), _weights(_stock(named_sd1))
    out = tmp_path / "lora.safetensors"
    assert main(["export", str(path), "--format", "lora", "--rank", "full", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    tensors = load_file(out)
    assert all(KEY_RE.match(k) for k in tensors)
    want = {k: v - base[k] if art.kind == "delta" else v for k, v in art.weights.items()}
    want = {k: v for k, v in want.items() if v.abs().max() > 0}
    applied = _diffusers_applies(named_sd1, out)
    modules = {k.split(".")[0] for k in tensors}
    assert len(applied) == len(modules)  # every module of the file changed a weight
    for key, got in applied.items():
        assert _rel(got, want[key]) < 1e-5, key
    held = {k for k in want if kohya.kohya_name(k.removesuffix(".weight")) and want[k].ndim in (2, 4)}
    assert set(applied) == held  # the rest is reported as left out
    if name == "esd_u":  # 1x1 and 3x3 convolutions, 4-D, and the layers no LoRA holds named
        assert any(v.ndim == 4 and v.shape[2:] == (3, 3) for v in tensors.values())
        assert any(k.endswith("proj_in.lora_down.weight") and v.ndim == 4 for k, v in tensors.items())
        assert "left out" in printed and "unet.conv_in.weight" in printed and "biases" in printed
    if name == "dreambooth":
        assert any(k.startswith("lora_te_") for k in tensors)


def test_custom_diffusion_token_file_goes_beside_the_lora(trained, named_sd1, tmp_path):
    path, _ = trained["custom_diffusion"]
    assert main(["export", str(path), "--format", "lora", "--out", str(tmp_path / "cd.safetensors")]) == 0
    token = tmp_path / "sks.safetensors"
    assert list(load_file(token)) == ["sks"] and torch.equal(load_file(token)["sks"], load_artifact(path).embeddings["sks"])
    sd = _stock(named_sd1)
    sd.load_textual_inversion(str(token))
    assert sd.tokenizer.convert_tokens_to_ids("sks") >= 49408


def test_embedding_export(trained, tmp_path):
    path, _ = trained["textual_inversion"]
    assert main(["export", str(path), "--format", "embedding", "--out", str(tmp_path / "emb")]) == 0
    (file,) = (tmp_path / "emb").iterdir()
    (trigger, vectors), = load_file(file).items()
    assert file.name == f"{trigger}.safetensors" and torch.equal(vectors, load_artifact(path).embeddings[trigger])


def test_export_lora_alias_and_the_reported_error(trained, tmp_path, capsys):
    path, _ = trained["esd_x"]
    assert main(["export-lora", str(path), "--rank", "1", "--out", str(tmp_path / "r1.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "rank 1" in printed and "attn2.to_k" in printed and "truncated SVD" in printed
    downs = [v for k, v in load_file(tmp_path / "r1.safetensors").items() if k.endswith("lora_down.weight")]
    assert downs and all(v.shape[0] == 1 for v in downs)


# ------------------------------------------------------------------------------------------- bad input


def _refused(args, tmp_path, capsys, match):
    before = sorted(tmp_path.rglob("*"))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(match, err), err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_bad_input_is_one_line_exit_2_nothing_written(trained, tiny_sd1, tmp_path, capsys):
    db, ti, esd = (str(trained[n][0]) for n in ("dreambooth", "textual_inversion", "esd_x"))
    out = str(tmp_path / "o.safetensors")
    _refused(["export", db, "--format", "ckpt", "--out", out], tmp_path, capsys, "expected one of lora, checkpoint")
    _refused(["export", db, "--format", "lora", "--base", str(tiny_sd1), "--out", out], tmp_path, capsys,
             "does not have|shape")  # an artifact for another base
    _refused(["export", esd, "--format", "lora", "--rank", "999", "--out", out], tmp_path, capsys, "at most 32")
    _refused(["export", esd, "--format", "lora", "--rank", "0", "--out", out], tmp_path, capsys, "positive integer")
    _refused(["export", ti, "--format", "lora", "--out", out], tmp_path, capsys, "only token embeddings")
    _refused(["export", esd, "--format", "embedding", "--out", str(tmp_path / "e")], tmp_path, capsys,
             "no token embedding")
    _refused(["export", db, esd, "--format", "lora", "--out", out], tmp_path, capsys, "takes one artifact")
    _refused(["export", db, "--out", out], tmp_path, capsys, "--format is required")
    _refused(["export", db, "--format", "lora", "--fp16", "--out", out], tmp_path, capsys, "--fp16 is for")


def test_face2diffusion_files_are_refused_with_why(tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "person.f2d.safetensors"
    save_file({"f l": torch.zeros(2, 8)}, str(path), make_metadata("face2diffusion", "toyworld", [], weights="f2d_identity"))
    _refused(["export", str(path), "--format", "embedding"], tmp_path, capsys, "cannot leave.*position embedding")


# ------------------------------------------------------------------------------------------- checkpoints


def _single_file(path, config):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                    safety_checker=None)


def test_checkpoint_loads_in_diffusers_with_every_tensor_ours(trained, named_sd1, tmp_path):
    """DreamBooth (UNet + text encoder) then an ESD-x erasure on top, as one original-layout file: diffusers'
    `from_single_file` gives exactly the pipeline `personalize generate` would use (every tensor equal)."""
    from personalize.pipeline import load_pipeline

    db, esd = str(trained["dreambooth"][0]), str(trained["esd_x"][0])
    out = tmp_path / "db.safetensors"
    assert main(["export", db, esd, "--format", "checkpoint", "--out", str(out)]) == 0
    assert any(k.startswith("model.diffusion_model.") for k in load_file(out))
    ours = load_pipeline(str(named_sd1), [db, esd], device="cpu").sd
    theirs = _single_file(out, named_sd1)
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(ours, part).state_dict(), getattr(theirs, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    base = _stock(named_sd1).unet.state_dict()
    changed = [k for k, v in theirs.unet.state_dict().items() if not torch.equal(v, base[k])]
    assert changed  # the artifacts' weights, not the base's


def test_checkpoint_of_a_lora_is_the_merged_model_and_tokens_go_beside(trained, named_sd1, tmp_path):
    path, result = trained["lora"]
    out = tmp_path / "lora-merged.safetensors"
    assert main(["export", str(path), "--format", "checkpoint", "--fp16", "--out", str(out)]) == 0
    assert {v.dtype for v in load_file(out).values()} == {torch.float16}
    theirs, base = _single_file(out, named_sd1).unet.state_dict(), _stock(named_sd1).unet.state_dict()
    live = _live_adapters(result)
    for module, f in live.items():
        key = f"{module.removeprefix('unet.')}.weight"
        want = (base[key].double() + f.delta(base[key].shape).double()).half()
        assert (theirs[key].double() - want.double()).abs().max() <= 1e-3 * base[key].abs().max()
    cd = trained["custom_diffusion"][0]
    assert main(["export", str(cd), "--format", "checkpoint", "--out", str(tmp_path / "cd.safetensors")]) == 0
    tensors = load_file(tmp_path / "cd.safetensors")
    assert tensors["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"].shape[0] == 49408
    assert list(load_file(tmp_path / "sks.safetensors")) == ["sks"]  # the modifier token, beside


def test_sd2_lora_and_checkpoint(tokenizer_dir, tmp_path):
    """SD-2.1 names (linear proj_in, OpenCLIP text encoder as transformers names it): a hand-made `delta` on UNet
    and text-encoder layers exports to a LoRA diffusers applies exactly, marked SD 2 for A1111 (`ss_v2`), and to
    a checkpoint `from_single_file` reads back tensor for tensor."""
    from safetensors import safe_open

    from personalize.artifacts import save_artifact
    from personalize.pipeline import load_pipeline
    from personalize.tiny import save_named_model

    model = save_named_model(tmp_path / "sd2", tokenizer_dir, "sd2")
    base, g = _weights(_stock(model)), torch.Generator().manual_seed(0)
    keys = ["unet.down_blocks.1.attentions.0.proj_in.weight", "unet.up_blocks.2.resnets.1.conv1.weight",
            "text_encoder.encoder.layers.22.self_attn.k_proj.weight", "unet.conv_in.bias"]
    delta = {k: base[k] + torch.randn(base[k].shape, generator=g) * 0.1 for k in keys}
    art = save_artifact(tmp_path / "db.safetensors", "dreambooth", str(model), weights=delta, kind="delta")
    assert main(["export", str(art), "--format", "lora", "--rank", "full", "--out", str(tmp_path / "l.safetensors")]) == 0
    with safe_open(str(tmp_path / "l.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_v2"] == "True" and meta["ss_base_model_version"] == "sd_v2"
    applied = _diffusers_applies(model, tmp_path / "l.safetensors")
    zero = "text_encoder.encoder.layers.22.self_attn.out_proj.weight"  # diffusers needs one (lora._loadable_in_diffusers)
    assert set(applied) == {*keys[:3], zero} and not applied[zero].any()
    assert all(_rel(applied[k], delta[k] - base[k]) < 1e-5 for k in keys[:3])
    assert main(["export", str(art), "--format", "checkpoint", "--out", str(tmp_path / "c.safetensors")]) == 0
    ours, theirs = load_pipeline(str(model), [art], device="cpu").sd, _single_file(tmp_path / "c.safetensors", model)
    for part in ("unet", "text_encoder"):
        a, b = getattr(ours, part).state_dict(), getattr(theirs, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_a_diffusers_layout_lora_becomes_kohya_exactly(named_sd1, tmp_path, capsys):
    """A LoRA in the diffusers layout (what this project wrote before, and diffusers' own scripts write), which
    A1111, ComfyUI and kohya ignore: exported with --base to kohya's layout, the same adapters in diffusers."""
    from helpers import write_diffusers_lora

    source = write_diffusers_lora(named_sd1, tmp_path / "d")
    out = tmp_path / "k.safetensors"
    _refused(["export", str(source), "--format", "lora", "--out", str(out)], tmp_path, capsys, "pass --base")
    assert main(["export", str(source), "--format", "lora", "--base", str(named_sd1), "--out", str(out)]) == 0
    assert all(KEY_RE.match(k) for k in load_file(out))
    want, got = _diffusers_applies(named_sd1, source), _diffusers_applies(named_sd1, out)
    assert want.keys() == got.keys() and all(_rel(got[k], want[k]) < 1e-6 for k in want)
