"""The training loop: exact resume, checkpoints, validation and logs, flags, caches."""

import json

import pytest
import torch
from helpers import train_config

from personalize.artifacts import read_safetensors
from personalize.checkpoint import list_checkpoints
from personalize.errors import PersonalizeError
from personalize.methods import REGISTRY
from personalize.trainer import TrainError, step_generator, train


def _tensors(path):
    return read_safetensors(path)[0]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


RESUME_CASES = {
    "textual_inversion": ({"num_vectors": 2}, {"gradient_accumulation_steps": 2}),
    "lora": ({"rank": 2}, {"train_batch_size": 2}),
    "custom_diffusion": ({}, {}),
}


@pytest.mark.parametrize("method", sorted(RESUME_CASES))
def test_resume_ends_with_the_same_weights(tmp_path, tiny_sd1, concept_dir, method):
    """N steps straight == N/2 steps, stop, resume from `latest`, N/2 more (torch.equal)."""
    opts, extra = RESUME_CASES[method]
    common = dict(max_train_steps=4, lr_scheduler="cosine", lr_warmup_steps=1, checkpointing_steps=2,
                  **extra)
    straight = train_config(tiny_sd1, concept_dir, tmp_path / "straight", method, opts, **common)
    straight.data.center_crop, straight.data.random_flip = False, True  # random crops/flips must replay too
    full = train(straight).artifact

    halves = train_config(tiny_sd1, concept_dir, tmp_path / "halves", method, opts, **common)
    halves.data.center_crop, halves.data.random_flip = False, True
    first = train(halves, stop_after=2)
    assert first.artifact is None and [s for s, _ in list_checkpoints(tmp_path / "halves")] == [2]
    halves.train.resume_from_checkpoint = "latest"
    second = train(halves)
    assert second.step == 4
    assert _equal(_tensors(full), _tensors(second.artifact))
    # and the halves really differ from a fresh start: resuming is not a no-op
    assert not _equal(_tensors(first_checkpoint := tmp_path / "halves" / "checkpoint-2" / "trainable.safetensors"),
                      _tensors(tmp_path / "halves" / "checkpoint-4" / "trainable.safetensors")), first_checkpoint


def test_checkpoints_total_limit_keeps_the_newest(tmp_path, tiny_sd1, concept_dir):
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "lora", max_train_steps=5, checkpointing_steps=1,
                       checkpoints_total_limit=2)
    train(cfg)
    assert [s for s, _ in list_checkpoints(tmp_path / "out")] == [4, 5]
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())  # no temp folders left


def test_resume_refuses_a_checkpoint_of_another_method(tmp_path, tiny_sd1, concept_dir):
    train(train_config(tiny_sd1, concept_dir, tmp_path / "out", "lora", max_train_steps=2, checkpointing_steps=2))
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "other", "textual_inversion", max_train_steps=4,
                       resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    with pytest.raises(PersonalizeError, match="method='lora'"):
        train(cfg)


def test_resume_path_must_be_a_checkpoint(tmp_path, tiny_sd1, concept_dir):
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "lora", resume_from_checkpoint=str(tmp_path))
    with pytest.raises(PersonalizeError, match="not a checkpoint folder"):
        train(cfg)


