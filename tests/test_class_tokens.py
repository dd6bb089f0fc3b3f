"""Discriminative class tokens (issue 18): the cross-entropy and its negation against hand-computed values, the
official early stop as a pure function, a classifier's preprocessing made differentiable against transformers'
own image processors, the steering classifiers (a ViT built from a config, the toy judge), and the method on a
tiny SD through the loop: only the token row moves, exactly `grad_steps` UNet calls keep the graph, the noise is
fixed per seed (or fresh per step) and a collapse moves it on, a batch trains as accumulation does, the early
stop ends training and writes the best-loss token; and steering with a smooth classifier on the toy model."""

import math

import numpy as np
import pytest
import torch

from personalize.artifacts import load_artifact
from personalize.methods.class_tokens.losses import StopRule, correct, loss_ce
from personalize.methods.class_tokens.preprocess import Preprocess


def test_loss_ce_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # -log softmax: image 0 toward class 0: log(1 + 2 e^-2); image 1 toward class 0: log(2 + e)
    want = (math.log(1 + 2 * math.exp(-2)) + math.log(2 + math.e)) / 2
    assert loss_ce(logits, 0).item() == pytest.approx(want, rel=1e-6)
    assert loss_ce(logits, 0, negate=True).item() == pytest.approx(-want, rel=1e-6)
    assert correct(logits, 0) == 1 and correct(logits, 0, negate=True) == 1 and correct(logits, 1) == 1


def test_loss_ce_gradient_raises_the_target_logit():
    logits = torch.zeros(1, 4, requires_grad=True)
    loss_ce(logits, 2).backward()
    grad = logits.grad[0]  # softmax - onehot: (0.25, 0.25, -0.75, 0.25)
    assert torch.allclose(grad, torch.tensor([0.25, 0.25, -0.75, 0.25]))


def _run(rule, losses, accuracies, n=5, seed=35):
    state, saved, stopped_at = rule.start(seed), [], None
    for k, (loss, acc) in enumerate(zip(losses, accuracies)):
        state, best, stop = rule.update(state, loss, acc, n)
        saved += [k] if best else []
        if stop:
            stopped_at = k
            break
    return state, saved, stopped_at


def test_early_stop_keeps_the_best_step_and_resets_patience():
    rule = StopRule(patience=2, max_steps=50)
    state, saved, stopped = _run(rule, [5.0, 4.0, 4.5, 4.2, 3.0, 3.5, 3.9, 3.1], [0] * 8)
    assert saved == [0, 1, 4]  # every new lowest loss is saved; the best is step 4, not the last
    assert state.best_step == 4 and state.best_loss == 3.0
    assert stopped == 7  # after step 4: patience 2 -> 1 -> 0 -> -1 at step 7


def test_early_stop_on_accuracy_strictly_above_the_bar_and_at_the_cap():
    rule = StopRule()
    assert _run(rule, [5.0, 4.0], [3, 4])[2] == 1  # 4/5 = 0.8 > 0.7
    assert _run(rule, [5.0, 4.0, 3.0], [7, 7, 7], n=10)[2] is None  # 0.7 is not above 0.7
    state, _, stopped = _run(rule, [10.0 - 0.1 * k for k in range(60)], [0] * 60)
    assert stopped == 49 and state.steps == 50  # max_steps optimizer steps at most


def test_a_collapse_moves_to_the_next_seed():
    rule = StopRule(patience=15)
    state, saved, _ = _run(rule, [2.0, 1.0, 2.5, 1.5, 0.9], [0] * 5, seed=35)
    assert state.seed == 36  # 2.5 > 2 x 1.0 once; 1.5 is not
    assert saved == [0, 1, 4] and state.patience == 15


@pytest.mark.parametrize("name", ["vit", "clip"])
def test_preprocessing_matches_the_image_processor_and_passes_gradients(name):
    from PIL import Image

    if name == "vit":
        from transformers import ViTImageProcessor as Processor
        processor = Processor(size={"height": 40, "width": 40}, resample=2)
    else:
        from transformers import CLIPImageProcessor as Processor
        processor = Processor(size={"shortest_edge": 40}, crop_size={"height": 36, "width": 36}, resample=3)
    yy, xx = np.mgrid[0:48, 0:64] / 64.0  # a smooth image, 48 x 64
    rgb = np.stack([xx, yy, 0.5 + 0.4 * np.sin(6 * xx) * np.cos(4 * yy)], axis=-1)
    pil = Image.fromarray((rgb * 255).round().astype(np.uint8))
    reference = processor(images=pil, return_tensors="pt").pixel_values  # (1, 3, h, w)
    pre = Preprocess.from_config(processor.to_dict())
    image = torch.tensor(np.asarray(pil) / 255.0, dtype=torch.float32).permute(2, 0, 1)[None].requires_grad_(True)
    ours = pre(image)
    assert ours.shape == reference.shape
    std = torch.tensor(processor.image_std)[:, None, None]
    assert ((ours - reference).abs() * std).max() < 1e-2  # within 1e-2 in [0, 1] pixel units
    ours.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_preprocessing_refuses_a_size_it_cannot_read():
    with pytest.raises(ValueError, match="shortest_edge"):
        Preprocess.from_config({"size": {"longest_edge": 224}})


