"""ClassDiffusion's SPL (official utils/semantic_preservation_loss.py): pooling, zero/range, gradient isolation, the cached class
branch, weight 0, exclusivity with prior preservation, and training on every base."""

import pytest
import torch
from helpers import train_config

from personalize.artifacts import load_artifact
from personalize.methods.personalization.classdiffusion import pool_index, pooled_features, spl, spl_loss
from personalize.methods.base import MethodError
from personalize.methods.personalization.bases import BASES
from personalize.methods.personalization.parts import TokenRows
from personalize.pipeline import load_pipeline
from personalize.tiny import tiny_text_encoder, tiny_tokenizer
from personalize.trainer import train


@pytest.fixture
def text_side(tokenizer_dir):
    torch.manual_seed(0)
    tok, te = tiny_tokenizer(tokenizer_dir), tiny_text_encoder(32)
    te.requires_grad_(False)
    rows = TokenRows.add(tok, te, [("sks", "dog", 1)])  # the new row starts as a copy of "dog"
    return tok, te, rows


def ids(tok, text):
    return tok(text, return_tensors="pt").input_ids  # (1, L), no padding


def test_pool_index_eos_and_official():
    batch = torch.tensor([[49406, 5, 49408, 7, 49407]])  # BOS, word, NEW (above EOS), word, EOS
    assert pool_index(batch, 49407, "eos").tolist() == [4]
    assert pool_index(batch, 49407, "official").tolist() == [2]
    with pytest.raises(MethodError, match="no EOS"):
        pool_index(torch.tensor([[49406, 5, 7]]), 49407, "eos")


def test_spl_values_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(spl(f[:1], f[:1])) == pytest.approx(0.0)
    assert float(spl(f[:1], f[1:])) == pytest.approx(1.0)  # orthogonal
    assert float(spl(f[:1], -f[:1])) == pytest.approx(2.0)  # opposite
    assert float(spl(3 * f, f)) == pytest.approx(0.0)  # scale-free
    # two concepts: the mean of their SPLs (0 and 1)
    assert float(spl(f, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))) == pytest.approx(0.5)


def test_zero_when_the_token_is_the_class_word_in_eos_mode_only(text_side):
    tok, te, rows = text_side
    p, c = ids(tok, "a photo of a sks"), ids(tok, "a photo of a dog")
    value, _ = spl_loss(te, p, c, tok.eos_token_id, "eos")
    assert abs(float(value)) < 1e-6
    # the official quirks (argmax pooling at the token, its slot without position embedding) break this
    official, _ = spl_loss(te, p, c, tok.eos_token_id, "official", first_new_id=min(rows.ids))
    assert float(official) > 1e-3
    assert 0 <= float(spl_loss(te, ids(tok, "a sks on a cat"), c, tok.eos_token_id)[0]) <= 2


def test_gradient_reaches_only_the_token_row_and_the_class_branch_stays_constant(text_side):
    tok, te, rows = text_side
    row = rows.make_trainable(te)
    with torch.no_grad():
        row.add_(torch.randn(row.shape))  # move away from "dog" so the loss is not at its minimum
    p, c = ids(tok, "a photo of a sks dog"), ids(tok, "a photo of a dog")
    value, f_class = spl_loss(te, p, c, tok.eos_token_id)
    value.backward()
    assert row.grad is not None and row.grad.abs().sum() > 0
    assert all(q.grad is None for n, q in te.named_parameters() if n != "embeddings.token_embedding.personalize_rows")
    torch.optim.AdamW([row], lr=0.1).step()
    again = pooled_features(te, c, tok.eos_token_id, "eos")
    assert torch.equal(again, f_class)  # no trainable row in the class phrase: bit-identical
    assert float(spl_loss(te, p, c, tok.eos_token_id, f_class=f_class)[0]) != pytest.approx(float(value))


CD = {"class_word": "dog", "spl_template": "a photo of a {token} {cls}"}


def test_weight_zero_reproduces_custom_diffusion_exactly(tmp_path, tiny_sd1, concept_dir):
    base = train(train_config(tiny_sd1, concept_dir, tmp_path / "b", "custom_diffusion", seed=5)).artifact
    reg = train(train_config(tiny_sd1, concept_dir, tmp_path / "r", "classdiffusion", CD | {"lambda_spl": 0.0},
                             seed=5)).artifact
    a, b = load_artifact(base), load_artifact(reg)
    for x, y in ((a.weights, b.weights), (a.embeddings, b.embeddings)):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    moved = load_artifact(train(train_config(tiny_sd1, concept_dir, tmp_path / "m", "classdiffusion", CD,
                                             seed=5)).artifact)
    assert not torch.equal(moved.embeddings["sks"], a.embeddings["sks"])  # the SPL does move the row


def test_prior_preservation_is_refused_unless_asked(tmp_path, tiny_sd1, concept_dir):
    opts = dict(with_prior_preservation=True)
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "o", "classdiffusion", CD, **opts)
    cfg.data.class_prompt = "a photo of a dog"
    with pytest.raises(MethodError, match="replaces prior preservation"):
        train(cfg)
    assert not (tmp_path / "o").exists()
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "o", "classdiffusion", CD | {"allow_with_prior": True},
                       **opts)
    cfg.data.class_prompt, cfg.data.num_class_images, cfg.data.class_generation_steps = "a photo of a dog", 2, 2
    cfg.data.class_data_dir = str(tmp_path / "class")
    result = train(cfg)
    assert result.artifact.exists()


