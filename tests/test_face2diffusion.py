"""Face2Diffusion's networks, text path and losses: the weight-free checks (shapes, official key names and
parameter counts, expression equivalences, dropout, injection positions and causal locality, CGDR and ArcFace
against hand-computed values, gradients only on the mapping network)."""

import math

import pytest
import torch

from personalize.methods.face2diffusion import inject
from personalize.methods.face2diffusion.losses import arcface_logits, cgdr_target, loss_arcface, loss_cgdr
from personalize.methods.face2diffusion.model import MappingConfig, MappingNetwork, MSIDConfig, MSIDEncoder


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------ MSID


def official_msid_keys() -> dict[str, tuple]:
    """The official msid.pt layout, written out by hand (timm ViT-S/8 at 112 px, heads after blocks 2/5/8/11)."""
    d, keys = 384, {"cls_token": (1, 1, 384), "pos_embed": (1, 197, 384), "patch_embed.proj.weight": (384, 3, 8, 8),
                    "patch_embed.proj.bias": (384,), "norm.weight": (384,), "norm.bias": (384,)}
    for i in range(12):
        b = f"blocks.{i}."
        keys |= {b + "norm1.weight": (d,), b + "norm1.bias": (d,), b + "attn.qkv.weight": (1152, 384),
                 b + "attn.qkv.bias": (1152,), b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                 b + "norm2.weight": (d,), b + "norm2.bias": (d,), b + "mlp.fc1.weight": (1536, 384),
                 b + "mlp.fc1.bias": (1536,), b + "mlp.fc2.weight": (384, 1536), b + "mlp.fc2.bias": (d,)}
    for i in (2, 5, 8, 11):
        n = f"norms.layer_{i}."
        keys |= {n + "0.weight": (d,), n + "0.bias": (d,), n + "0.running_mean": (d,), n + "0.running_var": (d,),
                 n + "0.num_batches_tracked": (), n + "1.weight": (d,), n + "1.bias": (d,)}
    return keys


def test_msid_full_size_matches_the_official_layout():
    msid = MSIDEncoder()
    assert n_params(msid) == 21_450_624
    state = msid.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == official_msid_keys()
    fake = {k: torch.randn(s) if s else torch.tensor(7) for k, s in official_msid_keys().items()}
    MSIDEncoder().load_state_dict(fake, strict=True)  # an official-shaped state dict loads strictly


def test_msid_output_is_the_four_normed_cls_tokens():
    torch.manual_seed(0)
    msid = MSIDEncoder().eval()
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    seen = {}
    for i in (2, 5, 8, 11):
        msid.blocks[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
    with torch.no_grad():
        out = msid(faces)
    assert out.shape == (2, 1536)
    for k, i in enumerate((2, 5, 8, 11)):
        assert seen[i].shape == (2, 197, 384)  # 196 patches + CLS
        by_hand = msid.norms[f"layer_{i}"](seen[i][:, 0])  # BatchNorm1d then LayerNorm on the CLS token
        torch.testing.assert_close(out[:, 384 * k:384 * (k + 1)], by_hand)
    with pytest.raises(ValueError, match=r"\(B, 3, 112, 112\)"):
        msid(torch.zeros(1, 3, 64, 64))


def test_small_msid_sizes_and_bad_sizes():
    c = MSIDConfig(32, 4, 64, 4, 4, 4.0, (0, 1, 2, 3))
    assert MSIDEncoder(c).eval()(torch.zeros(3, 3, 32, 32)).shape == (3, 256)
    last_only = MSIDConfig(32, 4, 64, 4, 4, 4.0, (3,))
    assert MSIDEncoder(last_only).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 64)
    with pytest.raises(ValueError, match="ext_depths"):
        MSIDConfig(32, 4, 64, 4, 4, 4.0, (4,))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MSIDConfig(30, 4, 64, 4, 4)


# ------------------------------------------------------------------------------------------ mapping network


def test_mapping_full_size_matches_the_official_layout():
    f_map = MappingNetwork()
    assert n_params(f_map) == 12_000_832
    shapes = {k: tuple(v.shape) for k, v in f_map.state_dict().items()}
    expected = {"null_exp": (64,)}
    for head in ("i2t_first", "i2t_last"):
        expected |= {f"{head}.layers.0.0.weight": (1536, 1600), f"{head}.layers.0.0.bias": (1536,),
                     f"{head}.layers.1.0.weight": (1536, 1536), f"{head}.layers.1.0.bias": (1536,),
                     f"{head}.fc_out.weight": (768, 1536), f"{head}.fc_out.bias": (768,)}
    assert shapes == expected
    first, last = f_map.eval()(torch.randn(2, 1536))
    assert first.shape == last.shape == (2, 768)


