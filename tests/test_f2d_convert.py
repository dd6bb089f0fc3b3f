"""`personalize convert --face2diffusion msid.pt mapping.pt`: the official Face2Diffusion pickles (stand-ins of the
official sizes and key names, written here with torch.save) -> one encoder file that FaceEncoder.load reads."""

import collections
import hashlib
import json
import os
import shlex
from types import SimpleNamespace

import pytest
import torch

from personalize.artifacts import load_artifact
from personalize.cli import main
from personalize.errors import PersonalizeError
from personalize.methods.face2diffusion.convert import LICENCE, convert_official, output_path
from personalize.methods.face2diffusion.encoder import FaceEncoder
from personalize.methods.face2diffusion.model import MappingNetwork, MSIDEncoder

# written by hand from the official modules (src/msid.py msid_base_patch8_112, src/modules.py IMG2TEXTwithEXP as
# inference_f2d.py builds it), not from ours
OFFICIAL_SHAPES = {
    "msid": {"pos_embed": (1, 197, 384), "cls_token": (1, 1, 384), "blocks.0.attn.qkv.weight": (1152, 384),
             "blocks.11.mlp.fc2.weight": (384, 1536), "norms.layer_2.0.running_mean": (384,),
             "norms.layer_11.1.weight": (384,), "patch_embed.proj.weight": (384, 3, 8, 8)},
    "mapping": {"i2t_first.layers.0.0.weight": (1536, 1600), "i2t_first.layers.1.0.weight": (1536, 1536),
                "i2t_last.fc_out.weight": (768, 1536), "null_exp": (64,)},
}
OFFICIAL_PARAMETERS = {"msid": 21_450_624, "mapping": 12_000_832}


def _randomized(module: torch.nn.Module) -> torch.nn.Module:
    """Every tensor moved off its initial value (zeros, ones: cls_token, null_exp, BatchNorm statistics), so a
    tensor loaded into the wrong place shows."""
    with torch.no_grad():
        for key, t in module.state_dict().items():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
                if key.endswith("running_var"):
                    t.abs_().add_(0.5)
            else:
                t.fill_(1234)  # num_batches_tracked
    return module.eval()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Full-size msid.pt and mapping.pt, written once, as the release's `torch.save(state_dict)`."""
    folder = tmp_path_factory.mktemp("f2d_official")
    torch.manual_seed(0)
    msid, mapping = _randomized(MSIDEncoder()), _randomized(MappingNetwork())
    torch.save(msid.state_dict(), str(folder / "msid.pt"))
    torch.save(mapping.state_dict(), str(folder / "mapping.pt"))
    return SimpleNamespace(dir=folder, msid_pt=folder / "msid.pt", mapping_pt=folder / "mapping.pt",
                           modules={"msid": msid, "mapping": mapping})


@pytest.fixture(scope="module")
def converted(official):
    return convert_official(official.msid_pt, official.mapping_pt)  # default: beside msid.pt


def _state(official, which: str) -> dict:
    return torch.load(str(getattr(official, f"{which}_pt")), map_location="cpu", weights_only=True)


def _assert_same_tensors(path, official) -> None:
    art = load_artifact(path)
    for which in ("msid", "mapping"):
        state = _state(official, which)
        assert set(art.weights) >= {f"{which}.{k}" for k in state}
        for key, value in state.items():
            assert art.weights[f"{which}.{key}"].dtype == value.dtype, key
            assert torch.equal(art.weights[f"{which}.{key}"], value), key
    assert len(art.weights) == sum(len(_state(official, w)) for w in ("msid", "mapping"))


@pytest.mark.parametrize("which", ["msid", "mapping"])
def test_stand_ins_have_the_official_names_and_sizes(official, which):
    state = _state(official, which)
    for key, shape in OFFICIAL_SHAPES[which].items():
        assert tuple(state[key].shape) == shape, key
    assert sum(p.numel() for p in official.modules[which].parameters()) == OFFICIAL_PARAMETERS[which]


def test_converts_and_loads(official, converted):
    assert converted == official.dir / "face2diffusion.safetensors"
    _assert_same_tensors(converted, official)
    art = load_artifact(converted)
    counter = art.weights["msid.norms.layer_2.0.num_batches_tracked"]
    assert counter.dtype == torch.int64 and int(counter) == 1234
    assert art.metadata["licence"] == LICENCE and "CC BY-NC-SA 4.0" in LICENCE
    from personalize.studio import describe  # the app lists the file with its licence

    assert "licence: CC BY-NC-SA 4.0" in describe(converted, 768).label
    assert art.metadata["base_model"] == "CompVis/stable-diffusion-v1-4"
    source = json.loads(art.metadata["source"])
    for which in ("msid", "mapping"):
        pt = getattr(official, f"{which}_pt")
        assert source[which] == {"file": pt.name, "sha256": hashlib.sha256(pt.read_bytes()).hexdigest()}