def test_a_transformers_classifier_is_frozen_names_its_classes_and_passes_gradients(tiny_vit):
    from personalize.methods.class_tokens.classifiers import class_name, hf_classifier

    clf = hf_classifier(str(tiny_vit))
    assert not clf.model.training and not any(p.requires_grad for p in clf.model.parameters())
    assert clf.target("tiger cat") == {"logits": 0} and clf.target("Tiger Cat, cat") == {"logits": 0}
    assert clf.target(2) == {"logits": 2} and clf.target("1") == {"logits": 1}
    assert class_name(clf.labels["logits"][1]) == "great dane"
    with pytest.raises(Exception, match="no class 'zebra'.*'car'"):
        clf.target("zebra")
    with pytest.raises(Exception, match="outside 0..2"):
        clf.target(3)
    images = torch.rand(2, 3, 48, 48, requires_grad=True)
    logits = clf.logits(images)["logits"]  # (2, 3)
    assert logits.shape == (2, 3)
    loss_ce(logits, 0).backward()
    assert images.grad.abs().sum() > 0


def test_the_toy_judge_as_classifier_reads_a_rendered_identity():
    from personalize.methods.class_tokens.classifiers import bundled_classifier, identity_target
    from personalize.toyworld import world as w

    clf = bundled_classifier("toyworld-a")
    identity = sorted(w.HELD_OUT_IDENTITIES)[5]
    target = clf.target(identity_target(identity))
    assert set(target) == {"kind", "face_shape", "skin", "hair_color", "hair_style"}
    renders = [w.render(w.Scene("face", bg, identity=identity)) for bg in ("blue", "green", "white")]
    images = torch.tensor(np.stack([np.asarray(r) for r in renders]) / 255.0, dtype=torch.float32).permute(0, 3, 1, 2)
    logits = clf.logits(torch.nn.functional.interpolate(images, size=64, mode="nearest"))  # any size is resized
    for head, k in target.items():
        assert (logits[head].argmax(-1) == k).all(), head
    with pytest.raises(Exception, match="heads"):
        clf.target("round")  # several heads: the target must name them


# ------------------------------------------------------------------------------------------- the method

def _dct_config(model, out, classifier, **options):
    from personalize.config import load_config

    method = {"name": "dct", "classifier": str(classifier), "target": "car", "sample_steps": 4,
              "guidance_scale": 3.0} | options
    return load_config([], {"model": {"pretrained": str(model), "local_files_only": True},
                            "train": {"output_dir": str(out), "max_train_steps": 3, "report_to": "none",
                                      "seed": 35, "gradient_accumulation_steps": 2, "learning_rate": 5e-2,
                                      "checkpointing_steps": 10_000, "adam_weight_decay": 1e-2},
                            "method": method})


def _train_dct(cfg):
    from personalize.trainer import train

    return train(cfg)


def test_dct_moves_only_its_token_row_and_writes_one_embedding(tiny_sd1, tiny_vit, tmp_path):
    from personalize.components import load_components

    base = load_components(str(tiny_sd1))
    table = base.text_encoder.get_input_embeddings().weight.detach().clone()
    unet = {k: v.clone() for k, v in base.unet.state_dict().items()}
    result = _train_dct(_dct_config(tiny_sd1, tmp_path / "out", tiny_vit))
    c = result.method.c
    after = c.text_encoder.get_input_embeddings().weight
    assert after.shape[0] == table.shape[0] + 1
    assert torch.equal(after[:-1], table)  # every other row bitwise equal, weight decay included
    assert not torch.equal(after[-1], table[c.tokenizer.convert_tokens_to_ids("a</w>")])  # the token moved
    assert all(torch.equal(v, c.unet.state_dict()[k]) for k, v in unet.items())
    art = load_artifact(result.artifact)
    assert art.triggers == ["dct-car"] and art.embeddings["dct-car"].shape == (1, 32) and art.kind == "none"
    assert art.metadata["target_label"] == "car" and art.metadata["class_name"] == "car"


