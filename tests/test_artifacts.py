"""Artifact files: our layout, third-party embeddings, width checks, refusals, atomic writes."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from personalize import atomic
from personalize.artifacts import ArtifactError, load_artifact, save_artifact, save_embedding
from personalize.errors import PersonalizeError
from personalize.methods import record_for_artifact
from personalize.methods.personalization.apply import check_delta_keys


def test_embedding_file_layout(tmp_path):
    vec = torch.randn(3, 32, dtype=torch.float64)
    path = save_embedding(tmp_path, "my-cat_2.v1", vec, "textual_inversion", "toyworld", {"seed": 1})
    assert path.name == "my-cat_2.v1.safetensors"
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == ["my-cat_2.v1"]
        meta = f.metadata()
        t = f.get_tensor("my-cat_2.v1")
    assert t.dtype == torch.float32 and t.shape == (3, 32) and torch.allclose(t, vec.float())
    assert meta["method"] == "textual_inversion" and meta["base_model"] == "toyworld"
    assert json.loads(meta["tokens"]) == ["my-cat_2.v1"] and json.loads(meta["config"]) == {"seed": 1}
    assert meta["format_version"] == "1" and meta["weights"] == "none"


@pytest.mark.parametrize("bad", ["", "<cat>", "two words", "a/b"])
def test_bad_trigger_refused(tmp_path, bad):
    with pytest.raises(ArtifactError, match="letters, digits"):
        save_embedding(tmp_path, bad, torch.zeros(1, 4), "textual_inversion", "x")
    assert list(tmp_path.iterdir()) == []


def test_round_trip_with_delta(tmp_path):
    path = save_artifact(tmp_path / "cd.safetensors", "custom_diffusion", "base", embeddings={"tok": torch.ones(1, 8)},
                         weights={"unet.a.weight": torch.zeros(2, 2)}, kind="delta")
    art = load_artifact(path, width=8)
    assert art.method == "custom_diffusion" and art.triggers == ["tok"]
    assert list(art.weights) == ["unet.a.weight"] and art.kind == "delta"
    with pytest.raises(ArtifactError, match="must start with"):  # the personalization kind checks its keys
        check_delta_keys({"vae.w": torch.zeros(1)})
    with pytest.raises(ArtifactError, match="weights kind"):  # tensors without a kind, or a kind without tensors
        save_artifact(tmp_path / "x.safetensors", "dreambooth", "b", weights={"unet.w": torch.zeros(1)})
    assert not (tmp_path / "x.safetensors").exists()


def test_width_mismatch_names_both_widths(tmp_path):
    path = save_embedding(tmp_path, "tok", torch.zeros(1, 768), "textual_inversion", "sd15")
    with pytest.raises(ArtifactError, match=r"width 768 \(SD 1.x\).*width 1024"):
        load_artifact(path, width=1024)


def test_unknown_method(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"tok": torch.zeros(1, 4)}, str(path), metadata={"method": "magic", "format_version": "1", "tokens": '["tok"]'})
    art = load_artifact(path)  # reading needs no method; applying does (the registry names the known ones)
    with pytest.raises(ArtifactError, match="unknown method 'magic'.*known methods: textual_inversion"):
        record_for_artifact(art)


def test_missing_and_not_safetensors(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nope.safetensors")
    txt = tmp_path / "fake.safetensors"
    txt.write_text("hello, this is not a tensor file")
    with pytest.raises(ArtifactError, match="not a safetensors file"):
        load_artifact(txt)


@pytest.mark.parametrize("name", ["emb.pt", "emb.bin", "disguised.safetensors"])
def test_pickle_refused_pointing_to_convert(tmp_path, name):
    path = tmp_path / name
    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}, "name": "x"}, str(path))
    with pytest.raises(ArtifactError, match="pickle.*personalize convert"):
        load_artifact(path)


@pytest.mark.parametrize("first_byte", [0x80, ord("P")])
def test_safetensors_whose_header_length_looks_like_a_pickle_loads(tmp_path, first_byte):
    """The 8-byte header length may start with 0x80 (pickle's PROTO) or 'PK' (zip): still safetensors."""
    path = tmp_path / "emb.safetensors"
    for pad in range(600):
        save_file({"emb": torch.ones(1, 4)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == first_byte:
            break
    assert path.read_bytes()[0] == first_byte
    assert load_artifact(path, width=4).triggers == ["emb"]


def test_foreign_formats(tmp_path):
    # diffusers textual_inversion script: {placeholder_token: (n, width)}, no metadata
    save_file({"<cat-toy>": torch.ones(2, 4)}, str(tmp_path / "learned_embeds.safetensors"))
    art = load_artifact(tmp_path / "learned_embeds.safetensors", width=4)
    assert art.triggers == ["<cat-toy>"] and art.method == "textual_inversion"
    # kohya / A1111 safetensors: emb_params, the trigger is the file name
    save_file({"emb_params": torch.ones(3, 4)}, str(tmp_path / "style-x.safetensors"))
    assert load_artifact(tmp_path / "style-x.safetensors", width=4).embeddings["style-x"].shape == (3, 4)
    # a 1-D single vector becomes (1, width)
    save_file({"vec": torch.ones(4)}, str(tmp_path / "v.safetensors"))
    assert load_artifact(tmp_path / "v.safetensors", width=4).embeddings["vec"].shape == (1, 4)


def test_sdxl_parts(tmp_path):
    path = tmp_path / "xl-style.safetensors"
    save_file({"clip_l": torch.ones(2, 768), "clip_g": torch.zeros(2, 1280)}, str(path))
    art = load_artifact(path, width=768)
    assert art.triggers == ["xl-style"] and torch.equal(art.embeddings["xl-style"], torch.ones(2, 768))
    with pytest.raises(ArtifactError, match="SDXL embedding .*1024"):
        load_artifact(path, width=1024)


def test_token_override(tmp_path):
    save_file({"<a>": torch.ones(1, 4)}, str(tmp_path / "a.safetensors"))
    assert load_artifact(tmp_path / "a.safetensors", token="bob").triggers == ["bob"]


def test_unrecognised_foreign_file(tmp_path):
    save_file({"x": torch.ones(1), "y": torch.ones(1)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(ArtifactError, match="match no known embedding or LoRA format"):
        load_artifact(tmp_path / "m.safetensors")


def test_atomic_write_leaves_nothing_on_crash(tmp_path, monkeypatch):
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_embedding(tmp_path, "tok", torch.zeros(1, 4), "textual_inversion", "x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_existing(tmp_path):
    path = tmp_path / "t.txt"
    atomic.atomic_write_text(path, "one")
    atomic.atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_metadata_must_be_strings(tmp_path):
    with pytest.raises(PersonalizeError, match="must be strings"):
        atomic.atomic_save_file({"a": torch.zeros(1)}, tmp_path / "a.safetensors", {"n": 3})


def test_trigger_named_like_lora_is_still_an_embedding(tmp_path):
    save_file({"floral-style": torch.ones(1, 4)}, str(tmp_path / "floral-style.safetensors"))
    assert load_artifact(tmp_path / "floral-style.safetensors").method == "textual_inversion"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(1, 4)},
              str(tmp_path / "kohya.safetensors"))
    assert load_artifact(tmp_path / "kohya.safetensors").method == "lora"


def _write(path, tensors, **meta):
    from safetensors.torch import save_file

    base = {"format_version": "1", "method": "textual_inversion", "base_model": "x", "weights": "none"}
    save_file(tensors, str(path), {k: v for k, v in (base | meta).items() if v is not None})
    return path


@pytest.mark.parametrize("tensors, meta, message", [
    ({"zq": torch.zeros(1, 32)}, {"tokens": '["zq"]', "config": '{"data": "x"}'}, "'config' must be a JSON object"),
    ({"zq": torch.zeros(1, 32)}, {"tokens": '["zq"]', "config": "{not json"}, "'config' is not JSON"),
    ({"zq": torch.zeros(1, 32)}, {"tokens": "null"}, "'tokens' must be a JSON list of trigger words"),
    ({"zq": torch.zeros(1, 32)}, {"tokens": '[1]'}, "'tokens' must be a JSON list of trigger words"),
    ({"zq": torch.tensor(1.0)}, {"tokens": '["zq"]'}, r"shape \(\); expected \[n_vectors, width\]"),
    ({"zq": torch.zeros(0, 32)}, {"tokens": '["zq"]'}, r"shape \(0, 32\); expected .* 1 to 75 vectors"),
    ({"zq": torch.zeros(76, 32)}, {"tokens": '["zq"]'}, r"shape \(76, 32\); expected .* 1 to 75 vectors"),
    ({"zq": torch.full((1, 32), float("nan"))}, {"tokens": '["zq"]'}, "'zq' holds NaN or Inf"),
    ({"zq": torch.zeros(1, 32), "unet.w": torch.tensor([float("inf")])}, {"tokens": '["zq"]', "weights": "delta"},
     "'unet.w' holds NaN or Inf"),
])
def test_mistyped_metadata_and_bad_tensors_are_one_artifact_error(tmp_path, tensors, meta, message):
    path = _write(tmp_path / "bad.safetensors", tensors, **meta)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(path)
    assert load_artifact(_write(tmp_path / "ok.safetensors", {"zq": torch.zeros(75, 32)}, tokens='["zq"]'))


def test_foreign_embeddings_are_capped_and_checked_too(tmp_path):
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(10_000, 32)}, str(tmp_path / "huge.safetensors"))
    save_file({"emb_params": torch.full((2, 32), float("-inf"))}, str(tmp_path / "inf.safetensors"))
    with pytest.raises(ArtifactError, match="1 to 75 vectors"):
        load_artifact(tmp_path / "huge.safetensors")
    with pytest.raises(ArtifactError, match="NaN or Inf"):
        load_artifact(tmp_path / "inf.safetensors")


def test_a_malformed_file_is_listed_unusable_and_the_scan_goes_on(tmp_path):
    from personalize.studio import scan_artifacts

    _write(tmp_path / "bad.safetensors", {"zq": torch.zeros(1, 32)}, tokens='["zq"]', config='{"data": "x"}')
    _write(tmp_path / "good.safetensors", {"qq": torch.zeros(1, 32)}, tokens='["qq"]')
    bad, good = scan_artifacts(tmp_path, 32)
    assert not bad.usable and "'config' must be a JSON object" in bad.reason and good.usable


def test_a_three_d_embedding_is_refused_by_its_shape_not_its_width(tmp_path):
    from safetensors.torch import save_file

    save_file({"emb_params": torch.zeros(1, 2, 32)}, str(tmp_path / "cube.safetensors"))
    with pytest.raises(ArtifactError, match=r"shape \(1, 2, 32\); expected \[n_vectors, width\]"):
        load_artifact(tmp_path / "cube.safetensors", width=32)  # was: "has width 32 ..., but ... width 32"


def test_an_erasure_file_that_also_holds_an_embedding_is_refused_not_half_applied(tmp_path, pipe_sd1):
    name, param = next(iter(pipe_sd1.sd.unet.named_parameters()))
    path = _write(tmp_path / "esd.safetensors", {f"unet.{name}": torch.ones_like(param), "zq": torch.zeros(1, 32)},
                  method="esd", weights="diff", tokens='["zq"]')
    before = param.detach().clone()
    with pytest.raises(ArtifactError, match=r"holds UNet differences only, but it also lists embeddings \['zq'\]"):
        pipe_sd1.add_artifact(path)
    assert torch.equal(param, before) and "zq" not in pipe_sd1.sd.tokenizer.get_vocab()


def test_a_refused_zero_row_embedding_leaves_its_trigger_free(tmp_path, pipe_sd1):
    bad = _write(tmp_path / "zq.safetensors", {"zq": torch.zeros(0, 32)}, tokens='["zq"]')
    with pytest.raises(ArtifactError, match=r"shape \(0, 32\)"):
        pipe_sd1.add_artifact(bad)
    good = _write(tmp_path / "good.safetensors", {"zq": torch.ones(2, 32)}, tokens='["zq"]')
    assert pipe_sd1.add_artifact(good).triggers == ["zq"]  # was: "already in the tokenizer" until a restart


@pytest.mark.parametrize("meta, message", [({"config": '{"data": "x"}'}, "'config' must be a JSON object"),
                                           ({"tokens": "null"}, "'tokens' must be a JSON list")])
def test_an_uploaded_malformed_file_is_refused_with_the_field_named(tmp_path, meta, message):
    from personalize.studio import Studio

    from personalize.profiles import profile_for

    class Pipe:  # the upload check reads the text encoder's width
        width, profile = 32, profile_for("sd1")

    (tmp_path / "up").mkdir()
    upload = _write(tmp_path / "up" / "mine.safetensors", {"zq": torch.zeros(1, 32)}, **({"tokens": '["zq"]'} | meta))
    studio = Studio(Pipe(), tmp_path / "artifacts", tmp_path / "outputs")
    with pytest.raises(ArtifactError, match=f"mine.safetensors was not added: .*{message}"):
        studio.upload(upload)
    assert not (tmp_path / "artifacts" / "mine.safetensors").exists()
