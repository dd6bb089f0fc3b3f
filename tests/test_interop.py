"""Real clients: diffusers reads our embedding files; we read what diffusers, A1111 and kohya write."""

import pytest
import torch
from safetensors.torch import save_file

from personalize.artifacts import save_embedding
from personalize.convert import convert
from personalize.errors import PersonalizeError
from personalize.pipeline import load_pipeline


def _diffusers_pipe(model_dir):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True, safety_checker=None)


@pytest.mark.parametrize("model", ["real_width_sd1", "real_width_sd2"])
def test_our_file_loads_in_diffusers(model, request, tmp_path):
    model_dir = request.getfixturevalue(model)
    sd = _diffusers_pipe(model_dir)
    width = sd.text_encoder.get_input_embeddings().weight.shape[1]
    vectors = torch.randn(2, width)
    path = save_embedding(tmp_path, "my-subject", vectors, "textual_inversion", str(model_dir))
    sd.load_textual_inversion(str(path))
    ids = sd.tokenizer.convert_tokens_to_ids(["my-subject", "my-subject_1"])
    assert torch.equal(sd.text_encoder.get_input_embeddings().weight[ids], vectors)
    # and ours gives the same token table
    ours = load_pipeline(str(model_dir), [path], device="cpu")
    assert torch.equal(ours.sd.text_encoder.get_input_embeddings().weight[ids], vectors)


def test_diffusers_written_file_loads_in_ours(real_width_sd1, tmp_path):
    """diffusers' textual_inversion.py: save_file({placeholder: learned_embeds}, 'learned_embeds.safetensors')."""
    vectors = torch.randn(1, 768)
    save_file({"<cat-toy>": vectors}, str(tmp_path / "learned_embeds.safetensors"), metadata={"format": "pt"})
    pipe = load_pipeline(str(real_width_sd1), [tmp_path / "learned_embeds.safetensors"], device="cpu")
    tid = pipe.sd.tokenizer.convert_tokens_to_ids("<cat-toy>")
    assert torch.equal(pipe.sd.text_encoder.get_input_embeddings().weight[tid], vectors[0])
    assert pipe.sd.tokenizer("a <cat-toy> toy").input_ids[2] == tid


def test_a1111_kohya_files_load_in_ours(real_width_sd2, tmp_path):
    """A1111/kohya safetensors embeddings: key 'emb_params', trigger = file name."""
    vectors = torch.randn(3, 1024)
    save_file({"emb_params": vectors}, str(tmp_path / "bad-hands.safetensors"))
    pipe = load_pipeline(str(real_width_sd2), [tmp_path / "bad-hands.safetensors"], device="cpu")
    ids = pipe.sd.tokenizer.convert_tokens_to_ids(["bad-hands", "bad-hands_1", "bad-hands_2"])
    assert torch.equal(pipe.sd.text_encoder.get_input_embeddings().weight[ids], vectors)


def test_sd1_file_on_sd2_model_is_refused(real_width_sd2, tmp_path):
    from personalize.artifacts import ArtifactError

    path = save_embedding(tmp_path, "old", torch.randn(1, 768), "textual_inversion", "sd15")
    with pytest.raises(ArtifactError, match="width 768.*width 1024"):
        load_pipeline(str(real_width_sd2), [path], device="cpu")


def test_convert_a1111_pt(tmp_path):
    vectors = torch.randn(2, 768)
    torch.save({"string_to_param": {"*": vectors}, "name": "<my style>", "step": 500}, str(tmp_path / "s.pt"))
    out = convert(tmp_path / "s.pt", tmp_path / "out")
    assert out.name == "mystyle.safetensors"
    from personalize.artifacts import load_artifact

    art = load_artifact(out, width=768)
    assert torch.equal(art.embeddings["mystyle"], vectors) and "s.pt" in art.metadata["source"]
    with pytest.raises(PersonalizeError, match="already exists"):
        convert(tmp_path / "s.pt", tmp_path / "out")


def test_convert_diffusers_bin_and_token(tmp_path):
    torch.save({"<tok>": torch.ones(768)}, str(tmp_path / "learned_embeds.bin"))
    out = convert(tmp_path / "learned_embeds.bin", token="tok2")
    assert out == tmp_path / "tok2.safetensors"


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_convert_refuses_code_in_pickle(tmp_path):
    torch.save({"emb_params": torch.ones(1, 4), "x": Evil()}, str(tmp_path / "evil.pt"))
    with pytest.raises(PersonalizeError, match="weights-only"):
        convert(tmp_path / "evil.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]