@pytest.mark.parametrize("grad_steps", [1, 2])
def test_exactly_grad_steps_unet_calls_keep_the_graph(tiny_sd1, tiny_vit, tmp_path, grad_steps):
    method = _setup_dct(_dct_config(tiny_sd1, tmp_path, tiny_vit, grad_steps=grad_steps), tiny_sd1)
    calls = []
    handle = method.c.unet.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    image = method.generate(method.prompts[0], method.latents_for(0))
    handle.remove()
    assert calls == [False] * (4 - grad_steps) + [True] * grad_steps  # one CFG-batched call per step
    assert image.shape[:2] == (1, 3) and image.requires_grad and 0 <= float(image.min()) <= float(image.max()) <= 1
    assert torch.equal(method.latents_for(1), method.latents_for(1))  # the same noise every step...
    method.state = method.rule.update(method.state, 10.0, 0, 2)[0]  # (a first step: best 10)
    method.state = method.rule.update(method.state, 25.0, 0, 2)[0]  # a collapse: the next seed
    assert method.state.seed == 36 and not torch.equal(method.latents_for(1), noise_before(method))


def test_fresh_noises_change_every_step_and_repeat_on_resume(tiny_sd1, tiny_vit, tmp_path):
    fixed = _setup_dct(_dct_config(tiny_sd1, tmp_path, tiny_vit), tiny_sd1)
    assert torch.equal(fixed.latents_for(1, 0), fixed.latents_for(1, 7))  # run.py: the same images every step
    fresh = _setup_dct(_dct_config(tiny_sd1, tmp_path, tiny_vit, noise="fresh"), tiny_sd1)
    assert torch.equal(fresh.latents_for(1, 3), fresh.latents_for(1, 3))  # a function of (seed, step, image)
    assert not torch.equal(fresh.latents_for(1, 3), fresh.latents_for(1, 4))
    assert not torch.equal(fresh.latents_for(0, 3), fresh.latents_for(1, 3))
    other = _dct_config(tiny_sd1, tmp_path, tiny_vit, noise="fresh")
    other.train.seed = 36  # the training seed draws the noises (method.noise_seed unset)
    assert not torch.equal(_setup_dct(other, tiny_sd1).latents_for(1, 3), fresh.latents_for(1, 3))
    pinned = _dct_config(tiny_sd1, tmp_path, tiny_vit, noise="fresh", noise_seed=35)
    pinned.train.seed = 36
    assert torch.equal(_setup_dct(pinned, tiny_sd1).latents_for(1, 3), fresh.latents_for(1, 3))
    with pytest.raises(Exception, match="method.noise='random'.*'fixed'"):
        _setup_dct(_dct_config(tiny_sd1, tmp_path, tiny_vit, noise="random"), tiny_sd1)


def test_a_batch_of_images_trains_the_token_as_accumulating_them_does(tiny_sd1, tiny_vit, tmp_path):
    tokens, losses = [], []
    for accum, batch in ((2, 1), (1, 2)):
        cfg = _dct_config(tiny_sd1, tmp_path / f"{accum}x{batch}", tiny_vit, noise="fresh", num_prompts=2)
        cfg.train.max_train_steps, cfg.train.gradient_accumulation_steps = 2, accum
        cfg.train.train_batch_size = batch
        result = _train_dct(cfg)
        tokens.append(result.method.param.detach().clone())
        losses.append(result.method.state.best_loss)
    assert torch.allclose(tokens[0], tokens[1], atol=1e-5), (tokens[0] - tokens[1]).abs().max()
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)  # the step loss: the sum over its images


def noise_before(method):
    gen = torch.Generator().manual_seed(35)
    size = method.c.unet.config.sample_size
    return torch.randn((2, 4, size, size), generator=gen)[1:2]


def test_a_second_classifier_reports_on_images_training_never_used(tiny_sd1, tiny_vit, tmp_path):
    cfg = _dct_config(tiny_sd1, tmp_path / "out", tiny_vit, eval_classifier=str(tiny_vit), eval_images=3)
    meta = load_artifact(_train_dct(cfg).artifact).metadata
    assert meta["eval_classifier"] == str(tiny_vit) and meta["eval_images"] == "3"
    # the same classifier twice reads the same 3 images the same way
    assert meta["eval_accuracy_held_out"] == meta["eval_accuracy_steering"]
    assert meta["eval_accuracy_held_out"] in ("0.000", "0.333", "0.667", "1.000")
    plain = load_artifact(_train_dct(_dct_config(tiny_sd1, tmp_path / "plain", tiny_vit)).artifact).metadata
    assert "eval_accuracy_held_out" not in plain
    with pytest.raises(Exception, match="heads"):  # the judge has no single "car" class: refused before training
        _train_dct(_dct_config(tiny_sd1, tmp_path / "bad", tiny_vit, eval_classifier="toyworld-b"))
    assert not list((tmp_path / "bad").glob("*.safetensors"))