def test_validation_images_logs_and_config(tmp_path, tiny_sd1, concept_dir):
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "textual_inversion", max_train_steps=4,
                       validation_prompt="a {} on the beach", validation_steps=2, num_validation_images=2,
                       validation_inference_steps=2, report_to="tensorboard")
    train(cfg)
    out = tmp_path / "out"
    from PIL import Image

    grids = sorted(p.name for p in (out / "validation").iterdir())
    assert grids == ["step-000002.png", "step-000004.png"]
    # two 16 px images side by side under a line of seeds and a line with the step and the prompt (14 px each)
    assert Image.open(out / "validation" / grids[0]).size == (2 * 16, 14 + 14 + 16)
    events = list((out / "logs").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    assert {"loss", "loss_diffusion", "lr"} <= tags and any(t.startswith("validation") for t in tags)
    assert "name: textual_inversion" in (out / "config.yaml").read_text()
    meta = read_safetensors(out / "sks.safetensors")[1]
    assert json.loads(meta["config"])["train"]["max_train_steps"] == 4


def test_prior_preservation_generates_and_uses_class_images(tmp_path, tiny_sd1, concept_dir):
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "lora", max_train_steps=2,
                       with_prior_preservation=True, lambda_prior=0.5)
    cfg.data.class_prompt, cfg.data.num_class_images, cfg.data.class_generation_steps = "a photo of dog", 3, 2
    result = train(cfg)
    assert sorted(p.name for p in (tmp_path / "out" / "class_images").iterdir()) == [
        "class-00000.png", "class-00001.png", "class-00002.png"]
    batch = next(result.method.dataloader(0, 0, 1))  # class batches come from the method itself
    assert batch["is_prior"].tolist() == [False, True]
    assert result.method.loss_weights()["loss_prior"] == 0.5


@pytest.mark.parametrize("flag", ["cache_latents", "cache_text_encoder_outputs"])
def test_caches_do_not_change_the_result(tmp_path, tiny_sd1, concept_dir, flag):
    plain = train(train_config(tiny_sd1, concept_dir, tmp_path / "a", "lora", max_train_steps=4)).artifact
    cached = train(train_config(tiny_sd1, concept_dir, tmp_path / "b", "lora", max_train_steps=4,
                                **{flag: True}))
    cache = cached.method.encode_latents.cache if flag == "cache_latents" else cached.method.text_cache
    assert len(cache) > 0
    assert _equal(_tensors(plain), _tensors(cached.artifact))


def test_cache_latents_needs_a_fixed_crop(tmp_path, tiny_sd1, concept_dir):
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "lora", cache_latents=True)
    cfg.data.center_crop = False
    with pytest.raises(PersonalizeError, match="center_crop"):
        train(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [{"snr_gamma": 0.001}, {"offset_noise": True}, {"mixed_precision": "bf16"},
                                   {"gradient_checkpointing": True}])
def test_flags_change_training(tmp_path, tiny_sd1, concept_dir, flags):
    plain = train(train_config(tiny_sd1, concept_dir, tmp_path / "a", "lora", max_train_steps=2)).artifact
    flagged = train(train_config(tiny_sd1, concept_dir, tmp_path / "b", "lora", max_train_steps=2, **flags))
    a, b = _tensors(plain), _tensors(flagged.artifact)
    assert a.keys() == b.keys() and all(torch.isfinite(v).all() for v in b.values())
    if "gradient_checkpointing" in flags:  # same math, recomputed: same weights
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    else:
        assert not _equal(a, b)


@pytest.mark.parametrize("method", [n for n, r in REGISTRY.items() if r.kind == "personalization"])
def test_bf16_mixed_precision_keeps_trainable_weights_float32(tmp_path, tiny_sd1, concept_dir, method):
    result = train(train_config(tiny_sd1, concept_dir, tmp_path / "out", method, max_train_steps=2,
                                mixed_precision="bf16"))
    c = result.method.c
    assert c.vae.dtype == torch.bfloat16
    trained = [p for m in (c.unet, c.text_encoder) for p in m.parameters() if p.requires_grad]
    frozen = [p for m in (c.unet, c.text_encoder) for p in m.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trained) and all(p.dtype == torch.bfloat16 for p in frozen)
    tensors = _tensors(result.artifact)
    assert all(torch.isfinite(v).all() for v in tensors.values())
    if "sks" in tensors:  # the learned rows are saved in float32, not rounded to the table's bfloat16
        assert not torch.equal(tensors["sks"], tensors["sks"].bfloat16().float())


