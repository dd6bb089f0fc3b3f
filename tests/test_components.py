"""Loading base models: diffusers folders, hub ids offline, single files, toyworld; clear errors otherwise."""

import pytest

from personalize import components
from personalize.components import ComponentsError, load_components, resolve_pretrained


def test_load_sd1_and_sd2_folders(tiny_sd1, tiny_sd2):
    c1 = load_components(str(tiny_sd1))
    c2 = load_components(str(tiny_sd2))
    assert (c1.width, c2.width) == (32, 48)
    assert c1.scheduler.config.prediction_type == "epsilon"
    assert c2.scheduler.config.prediction_type == "v_prediction"
    assert c2.tokenizer.pad_token == "!" and c1.tokenizer.pad_token == "<|endoftext|>"
    assert c1.safety_checker is None and c1.source == str(tiny_sd1)


def test_real_width_variants(real_width_sd1, real_width_sd2):
    assert load_components(str(real_width_sd1)).width == 768
    assert load_components(str(real_width_sd2)).width == 1024


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ComponentsError, match="model_index.json"):
        load_components(str(tmp_path))


def test_missing_path():
    with pytest.raises(ComponentsError, match="was not found: expected an existing diffusers folder"):
        resolve_pretrained("./no/such/model")


def test_pickle_checkpoint_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"PK\x03\x04")
    with pytest.raises(ComponentsError, match="pickle checkpoint"):
        load_components(str(ckpt))


def test_hub_id_local_files_only_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ComponentsError, match="not in the local cache and model.local_files_only"):
        load_components("someone/not-a-cached-model", local_files_only=True)


def test_hub_id_unreachable_fails_without_retrying(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert components.hub_reachable() is False
    with pytest.raises(ComponentsError, match="hub cannot be reached"):
        load_components("someone/not-a-cached-model")


def test_hub_route_uses_cache_first(monkeypatch, tiny_sd1):
    """A cached hub model loads with local_files_only=True and never reaches the network branch."""
    calls = []

    def fake(location, local_files_only, kwargs):
        calls.append(local_files_only)
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline.from_pretrained(str(tiny_sd1), local_files_only=True, **kwargs)

    monkeypatch.setattr(components, "_from_pretrained", fake)
    comps = load_components("org/model")
    assert calls == [True] and comps.width == 32 and comps.source == "org/model"


def test_toyworld_missing_is_clear(monkeypatch, tmp_path):
    (tmp_path / "assets").mkdir()
    monkeypatch.setenv("PERSONALIZE_DATA", str(tmp_path))  # a data folder without the toy model
    with pytest.raises(ComponentsError, match=r"toyworld.*PERSONALIZE_DATA"):
        load_components("toyworld")


def test_single_file_garbage_is_clear(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    with pytest.raises(ComponentsError, match="could not load single-file checkpoint"):
        load_components(str(bad), local_files_only=True)


def test_non_checkpoint_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hi")
    with pytest.raises(ComponentsError, match="not a .safetensors checkpoint"):
        load_components(str(f))


@pytest.mark.parametrize("variant,width", [("sd1", 768), ("sd2", 1024)])
def test_tiny_builders_default_to_real_widths(tokenizer_dir, variant, width):
    from personalize.tiny import tiny_components

    comps = tiny_components(tokenizer_dir, variant)
    assert comps.width == width and comps.unet.config.cross_attention_dim == width
    assert comps.text_encoder.get_input_embeddings().weight.shape[0] == 49408


def test_single_file_checkpoint_loads_like_the_folder(tiny_sd1, tmp_path):
    """An original-layout (CompVis) single file goes through diffusers' from_single_file; weights identical."""
    import torch
    from safetensors.torch import save_file

    from personalize.export.ldm import ldm_state_dict as to_ldm_state_dict

    folder = load_components(str(tiny_sd1))
    path = tmp_path / "tiny-sd1.safetensors"
    save_file(to_ldm_state_dict(folder.unet, folder.vae, folder.text_encoder), str(path))
    single = load_components(str(path), single_file_config=str(tiny_sd1))
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, part).state_dict(), getattr(single, part).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k].reshape(a[k].shape)) for k in a), part
    assert single.source == str(path) and single.width == 32
    # without a local config, offline, diffusers cannot fetch the layout: a clear error, not a hang
    with pytest.raises(ComponentsError, match="single_file_config"):
        load_components(str(path), local_files_only=True)


def test_single_file_without_config_offline_fails_at_once(tiny_sd1, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from personalize.export.ldm import ldm_state_dict as to_ldm_state_dict

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    folder = load_components(str(tiny_sd1))
    path = tmp_path / "tiny-sd1.safetensors"
    save_file(to_ldm_state_dict(folder.unet, folder.vae, folder.text_encoder), str(path))
    with pytest.raises(ComponentsError, match="could not load single-file checkpoint"):
        load_components(str(path))
