"""One table for every registry entry: it trains a few steps, only the expected parameters move, and its artifact
saves, loads, applies and undoes exactly. Plus a throw-away method trained through the public protocol alone."""

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from helpers import pixels, same_state, state, train_config

from personalize.artifacts import ArtifactContent, load_artifact
from personalize.components import load_components
from personalize.methods import REGISTRY, MethodRecord, record_for_artifact
from personalize.methods import blocks
from personalize.methods.base import MethodError
from personalize.methods.personalization.apply import apply_parts
from personalize.methods.personalization.parts import TokenRows
from personalize.pipeline import load_pipeline
from personalize.trainer import train

NEW_ROWS = r"text_encoder\.(text_model\.)?embeddings\.token_embedding\.weight\[new rows\]"
CD_KV = r"unet\..*\.attn2\.processor\.to_[kv]_custom_diffusion\.weight"
UNET_OWN = r"unet\.(?!.*(lora_|processor\.)).*"
XATTN = r"unet\..*\.attn2\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)"


@dataclass
class Row:
    options: dict  # the `method:` section
    moves: list[str]  # every moved tensor matches one of these; each of them matches at least one moved tensor
    prompt: str = "a photo of sks dog"


TRAINED = {
    "textual_inversion": Row({}, [NEW_ROWS], "a photo of {} dog"),
    "custom_diffusion": Row({}, [CD_KV, NEW_ROWS], "a photo of {} dog"),
    "lora": Row({"rank": 2}, [r"unet\..*\.lora_[AB]\.default\.weight"]),
    "dreambooth": Row({}, [UNET_OWN]),
    "classdiffusion": Row({"class_word": "dog"}, [CD_KV, NEW_ROWS], "a photo of {} dog"),
    "sude": Row({"class_word": "dog"}, [UNET_OWN]),
    "dct": Row({"classifier": "toyworld", "target": "identity:18", "sample_steps": 3, "guidance_scale": 3.0},
               [NEW_ROWS], "a photo of {} person"),
    "esd": Row({"concepts": ["a photo of a dog"], "ddim_steps": 4}, [XATTN], "a photo of a dog"),
    "abo": Row({"concepts": ["a photo of a dog"], "alternatives": ["a photo of a cat"], "ddim_steps": 4}, [XATTN],
               "a photo of a dog"),
    "uce": Row({"concepts": ["dog"], "erase_scale": 10.0}, [r"unet\..*\.attn2\.to_[kv]\.weight"], "a photo of a dog"),
}
INFERENCE = {"suppress_eot"}
ENCODERS = {"f2d_msid", "face2diffusion"}  # trained once on a dataset; they change no pipeline weight


def test_the_table_covers_every_registry_entry():
    assert set(TRAINED) | INFERENCE | ENCODERS == set(REGISTRY)
    assert {n for n, r in REGISTRY.items() if r.kind == "encoder"} == ENCODERS
    assert {n for n, r in REGISTRY.items() if r.build is None} == INFERENCE
    assert all(r.name == n for n, r in REGISTRY.items())


def _flat_state(c) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k.replace('.base_layer', '')}": v.detach().float().clone()
            for prefix, module in (("unet", c.unet), ("text_encoder", c.text_encoder), ("vae", c.vae))
            for k, v in module.state_dict().items()}


def _moved(before: dict, after: dict) -> set[str]:
    """Tensors that changed or were added; a grown token table counts its new rows apart from its old ones."""
    out = set()
    for key, value in after.items():
        old = before.get(key)
        if old is None:
            if value.abs().sum() > 0 or "lora_B" in key:  # added; LoRA B starts at 0, A is random
                out.add(key)
        elif old.shape != value.shape:
            out.add(f"{key}[new rows]")
            if not torch.equal(value[: old.shape[0]], old):
                out.add(f"{key}[old rows]")
        elif not torch.equal(value, old):
            out.add(key)
    return out


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_method_trains_moves_only_its_parameters_and_applies_exactly(tmp_path, tiny_sd1, concept_dir, name):
    row = TRAINED[name]
    before = _flat_state(load_components(str(tiny_sd1)))
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", name, row.options, max_train_steps=2,
                       learning_rate=5e-2)
    cfg.data.instance_prompt = row.prompt
    result = train(cfg)
    moved = _moved(before, _flat_state(result.method.c))
    stray = [k for k in moved if not any(re.fullmatch(p, k) for p in row.moves)]
    assert stray == [], f"{name} moved tensors it should not: {stray[:5]}"
    assert all(any(re.fullmatch(p, k) for k in moved) for p in row.moves), (name, sorted(moved)[:5])

    art = load_artifact(result.artifact)
    assert record_for_artifact(art) is REGISTRY[name] and art.method == name
    pipe = load_pipeline(str(tiny_sd1), device="cpu")
    te0, unet0, ntok = state(pipe.sd.text_encoder), state(pipe.sd.unet), len(pipe.sd.tokenizer)
    prompt = row.prompt.replace("{}", art.triggers[0]) if art.triggers else row.prompt
    plain = pixels(pipe.generate(prompt, seed=0, steps=3)[0])
    pipe.add_artifact(art)
    assert np.abs(pixels(pipe.generate(prompt, seed=0, steps=3)[0]) - plain).mean() > 0.05
    pipe.remove_artifact(art.name)
    assert len(pipe.sd.tokenizer) == ntok
    assert same_state(state(pipe.sd.text_encoder), te0) and same_state(state(pipe.sd.unet), unet0)
    assert np.array_equal(pixels(pipe.generate(prompt, seed=0, steps=3)[0]), plain)