@pytest.mark.parametrize("flags, message", [
    ({"enable_xformers_memory_efficient_attention": True}, "CUDA GPU"),
    ({"use_8bit_adam": True}, "bitsandbytes"),
    ({"mixed_precision": "fp16"}, "fp16 needs a CUDA GPU"),
    ({"mixed_precision": "fp8"}, "expected one of no, fp16, bf16"),
    ({"lr_scheduler": "wavy"}, "train.lr_scheduler='wavy'"),
    ({"train_batch_size": 0}, "train.train_batch_size=0"),
])
def test_flags_that_cannot_work_here_say_why(tmp_path, tiny_sd1, concept_dir, flags, message):
    pytest.importorskip("torch")
    if "use_8bit_adam" in flags:
        try:
            import bitsandbytes  # noqa: F401
            pytest.skip("bitsandbytes is installed here; the missing-package error cannot be shown")
        except ImportError:
            pass
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "lora", **flags)
    with pytest.raises(PersonalizeError, match=message):
        train(cfg)
    assert not any((tmp_path / "out").glob("*.safetensors"))


def test_step_generator_depends_on_seed_step_and_rank():
    draw = lambda *a: torch.randn(4, generator=step_generator(*a))  # noqa: E731
    assert torch.equal(draw(0, 5, 0), draw(0, 5, 0))
    assert not torch.equal(draw(0, 5, 0), draw(0, 6, 0))
    assert not torch.equal(draw(0, 5, 0), draw(0, 5, 1))
    assert not torch.equal(draw(0, 5, 0), draw(1, 5, 0))


def test_the_optimizer_is_torchs_fused_adamw_with_the_same_updates():
    """make_optimizer picks the fused kernel on CPU float parameters; 20 steps match torch's reference loop
    (foreach=False) within float32 rounding, weight decay included."""
    from types import SimpleNamespace

    from personalize.trainer import fused_ok, make_optimizer

    train_cfg = SimpleNamespace(adam_weight_decay=1e-2, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                                use_8bit_adam=False)
    gen = torch.Generator().manual_seed(0)
    ours = [torch.randn(50, 7, generator=gen).requires_grad_(), torch.randn(3, generator=gen).requires_grad_()]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    opt = make_optimizer(ours, train_cfg, 1e-2)
    assert opt.param_groups[0]["fused"] is True
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    for _ in range(20):
        grads = [torch.randn(p.shape, generator=gen) for p in ours]
        for p, q, g in zip(ours, ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert not fused_ok([torch.zeros(2, dtype=torch.int64), torch.zeros(2)])  # only floating tensors
    assert not fused_ok([torch.zeros(2, device="meta")])  # neither CPU nor CUDA


def test_refuses_two_processes_that_both_think_they_are_rank_zero(tmp_path, tiny_sd1, concept_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # the launcher started 2, but this process sees a world of 1
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "lora")
    with pytest.raises(PersonalizeError, match="ACCELERATE_USE_CPU"):
        train(cfg)
    assert not (tmp_path / "out").exists()


def test_a_nan_learning_rate_is_refused_before_anything_loads(tmp_path, tiny_sd1, concept_dir):
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "textual_inversion", learning_rate=float("nan"))
    with pytest.raises(TrainError, match=r"train.learning_rate=nan: expected a finite number"):
        train(cfg)
    assert not (tmp_path / "out").exists()


def test_a_loss_that_turns_nan_stops_before_the_update_and_names_the_checkpoint(tmp_path, tiny_sd1, concept_dir,
                                                                               monkeypatch):
    from personalize.methods.personalization.tuner import Tuner

    real, calls = Tuner.training_step, []

    def step(self, batch, gen):
        calls.append(1)
        losses = real(self, batch, gen)
        return losses | ({"loss_diffusion": losses["loss_diffusion"] * float("nan")} if len(calls) == 3 else {})

    monkeypatch.setattr(Tuner, "training_step", step)
    cfg = train_config(tiny_sd1, concept_dir, tmp_path / "out", "textual_inversion", max_train_steps=4,
                       checkpointing_steps=2)
    with pytest.raises(TrainError, match=r"not finite at step 3 \(loss_diffusion=nan\).*checkpoint-2"):
        train(cfg)
    assert not list((tmp_path / "out").glob("*.safetensors"))  # no artifact
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