def test_expression_equivalences_are_bitwise_in_eval_mode():
    torch.manual_seed(0)
    f_map = MappingNetwork(MappingConfig(256, 64, 48, 2, 0.1, 3)).eval()
    with torch.no_grad():
        f_map.null_exp.copy_(torch.tensor([0.3, -1.2, 0.7]))
    idvec, exp = torch.randn(4, 256), torch.randn(4, 3)
    none = f_map(idvec)
    null = f_map.null_exp.detach().expand(4, -1).clone()
    for out in (f_map(idvec, null), f_map(idvec, null, torch.ones(4)), f_map(idvec, exp, torch.zeros(4))):
        assert torch.equal(out[0], none[0]) and torch.equal(out[1], none[1])
    mixed = f_map(idvec, exp, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    with_exp = f_map(idvec, exp)
    assert torch.equal(mixed[0][1], none[0][1]) and torch.equal(mixed[0][0], with_exp[0][0])
    assert not torch.allclose(mixed[0][0], none[0][0])
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        f_map(idvec, torch.randn(4, 5))


def test_dropout_is_deterministic_in_eval_mode_only():
    f_map = MappingNetwork(MappingConfig(256, 64, 48, 2, 0.5, 3))
    x = torch.randn(8, 256)
    f_map.eval()
    assert torch.equal(f_map(x)[0], f_map(x)[0])
    f_map.train()
    assert not torch.equal(f_map(x)[0], f_map(x)[0])


# ------------------------------------------------------------------------------------------ text path


@pytest.fixture(scope="module")
def toy():
    from personalize.components import load_components

    return load_components("toyworld")


def test_identifier_positions(toy):
    tok = toy.tokenizer
    assert tok("f l", add_special_tokens=False).input_ids == [325, 331]  # "f</w>", "l</w>" of CLIP's BPE
    prefix = len(tok("Fauvism painting of", add_special_tokens=False).input_ids)
    ids, p = inject.identifier_positions(tok, ["f l eating bread", "Fauvism painting of f l laughing", "a photo of f l"])
    assert p.tolist() == [1, 1 + prefix, 4]
    assert ids[0, 1] == 325 and ids[1, 1 + prefix] == 325 and ids[1, 2 + prefix] == 331
    with pytest.raises(inject.IdentifierError, match="no identifier 'f l'"):
        inject.identifier_positions(tok, ["a photo of a person"])
    with pytest.raises(inject.IdentifierError, match="not followed by 'l'"):
        inject.identifier_positions(tok, ["grade f photo of f l"])


def test_plain_path_equals_the_text_encoder(toy, tiny_sd1):
    from transformers import CLIPTextModel, CLIPTokenizer

    te = CLIPTextModel.from_pretrained(tiny_sd1 / "text_encoder", local_files_only=True)  # SD1-shaped, width 32
    tok = CLIPTokenizer.from_pretrained(tiny_sd1 / "tokenizer", local_files_only=True)
    for encoder, tokenizer in ((toy.text_encoder, toy.tokenizer), (te, tok)):
        ids, _ = inject.identifier_positions(tokenizer, ["a photo of f l", "f l on the beach"])
        with torch.no_grad():
            torch.testing.assert_close(inject.encode(encoder, ids), encoder(ids)[0], atol=1e-6, rtol=0)


def test_injection_replaces_the_input_states_and_is_causal(toy):
    te = toy.text_encoder
    ids, p = inject.identifier_positions(toy.tokenizer, ["a photo of f l smiling", "f l wearing a hat"])
    first, last = torch.randn(2, 48), torch.randn(2, 48)
    seen = {}
    tm = inject.text_model(te)
    handle = tm.encoder.register_forward_pre_hook(lambda m, a, kw: seen.__setitem__("h", kw["inputs_embeds"]),
                                                  with_kwargs=True)
    with torch.no_grad():
        out = inject.encode(te, ids, first, last, p)
        handle.remove()
        plain = te(ids)[0]
    for b in range(2):
        assert torch.equal(seen["h"][b, p[b]], first[b]) and torch.equal(seen["h"][b, p[b] + 1], last[b])
        torch.testing.assert_close(out[b, :p[b]], plain[b, :p[b]], atol=1e-6, rtol=0)  # before: unchanged
        assert (out[b, p[b]:] - plain[b, p[b]:]).abs().amax(-1).min() > 1e-4  # from p on: every row changes
    plain_inputs = tm.embeddings(input_ids=ids)
    assert torch.equal(seen["h"][0, :4], plain_inputs[0, :4]) and torch.equal(seen["h"][0, 6:], plain_inputs[0, 6:])


# ------------------------------------------------------------------------------------------ losses


def test_cgdr_by_hand():
    pred = torch.tensor([1.0, 2.0, 0.0, 4.0]).reshape(1, 1, 2, 2)
    eps = torch.tensor([0.0, 0.0, 1.0, 1.0]).reshape(1, 1, 2, 2)
    teacher = torch.tensor([1.0, 1.0, 3.0, 2.0]).reshape(1, 1, 2, 2)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    # targets: 0 (eps), 1 (teacher), 1 (eps), 2 (teacher) -> errors 1, 1, 1, 4 -> mean 7/4
    assert loss_cgdr(pred, eps, teacher, mask).item() == pytest.approx(1.75)
    ones, zeros = torch.ones_like(mask), torch.zeros_like(mask)
    assert loss_cgdr(pred, eps, teacher, ones).item() == pytest.approx(((pred - eps) ** 2).mean().item())
    assert loss_cgdr(pred, eps, teacher, zeros).item() == pytest.approx(((pred - teacher) ** 2).mean().item())
    half = torch.full_like(mask, 0.5)
    assert torch.equal(cgdr_target(eps, teacher, half), (eps + teacher) / 2)


def test_cgdr_mask_dilation_by_hand():
    import numpy as np

    from personalize.methods.face2diffusion.data import face_mask

    dot = np.zeros((8, 8), np.float32)
    dot[3, 3] = 1.0  # one face pixel; latent cells are 2 x 2 pixels
    plain = torch.zeros(4, 4)
    plain[1, 1] = 0.25
    assert torch.equal(face_mask(dot, (8, 8), 4)[0], plain)
    # dilated by 1 pixel: rows and columns 2-4 are face; cell (1, 1) whole, (1, 2) and (2, 1) half, (2, 2) a quarter
    widened = torch.zeros(4, 4)
    widened[1, 1], widened[1, 2], widened[2, 1], widened[2, 2] = 1.0, 0.5, 0.5, 0.25
    assert torch.equal(face_mask(dot, (8, 8), 4, dilation=1)[0], widened)
    assert torch.equal(face_mask(None, (8, 8), 4, dilation=2), torch.ones(1, 4, 4))  # no mask: all face


def test_cgdr_teacher_carries_no_gradient():
    pred = torch.randn(2, 4, 3, 3, requires_grad=True)
    teacher = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss_cgdr(pred, torch.randn(2, 4, 3, 3), teacher, torch.rand(2, 1, 3, 3)).backward()
    assert pred.grad is not None and teacher.grad is None


def test_arcface_by_hand():
    weight = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # centres are normalised: only directions count
    # feature along class 0: theta_0 = 0 -> s * cos(0.5); class 1 at 90 degrees -> 0
    logits = arcface_logits(torch.tensor([[5.0, 0.0]]), weight, torch.tensor([0]), scale=2.0, margin=0.5)
    torch.testing.assert_close(logits, torch.tensor([[2 * math.cos(0.5), 0.0]]))
    loss = loss_arcface(torch.tensor([[5.0, 0.0]]), weight, torch.tensor([0]), scale=2.0, margin=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2 * math.cos(0.5))), rel=1e-5)
    # 60 degrees from class 1: cos(60 + 30 degrees) = 0 with m = pi / 6
    f = torch.tensor([[math.sqrt(3) / 2, 0.5]])
    logits = arcface_logits(f, weight, torch.tensor([1]), scale=1.0, margin=math.pi / 6)
    torch.testing.assert_close(logits, torch.tensor([[math.sqrt(3) / 2, 0.0]]), atol=1e-6, rtol=0)
    # past theta + m > pi the fallback cos(theta) - m sin(m) keeps the logit falling
    back = arcface_logits(torch.tensor([[-1.0, 0.0]]), weight, torch.tensor([0]), scale=1.0, margin=0.5)
    assert back[0, 0].item() == pytest.approx(-1 - 0.5 * math.sin(0.5), abs=1e-5)