@pytest.mark.parametrize("name", sorted(INFERENCE))
def test_inference_method_edits_generation_and_leaves_the_model_as_it_was(pipe_sd1, name):
    record = REGISTRY[name]
    assert record.kind == "inference" and record.apply is None and record.edit is not None
    sd = pipe_sd1.sd
    te0, unet0, ntok = state(sd.text_encoder), state(sd.unet), len(sd.tokenizer)
    prompt = "a photo of a dog wearing glasses"
    plain = pipe_sd1.generate(prompt, seed=0, steps=4)[0]
    edited = pipe_sd1.generate(prompt, seed=0, steps=4, edits=[record.edit({"words": ["glasses"]})])[0]
    assert np.abs(pixels(edited) - pixels(plain)).mean() > 0.05
    assert set(edited.settings) - set(plain.settings)  # the edit describes itself in the image's settings
    assert same_state(state(sd.text_encoder), te0) and same_state(state(sd.unet), unet0)
    assert len(sd.tokenizer) == ntok
    assert np.array_equal(pixels(pipe_sd1.generate(prompt, seed=0, steps=4)[0]), pixels(plain))


def test_encoder_methods_move_no_model_weight_and_their_edit_leaves_it_as_it_was(tmp_path, tiny_sd1, concept_dir):
    """Face2Diffusion's two stages on an SD1-shaped model: the UNet, VAE and text encoder are bitwise what they
    were; the encoder file is refused as a pipeline artifact and used by the face edit instead."""
    from PIL import Image

    before = _flat_state(load_components(str(tiny_sd1)))
    small = {"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "ext_depths": [0, 1]}
    msid = train(train_config(tiny_sd1, concept_dir, tmp_path / "a", "f2d_msid", small, train_batch_size=4))
    f2d = train(train_config(tiny_sd1, concept_dir, tmp_path / "b", "face2diffusion",
                             {"msid": str(msid.artifact), "middle_dim": 16, "exp_dim": 3}, train_batch_size=2))
    assert _moved(before, _flat_state(f2d.method.c)) == set()
    pipe = load_pipeline(str(tiny_sd1), device="cpu")
    with pytest.raises(Exception, match="not a pipeline artifact"):
        pipe.add_artifact(f2d.artifact)
    te0, unet0 = state(pipe.sd.text_encoder), state(pipe.sd.unet)
    plain = pipe.generate("a photo of f l", seed=0, steps=3)[0]
    face = Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
    edit = REGISTRY["face2diffusion"].edit({"encoder": str(f2d.artifact), "face": [face], "detector": "none"})
    edited = pipe.generate("a photo of f l", seed=0, steps=3, edits=[edit])[0]
    assert np.abs(pixels(edited) - pixels(plain)).mean() > 0.05 and "face" in edited.settings
    assert same_state(state(pipe.sd.text_encoder), te0) and same_state(state(pipe.sd.unet), unet0)
    assert np.array_equal(pixels(pipe.generate("a photo of f l", seed=0, steps=3)[0]), pixels(plain))


# ------------------------------------------------------------------------------ a method written for this test


@dataclass
class TowardOptions:
    name: str = "row_toward"
    token: str = "zq"
    target: float = 0.5


class RowToward:
    """Train one new token row toward a fixed vector: loss_toward = mean((row - target)^2)."""

    def __init__(self, options: TowardOptions, config):
        self.o = options

    def setup(self, components, config, accelerator) -> None:
        c = self.c = components
        blocks.freeze(c.vae, c.unet, c.text_encoder)
        self.rows = TokenRows.add(c.tokenizer, c.text_encoder, [(self.o.token, "dog", 1)])
        self.row = self.rows.make_trainable(c.text_encoder)  # (1, width)
        blocks.place((c.vae, c.unet, c.text_encoder), accelerator.device, torch.float32)

    def trainable_modules(self) -> dict:
        return {"text_encoder": self.c.text_encoder}

    def dataloader(self, start: int, rank: int, world: int):
        while True:
            yield {}

    def training_step(self, batch: dict, generator) -> dict:
        return {"loss_toward": ((self.row - self.o.target) ** 2).mean()}

    def finish(self) -> None:
        self.rows.fold(self.c.text_encoder)

    def artifact(self) -> ArtifactContent:
        return ArtifactContent(self.o.token, self.rows.vectors(self.c.text_encoder))


def test_a_new_method_trains_through_the_public_protocol(tmp_path, tiny_sd1, concept_dir):
    record = MethodRecord("row_toward", TowardOptions, RowToward, apply_parts, "personalization")
    registry = REGISTRY | {"row_toward": record}
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "row_toward", {"target": 0.5},
                       max_train_steps=40, learning_rate=0.05, checkpointing_steps=20)
    start = load_components(str(tiny_sd1)).text_encoder.get_input_embeddings().weight[
        load_components(str(tiny_sd1)).tokenizer.encode("dog", add_special_tokens=False)[0]]
    result = train(cfg, registry=registry)
    art = load_artifact(result.artifact)
    assert result.artifact.name == "zq.safetensors" and art.method == "row_toward" and art.triggers == ["zq"]
    row = art.embeddings["zq"][0]
    assert (row - 0.5).abs().mean() < 0.5 * (start - 0.5).abs().mean()  # it moved most of the way
    assert (tmp_path / "out" / "checkpoint-40" / "trainable.safetensors").is_file()  # state from the module
    with pytest.raises(Exception, match="unknown method 'row_toward'"):
        record_for_artifact(art)  # not in the default registry
    pipe = load_pipeline(str(tiny_sd1), device="cpu")
    undo = record_for_artifact(art, registry).apply(pipe.sd, art)
    assert torch.equal(pipe.sd.text_encoder.get_input_embeddings().weight[-1], row)
    undo()