def test_the_early_stop_ends_training_and_writes_the_best_token(tiny_sd1, tiny_vit, tmp_path):
    cfg = _dct_config(tiny_sd1, tmp_path / "out", tiny_vit, stop_accuracy=-1.0)  # any accuracy is above -1
    cfg.train.max_train_steps = 5
    result = _train_dct(cfg)
    assert result.step == 1 and result.artifact is not None
    assert load_artifact(result.artifact).metadata["best_step"] == "0"


def _setup_dct(cfg, model):
    from accelerate import Accelerator

    from personalize.components import load_components
    from personalize.methods import parse_options
    from personalize.methods.class_tokens import dct

    method = dct.build(parse_options("dct", cfg.method), cfg)
    method.setup(load_components(str(model)), cfg, Accelerator(cpu=True))
    return method


# ------------------------------------------------------------- steering with a smooth classifier (spec check 4)

def _red_minus_green(images):
    """A fixed, smooth classifier on the channel means: P("red") = sigmoid(2 (20 (r - g) - 2))."""
    mean = images.mean(dim=(2, 3))  # (B, 3)
    score = 20 * (mean[:, 0] - mean[:, 1]) - 2.0
    return {"logits": torch.stack([score, -score], dim=-1)}


def _p_red(method, seed):
    from dataclasses import replace

    method.state = replace(method.state, seed=seed)
    with torch.no_grad():
        x = method.noises(0)  # the noises of seed `seed` (noise "fixed": the same every step)
        p = _red_minus_green(method.generate([method.prompts[0]] * len(x), x))["logits"].softmax(-1)[:, 0]
    return float(p.mean()), int((p > 0.5).sum())


@pytest.mark.parametrize("grad_steps", [1, 4])
def test_steering_raises_p_target_on_the_training_noises_and_on_others(tmp_path, monkeypatch, grad_steps):
    """The toy model draws "a <token> circle on a white background"; the token, steered toward "red" by the
    smooth classifier for 10 steps on 4 fixed noises, makes red circles there and on 4 noises it never saw."""
    from personalize.config import load_config
    from personalize.methods.class_tokens import dct
    from personalize.methods.class_tokens.classifiers import Classifier

    clf = Classifier("red-green", torch.nn.Identity(), {"logits": ["red", "green"]}, _red_minus_green)
    monkeypatch.setattr(dct, "load_classifier", lambda name, local: clf)
    cfg = load_config([], {
        "model": {"pretrained": "toyworld"},
        "train": {"output_dir": str(tmp_path), "max_train_steps": 10, "report_to": "none", "train_batch_size": 4,
                  "seed": 35,  # the training noises: seed 35; the others: seed 99
                  "learning_rate": 5e-2, "checkpointing_steps": 10**6},
        "method": {"name": "dct", "classifier": "red-green", "target": "red", "class_name": "circle",
                   "sample_steps": 4, "grad_steps": grad_steps, "guidance_scale": 5.0, "num_prompts": 1,
                   "templates": ["a {} on a white background"], "patience": 1000, "stop_accuracy": 1.0}})
    before = _setup_dct(cfg, "toyworld")
    train_before, held_before = _p_red(before, 35), _p_red(before, 99)
    result = _train_dct(cfg)
    after = _setup_dct(cfg, "toyworld")
    with torch.no_grad():
        after.param.copy_(load_artifact(result.artifact).embeddings["dct-circle"])
    train_after, held_after = _p_red(after, 35), _p_red(after, 99)
    # measured: training noises 0.10 -> 0.98-0.99 (0 -> 4 of 4 red), others 0.20 -> 0.64-0.80 (0 -> 2-3 of 4)
    assert train_before[0] < 0.2 and train_after[0] > 0.9 and train_after[1] == 4, (train_before, train_after)
    assert held_after[0] > held_before[0] + 0.3 and held_after[1] >= held_before[1], (held_before, held_after)
    assert result.method.state.best_loss < 4 * -math.log(train_before[0])  # the step loss went down from ~4 x 2.3
