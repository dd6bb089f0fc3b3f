"""The adversarial erasure option (AdvUnlearn's inner attack and outer loss, personalize.methods.erasure.adversarial)
on the tiny SD 1.x model: the prompt layout against the tokenizer, delta = the concept's own embeddings is the plain
prompt, the attack lowers its own loss and touches no weight, the outer loss trains only the filtered parameters,
and the option off adds nothing."""

import pytest
import torch

from personalize.methods.base import MethodError
from personalize.methods.erasure import losses
from test_erasure import _eraser, _x_t

PROMPT, CONCEPT = "a photo of a dog", "dog"


def test_the_layout_is_the_tokenizers_own_ids_with_the_concepts_place(tiny_sd1):
    m = _eraser(tiny_sd1, templates=["a photo of a {}"], concepts=[CONCEPT], attack_steps=1)
    ids, at, k = m.adversary.layout("a photo of a hot dog", "hot dog")
    whole = m.c.tokenizer("a photo of a hot dog", padding="max_length", max_length=77).input_ids
    assert ids == whole  # split around the concept, the prompt tokenizes as it does whole
    concept_ids = m.c.tokenizer("hot dog", add_special_tokens=False).input_ids
    assert ids[at:at + k] == concept_ids and at == 1 + len(m.c.tokenizer("a photo of a", add_special_tokens=False)
                                                            .input_ids)
    with pytest.raises(MethodError, match="does not contain 'cat'"):
        m.adversary.layout(PROMPT, "cat")


def test_delta_at_the_concepts_own_embeddings_is_the_plain_prompt(tiny_sd1):
    m = _eraser(tiny_sd1, concepts=[PROMPT], attack_steps=1)
    adv = m.adversary
    delta = {PROMPT: adv.start(PROMPT, PROMPT, m.device)}
    assert delta[PROMPT].shape == (len(m.c.tokenizer(PROMPT, add_special_tokens=False).input_ids),
                                   m.c.text_encoder.config.hidden_size)
    with torch.no_grad():
        swapped = adv.encode([PROMPT], [PROMPT], delta)
    torch.testing.assert_close(swapped, m._stack([PROMPT]), rtol=0, atol=1e-6)
    with torch.no_grad():
        noise = torch.randn(delta[PROMPT].shape, generator=torch.Generator().manual_seed(0))
        moved = adv.encode([PROMPT], [PROMPT], {PROMPT: delta[PROMPT] + noise})
    assert (moved - swapped).abs().max() > 1e-3  # the hook really puts delta in


def test_the_attack_lowers_its_loss_and_changes_no_weight(tiny_sd1):
    m = _eraser(tiny_sd1, concepts=[CONCEPT], templates=["a photo of a {}"], attack_steps=30, attack_lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a student that no longer draws the concept: its cross-attention keys moved
        for name, p in m.c.unet.named_parameters():
            if "attn2.to_k" in name or "attn2.to_v" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
    x_t, t = _x_t(m)
    (eps_e,) = m.teacher_eps(x_t, t, [[PROMPT]])
    student = lambda x, s, cond: m.unet(x, s, cond).sample  # noqa: E731
    before_weights = {k: p.detach().clone() for k, p in m.c.unet.named_parameters()}
    with torch.no_grad():
        plain = losses.mse(student(x_t, t, m._stack([PROMPT])), eps_e).item()
    cond = m.adversary.attack(student, x_t, t, eps_e, [PROMPT], [CONCEPT])
    with torch.no_grad():
        attacked = losses.mse(student(x_t, t, cond), eps_e).item()
    assert attacked < 0.9 * plain, (plain, attacked)
    assert not cond.requires_grad
    assert all(p.grad is None for p in m.c.unet.parameters())
    assert all(torch.equal(p, before_weights[k]) for k, p in m.c.unet.named_parameters())
    kept = m.adversary.delta[CONCEPT].clone()  # warm start: the next round begins where this one ended
    assert torch.equal(m.adversary.start(CONCEPT, PROMPT, m.device), kept)


def test_the_outer_loss_trains_the_filtered_parameters_and_off_adds_nothing(tiny_sd1):
    m = _eraser(tiny_sd1, concepts=[CONCEPT], templates=["a photo of a {}"], attack_steps=2)
    out = m.training_step({"concepts": [0]}, torch.Generator().manual_seed(3))
    assert out["loss_adv"].item() > 0 and m.loss_weights()["loss_adv"] == 1.0
    out["loss_adv"].backward()
    assert {k for k, p in m.c.unet.named_parameters() if p.grad is not None} == set(m.params)
    assert all(p.grad is None for p in m.c.text_encoder.parameters())
    meta = m.artifact().metadata
    assert (meta["attack_steps"], meta["attack_lr"], meta["lambda_adv"]) == ("2", "0.001", "1.0")

    off = _eraser(tiny_sd1, concepts=[CONCEPT], templates=["a photo of a {}"])
    assert off.adversary is None
    out = off.training_step({"concepts": [0]}, torch.Generator().manual_seed(3))
    assert "loss_adv" not in out and "attack_steps" not in off.artifact().metadata


@pytest.mark.parametrize("options, match", [({"attack_steps": -1}, "attack_steps=-1"),
                                            ({"attack_steps": 3, "attack_lr": 0.0}, "attack_lr=0.0")])
def test_bad_attack_settings_are_refused(tiny_sd1, options, match):
    with pytest.raises(MethodError, match=match):
        _eraser(tiny_sd1, **options)