@dataclass
class SuffixOptions:
    word: str = ""


class Suffix:
    """A throw-away generation edit: appends a word to every prompt (what a new inference method plugs into)."""

    def __init__(self, options, profile=None):
        o = SuffixOptions(**options) if isinstance(options, dict) else options
        if not o.word:
            raise MethodError("edit 'suffix' needs a word")
        self.word = o.word

    def check(self, sd, prompts):
        if any(self.word in p for p in prompts):
            raise MethodError(f"the prompt already says {self.word!r}")

    def call_kwargs(self, sd, call):
        return call | {"prompt": [f"{p} {self.word}" for p in call["prompt"]]}, lambda: None

    def describe(self):
        return {"suffix": self.word}

    def label(self):
        return f"Suffix: {self.word}"


def test_a_new_inference_edit_reaches_the_cli_the_studio_and_the_app(tmp_path, tiny_sd1, pipe_sd1):
    """Registered in a copy of the registry only: no front end is edited to offer it."""
    import json

    from personalize.app.ui import Callbacks, build
    from personalize.cli import main
    from personalize.studio import Studio

    registry = REGISTRY | {"suffix": MethodRecord("suffix", SuffixOptions, None, None, "inference", edit=Suffix)}
    kw = {"seed": [3], "steps": 3}
    want = pixels(pipe_sd1.generate("a photo of a dog cat", **kw)[0])
    assert not (want == pixels(pipe_sd1.generate("a photo of a dog", **kw)[0])).all()
    # CLI: --edit NAME KEY=VALUE
    out = tmp_path / "cli"
    assert main(["generate", "--base", str(tiny_sd1), "--prompt", "a photo of a dog", "--seeds", "3", "--steps", "3",
                 "--out", str(out), "--no-progress", "--edit", "suffix", "word=cat"], registry=registry) == 0
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["suffix"] == "cat"
    from PIL import Image

    assert (np.asarray(Image.open(out / record["file"]), dtype=np.int16) == want).all()
    assert main(["generate", "--base", str(tiny_sd1), "--prompt", "a dog", "--out", str(tmp_path / "x"),
                 "--edit", "suffix", "word=cat"]) == 2  # the default registry has no such edit
    # Studio: a plain description
    studio = Studio(pipe_sd1, tmp_path / "arts", tmp_path / "app", registry=registry)
    assert "suffix" in studio.edit_names()
    (image,) = studio.generate("a photo of a dog", edits={"suffix": {"word": "cat"}}, seed=[3], steps=3)
    assert (pixels(image) == want).all() and image.labels == ("Suffix: cat",)
    with pytest.raises(MethodError, match="already says 'cat'"):
        studio.check("a photo of a cat", edits={"suffix": {"word": "cat"}})
    # App: the generic edit control offers it and the generate callback applies it
    demo = build(studio)
    (menu,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "edit_name"]
    assert "suffix" in [value for _, value in menu.choices]
    shown, info, images = Callbacks(studio).generate("a photo of a dog", "", [], 3, 3, 7.5, None, None, 1, "", "off",
                                                     edit_name="suffix", edit_options="word: cat")
    assert (pixels(images[0]) == want).all() and '"suffix": "cat"' in info
