"""SuppressEOT: SWR maths, token positions, ITO losses and confinement, attention capture (weight-free checks)."""

import math

import pytest
import torch

from personalize.methods.suppression import suppress_eot as se
from personalize.methods.suppression import suppress_ito as si


def _orthonormal(rows, cols, seed):
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)))
    return q  # (rows, cols), orthonormal columns


def _matrix(sigma, d=6, k=4, seed=0):
    u, v = _orthonormal(d, len(sigma), seed), _orthonormal(k, len(sigma), seed + 1)
    return u @ torch.diag(torch.tensor(sigma)) @ v.T, u  # (d, k)


# ------------------------------------------------------------------------------------------------ SWR


def test_soft_weight_gives_the_formulas_singular_values():
    chi, u = _matrix([3.0, 1.0, 0.5])
    out = se.swr_matrix(chi, alpha=1.0)
    expected = sorted([3 * math.exp(-3), 1 * math.exp(-1), 0.5 * math.exp(-0.5)], reverse=True)  # 0.368, 0.303, 0.149
    got = torch.linalg.svdvals(out)[:3].tolist()
    assert got == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(u @ u.T @ out, out, atol=1e-5)  # same left singular space
    assert torch.linalg.matrix_rank(out) <= chi.shape[1]


def test_identity_cases():
    chi = torch.randn(8, 5)
    assert torch.allclose(se.swr_matrix(chi, 0.0), chi, atol=1e-5)
    assert torch.equal(se.swr_matrix(chi, 1.0, "weight"), chi)
    assert torch.allclose(se.swr_matrix(chi, 0.0, "alpha"), chi, atol=1e-5)  # zero 0 of the top values
    assert torch.allclose(se.swr_matrix(chi, 1.0, "alpha"), torch.zeros_like(chi), atol=1e-6)
    row = torch.randn(77, 8)
    assert torch.equal(se.swr(row, [], 1.0), row)  # nothing to suppress


def test_shrinkage_and_strengthen():
    chi = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    norms = [se.swr_matrix(chi, a).norm().item() for a in (0.0, 0.1, 1.0, 100.0)]
    assert norms[0] > norms[1] > norms[2] > norms[3]
    assert norms[3] < 1e-3 * norms[0]  # a very large alpha drives chi to 0
    strong = se.swr_matrix(chi, -0.001)
    sigma = torch.linalg.svdvals(chi)
    assert torch.allclose(torch.linalg.svdvals(strong), 1.2 * sigma * torch.exp(0.001 * sigma), atol=1e-5)
    assert strong.norm() > chi.norm()
    # any other negative alpha: the plain formula, no gain (official wo_utils.py tests alpha == -.001 only)
    other = torch.linalg.svdvals(se.swr_matrix(chi, -0.5))
    assert torch.allclose(other, sigma * torch.exp(0.5 * sigma), rtol=1e-5)


def test_hard_modes_on_known_values():
    sigma = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert se.reweight(sigma, 0.5, "alpha").tolist() == [0, 0, 2, 1]
    assert se.reweight(sigma, 0.5, "beta").tolist() == [4, 3, 0, 0]
    assert se.Suppression(mode="delete").mode == "alpha"  # the official 'delete' is the same product