@pytest.mark.parametrize("base", sorted(BASES))
def test_every_base_trains_and_the_artifact_loads(tmp_path, tiny_sd1, concept_dir, base):
    opts = CD | {"base": base}
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "o", "classdiffusion", opts)
    cfg.data.instance_prompt = "a photo of a {} dog"  # bases without a token get the modifier token 'sks'
    art = load_artifact(train(cfg).artifact)
    assert art.method == "classdiffusion" and art.metadata["base"] == base and list(art.embeddings) == ["sks"]
    pipe = load_pipeline(str(tiny_sd1), device="cpu")
    pipe.add_artifact(art.path)
    assert pipe.generate("a photo of a sks dog", seed=0, steps=2)[0].image.size == (16, 16)


def test_bad_options_are_named(tmp_path, tiny_sd1, concept_dir):
    from personalize.config import ConfigError

    for opts, match in [({}, "class_word is required"), (CD | {"spl_pooling": "mean"}, "spl_pooling"),
                        (CD | {"base": "sude"}, "method.base"), (CD | {"rank": 0, "base": "custom_diffusion"},
                                                                   "belongs to method lora")]:
        with pytest.raises((MethodError, ConfigError), match=match):
            train(train_config(tiny_sd1, concept_dir, tmp_path / "o", "classdiffusion", opts))


@pytest.mark.parametrize("form", ["nested", "flat"])
def test_the_users_modifier_token_reaches_the_default_base(tmp_path, tiny_sd1, concept_dir, form):
    """A modifier token set for ClassDiffusion's default base (Custom Diffusion) is the trigger that trains; it
    was once shadowed by the regularizer's own option of the same name and silently dropped."""
    opts = {"class_word": "dog"}
    if form == "nested":
        opts |= {"base": {"name": "custom_diffusion", "modifier_token": "xyzzy"}}
    else:  # the older flat section: the base's keys beside the regularizer's (deprecated, still read)
        opts |= {"base": "custom_diffusion", "modifier_token": "xyzzy"}
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "classdiffusion", opts, max_train_steps=1)
    cfg.data.instance_prompt = "a photo of {} dog"
    art = load_artifact(train(cfg).artifact)
    assert art.triggers == ["xyzzy"]


def test_a_regularizer_token_on_a_base_with_its_own_is_refused(tmp_path, tiny_sd1, concept_dir):
    opts = {"class_word": "dog", "base": {"name": "custom_diffusion"}, "modifier_token": "xyzzy"}
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "classdiffusion", opts)
    with pytest.raises(MethodError, match="method.base.modifier_token=xyzzy"):
        train(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_a_caption_that_is_the_phrase_gives_the_spl_without_a_pass_of_its_own(tmp_path, tiny_sd1, concept_dir,
                                                                              train_text_encoder):
    """A caption equal to the personalized phrase: f(P) is read from its conditioning at the phrase's EOS (CLIP
    is causal, the padding after the EOS changes nothing). Same loss and gradient as the official unpadded pass of
    its own, and no text-encoder call for P; a batch without that caption takes the separate pass."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from personalize.components import load_components
    from personalize.methods import REGISTRY, build_method

    opts = CD | {"base": {"name": "dreambooth", "train_text_encoder": train_text_encoder}}
    cfg = train_config(tiny_sd1, concept_dir, tmp_path, "classdiffusion", opts)
    try:
        tuner = build_method(cfg, REGISTRY)
        tuner.setup(load_components(str(tiny_sd1)), cfg, Accelerator(cpu=True))
    finally:
        AcceleratorState._reset_state()
        GradientState._reset_state()
    reg, te = tuner.regularizers[0], tuner.c.text_encoder
    assert reg.phrase == "a photo of a sks dog"
    params = [p for p in te.parameters() if p.requires_grad]
    with torch.no_grad():  # move away from "dog" so the loss and its gradients are not zero
        params[0].add_(0.5 * torch.randn(params[0].shape, generator=torch.Generator().manual_seed(0)))
    separate, _ = spl_loss(te, reg.ids_p, reg.ids_c, reg.eos_id, "eos")
    grads_separate = torch.autograd.grad(separate, params)
    assert float(separate) > 1e-3

    calls = []
    handle = te.register_forward_hook(lambda *args: calls.append(1))
    try:
        captions = ["a photo of sks dog", reg.phrase]
        cond = tuner.encode_text(captions)  # the base's own call (1)
        reg.losses(tuner.base, SimpleNamespace(cond=cond, captions=captions))  # f(C) computed once on a frozen encoder
        calls.clear()
        shared = reg.losses(tuner.base, SimpleNamespace(cond=cond, captions=captions))["loss_spl"]
        assert len(calls) == (1 if train_text_encoder else 0)  # f(C) again only while the layers train
        alone = tuner.encode_text(captions[:1])
        fallback = reg.losses(tuner.base, SimpleNamespace(cond=alone, captions=captions[:1]))["loss_spl"]
    finally:
        handle.remove()
    assert float(shared) == pytest.approx(float(separate), abs=1e-6)
    assert float(fallback) == pytest.approx(float(separate), abs=1e-6)
    for a, b in zip(torch.autograd.grad(shared, params), grads_separate):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