def test_converted_encoder_computes_what_the_originals_do(official, converted):
    enc = FaceEncoder.load(converted)
    assert not enc.training and enc.face_size == 112 and enc.width == 768
    faces = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        want = official.modules["mapping"](official.modules["msid"](faces))
    got = enc(faces)
    for g, w in zip(got, want):
        assert g.shape == (3, 768)
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    assert not torch.allclose(got[0], got[1])  # first and last differ: the heads were not swapped into one


def test_cli(official, tmp_path, capsys):
    args = ["convert", "--face2diffusion", str(official.msid_pt), str(official.mapping_pt), "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "face2diffusion.safetensors").is_file()
    assert LICENCE in out and str(tmp_path / "face2diffusion.safetensors") in out
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    _assert_same_tensors(tmp_path / "face2diffusion.safetensors", official)
    assert main(["convert", "--face2diffusion", str(tmp_path / "missing.pt"), str(official.mapping_pt),
                 "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv", [["convert"], ["convert", "a.pt", "--face2diffusion", "m.pt", "p.pt"]])
def test_cli_needs_files_or_face2diffusion(argv, capsys):
    assert main(argv) == 2
    assert "exactly one" in capsys.readouterr().err


def test_output_path(tmp_path):
    assert output_path(tmp_path / "w" / "msid.pt", None) == tmp_path / "w" / "face2diffusion.safetensors"
    assert output_path("msid.pt", tmp_path / "new") == tmp_path / "new" / "face2diffusion.safetensors"
    assert output_path("msid.pt", tmp_path / "enc.safetensors") == tmp_path / "enc.safetensors"


def test_existing_output_is_kept(official, converted):
    before = converted.read_bytes()
    with pytest.raises(PersonalizeError, match="already exists.*--force"):
        convert_official(official.msid_pt, official.mapping_pt, converted)
    assert converted.read_bytes() == before


def _rename(state, old, new):
    return {(new if k == old else k): v for k, v in state.items()}


@pytest.mark.parametrize("which, edit, match", [
    ("msid", lambda s: _rename(s, "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv_weight"),
     r"missing \['blocks.0.attn.qkv.weight'\], unexpected \['blocks.0.attn.qkv_weight'\]"),
    ("mapping", lambda s: s | {"i2t_first.layers.0.0.weight": s["i2t_first.layers.0.0.weight"][:, :1536]},
     r"i2t_first.layers.0.0.weight has shape \(1536, 1536\), the official mapping model expects \(1536, 1600\)"),
    ("msid", lambda s: s | {"pos_embed": s["pos_embed"][:, :100]}, r"pos_embed has shape \(1, 100, 384\)"),
    ("msid", lambda s: s["pos_embed"], "holds a Tensor, expected the state dict"),
], ids=["renamed-key", "truncated-mapping", "truncated-msid", "not-a-dict"])
def test_misfit_is_named_and_nothing_written(official, tmp_path, which, edit, match):
    bad = tmp_path / f"{which}.pt"
    torch.save(edit(_state(official, which)), str(bad))
    paths = {"msid": official.msid_pt, "mapping": official.mapping_pt, which: bad}
    with pytest.raises(PersonalizeError, match=match) as err:
        convert_official(paths["msid"], paths["mapping"], tmp_path / "out")
    assert str(bad) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


def test_swapped_files_are_named(official, tmp_path):
    with pytest.raises(PersonalizeError, match="order msid.pt, mapping.pt"):
        convert_official(official.mapping_pt, official.msid_pt, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


class Shell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class SneakyDict(collections.OrderedDict):
    """A state dict that is an instance of a class of ours: a global the weights-only loader must refuse."""


@pytest.mark.parametrize("which", ["msid", "mapping"])
def test_pickle_with_code_is_refused(official, tmp_path, which):
    marker = tmp_path / "pwned"
    state = _state(official, which) if which == "msid" else {"null_exp": torch.zeros(64)}
    payload = SneakyDict(state) if which == "msid" else state | {"x": Shell(f"echo pwned > {shlex.quote(str(marker))}")}
    bad = tmp_path / f"{which}.pt"
    torch.save(payload, str(bad))
    paths = {"msid": official.msid_pt, "mapping": official.mapping_pt, which: bad}
    with pytest.raises(PersonalizeError, match="weights-only.*never loaded") as err:
        convert_official(paths["msid"], paths["mapping"], tmp_path / "out")
    assert str(bad) in str(err.value)
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


def test_wrapped_and_data_parallel_files_load(official, tmp_path):
    """Our tolerance: {"state_dict": ...} (with other entries beside it) and "module."-prefixed keys."""
    msid = {"state_dict": _state(official, "msid"), "epoch": 3}
    mapping = {f"module.{k}": v for k, v in _state(official, "mapping").items()}
    torch.save(msid, str(tmp_path / "msid.pt"))
    torch.save(mapping, str(tmp_path / "mapping.pt"))
    out = convert_official(tmp_path / "msid.pt", tmp_path / "mapping.pt", tmp_path / "enc.safetensors")
    assert out == tmp_path / "enc.safetensors"
    _assert_same_tensors(out, official)
    assert FaceEncoder.load(out).identifier == "f l"