def test_swr_only_touches_the_negative_and_eot_columns(tokenizer_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    prompt = "a photo of a man wearing glasses"
    neg, positions, n = se.suppress_positions(tok, prompt, ["glasses"], 77)
    assert n == 9 and neg == [7] and positions == [7] + list(range(8, 77))
    embeds = torch.randn(1, 77, 16)
    out = se.swr(embeds[0], positions, 1.0)[None]
    assert torch.equal(out[0, :7], embeds[0, :7])  # SOT and the other words bitwise unchanged
    assert not torch.allclose(out[0, 7:], embeds[0, 7:])


def test_fp16_and_degenerate_inputs():
    chi = torch.randn(16, 10).half()
    out = se.swr_matrix(chi, 1.0)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    rank1 = torch.ones(16, 1) @ torch.randn(1, 10)  # all-equal padding columns
    assert torch.isfinite(se.swr_matrix(rank1, 1.0)).all()


# ------------------------------------------------------------------------------------- token positions


def test_word_positions_match_the_official_readme(tokenizer_dir):
    """Token groups quoted in the official README for these prompts: [4,5] 'a beard', [7] 'glasses', [9,10] 'a hat';
    [4,5,6] 'Van Gogh Style'."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    prompt = "A man with a beard wearing glasses and a hat in blue shirt"
    assert se.word_positions(tok, prompt, ["a beard"])[0] == [4, 5]
    assert se.word_positions(tok, prompt, ["glasses"])[0] == [7]
    assert se.word_positions(tok, prompt, ["a hat"])[0] == [9, 10]
    assert se.word_positions(tok, "A dog in Van Gogh Style", ["Van Gogh Style"])[0] == [4, 5, 6]


def test_prompts_of_different_lengths_get_their_own_eot_blocks(tokenizer_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    _, short, n1 = se.suppress_positions(tok, "a cat with a hat", ["hat"], 77)
    _, long, n2 = se.suppress_positions(tok, "a large cat sitting on a sofa with a hat", ["hat"], 77)
    assert (n1, n2) == (7, 12) and short[1] == n1 - 1 and long[1] == n2 - 1 and short != long


def test_words_not_in_the_prompt_are_an_error(tokenizer_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    with pytest.raises(se.SuppressError, match="'dog': it is not a word or span of the prompt"):
        se.word_positions(tok, "a cat with a hat", ["dog"])
    with pytest.raises(se.SuppressError, match="not a word or span"):
        se.word_positions(tok, "a cat with a hat", ["ha"])  # part of a word is not a span


def test_settings_errors_name_the_problem():
    with pytest.raises(se.SuppressError, match="suppress_mode 'ito'"):
        se.make_suppression(["x"], "ito")
    with pytest.raises(se.SuppressError, match="unknown suppress option.*'alhpa'"):
        se.make_suppression(["x"], "swr", {"alhpa": 1})
    with pytest.raises(se.SuppressError, match="retain_fraction"):
        se.Suppression(retain_fraction=1.0)
    with pytest.raises(se.SuppressError, match="at least one non-empty word"):
        se.make_suppression(["  "], "swr")
    assert se.make_suppression("x", "swr", {"ito_iters": 5}).ito_iters == 0
    assert se.make_suppression(["x"], "swr+ito").ito_iters == 10


def test_schedule_and_step_size_follow_the_official_defaults():
    supp = se.Suppression(words=("x",), ito_iters=10)
    assert supp.schedule(50) == (10, 20)  # cross_retain_steps 0.2, max_step_to_erase 20
    r10 = 1.0 - 0.9 * 10 / 49  # linspace(1, 0.1, 50)[10]
    assert si.step_size(supp, 10, 50) == pytest.approx(20 * math.sqrt(r10))  # about 18
    assert si.step_size(supp, 19, 50) == pytest.approx(20 * math.sqrt(1.0 - 0.9 * 19 / 49))


# ----------------------------------------------------------------------------------------- ITO losses


def test_cosine_distance_hand_value():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    assert si.cosine_distance(a, b).item() == pytest.approx(1 - 1 / math.sqrt(2))
    assert si.cosine_distance(a, b).dtype == torch.float64


def _maps(seed, h=4, w=4, length=6):
    g = torch.Generator().manual_seed(seed)
    cross = torch.rand(h, w, length, generator=g).softmax(-1)
    selfm = torch.rand(h, w, h * w, generator=g).softmax(-1)
    return cross, selfm


def test_ito_loss_is_zero_for_identical_maps_and_falls_as_erased_maps_diverge():
    cross, selfm = _maps(0)
    tokens = si.TokenSets(erase=(3,), retain=(1, 2, 4))
    supp = se.Suppression(words=("x",), ito_iters=1)
    assert si.ito_loss(cross, cross, selfm, selfm, tokens, supp).item() == pytest.approx(0.0, abs=1e-12)
    moved = cross.clone()
    moved[:, :, 3] = 0
    moved[0, 0, 3], cross_peaked = 1.0, cross.clone()
    cross_peaked[:, :, 3] = 0
    cross_peaked[3, 3, 3] = 1.0  # the erased word's original map and the new one are orthogonal
    loss = si.ito_loss(cross_peaked, moved, selfm, selfm, tokens, supp).item()
    assert loss == pytest.approx(-0.5 * 1.0)  # lambda_erase * (1 - cos) with cos = 0; retained maps equal


def test_retain_term_by_hand():
    cross, _ = _maps(1)
    other = cross.clone()
    other[:, :, 1] = cross[:, :, 1].flip(0)
    tokens = si.TokenSets(erase=(3,), retain=(1,))
    supp = se.Suppression(words=("x",), ito_iters=1, lambda_self_retain=0, lambda_self_erase=0)
    a, b = cross[:, :, 1].reshape(-1).double(), other[:, :, 1].reshape(-1).double()
    expected = 1 - (a @ b / (a.norm() * b.norm())).item()
    assert si.ito_loss(cross, other, None, None, tokens, supp).item() == pytest.approx(expected)
    paper = se.Suppression(words=("x",), ito_iters=1, loss_form="paper")
    assert si.ito_loss(cross, other, None, None, tokens, paper).item() == pytest.approx(((a - b) ** 2).mean().item())


def test_token_masks_keep_the_peak():
    cross = torch.full((4, 4, 3), 0.01)
    cross[1, 2, 1] = 1.0
    mask = si.token_masks(cross, si.TokenSets(erase=(1,), retain=()))[1].reshape(4, 4)
    assert mask[1, 2] and mask.sum() < 16


# -------------------------------------------------------------------------------- capture and ITO runs


@pytest.fixture
def unet():
    from personalize.tiny import tiny_unet

    torch.manual_seed(0)
    return tiny_unet(32)


def test_capture_matches_the_default_processor_and_sums_to_one(unet):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from personalize.attention import AttentionRecorder

    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        plain = unet(x, 500, encoder_hidden_states=ctx).sample
        with AttentionRecorder(unet) as rec:
            assert rec.factor == 1 and len(rec.layers) == 6  # down_blocks.0 (1) and up_blocks.1 (2), attn1 + attn2
            with rec.recording() as store:
                recorded = unet(x, 500, encoder_hidden_states=ctx).sample
                cross = store.aggregate("cross", rec.size((8, 8)))
            assert not store.active
            mid = unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2").processor
            assert isinstance(mid, AttnProcessor2_0)  # other layers keep SDPA
    assert torch.allclose(recorded, plain, atol=1e-5)
    assert cross.shape == (2, 8, 8, 77)
    assert torch.allclose(cross.sum(-1), torch.ones(2, 8, 8), atol=1e-5)
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())  # removed again


def test_ito_without_suppression_is_a_no_op(unet):
    from personalize.attention import AttentionRecorder

    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    supp = se.Suppression(words=("x",), ito_iters=3, alpha=0.0)
    tokens = [si.TokenSets(erase=(3,), retain=(1, 2))]
    with AttentionRecorder(unet) as rec:
        out = si.optimize(unet, rec, x, 500, c, c.clone(), tokens, supp, 10, 25)
        assert torch.allclose(out, c, atol=1e-6)  # every term is 0 and so is its gradient
        off = se.Suppression(words=("x",), ito_iters=3, lambda_retain=0, lambda_erase=0, lambda_self_retain=0,
                             lambda_self_erase=0)
        start = c + 1
        assert torch.equal(si.optimize(unet, rec, x, 500, c, start, tokens, off, 10, 25), start)


def test_ito_changes_only_the_embedding(unet):
    from personalize.attention import AttentionRecorder

    before = {k: v.clone() for k, v in unet.state_dict().items()}
    flags = [p.requires_grad for p in unet.parameters()]
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    start = se.swr(c[0], [3] + list(range(5, 77)), 1.0)[None]
    supp = se.Suppression(words=("x",), ito_iters=2)
    with AttentionRecorder(unet) as rec:
        out = si.optimize(unet, rec, x, 500, c, start, [si.TokenSets(erase=(3,), retain=(1, 2, 4))], supp, 10, 25)
        assert rec.store.maps == {"cross": [], "self": []}  # emptied after the passes
    assert not torch.allclose(out, start)
    assert all(p.grad is None for p in unet.parameters())
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert [p.requires_grad for p in unet.parameters()] == flags


def test_sd1_unet_records_the_official_sixteen_by_sixteen_layers():
    """SD1.x at 512 px: 16x16 maps from down_blocks.2 (x2) and up_blocks.1 (x3), as the official aggregator."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from personalize.attention import default_factor, layer_factors

    with init_empty_weights():
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the SD1.x block layout
    factor = default_factor(unet)
    cross = [n for n, f in layer_factors(unet).items() if f == factor and n.endswith("attn2")]
    assert 64 // factor == 16
    assert sorted(cross) == sorted([f"down_blocks.2.attentions.{i}.transformer_blocks.0.attn2" for i in range(2)]
                                   + [f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn2" for i in range(3)])
