"""Generation edits (`personalize.pipeline.Edit`): throw-away edits defined here, and SuppressEOT as one."""

import numpy as np
import pytest
import torch

from helpers import pixels
from personalize.errors import PersonalizeError
from personalize.methods.suppression import suppress_eot as se


class OtherPrompt:
    """Replaces the conditional embedding of every prompt by the embedding of `other` (via `prompt_embeds`)."""

    def __init__(self, other: str, log: list | None = None):
        self.other, self.log = other, [] if log is None else log

    def check(self, sd, prompts):
        self.log.append(("check", list(prompts)))

    def call_kwargs(self, sd, call):
        self.log.append(("call", sorted(call)))
        cond, _ = sd.encode_prompt([self.other] * len(call["prompt"]), "cpu", 1, False)
        new = {k: v for k, v in call.items() if k != "prompt"} | {"prompt_embeds": cond}
        return new, lambda: self.log.append(("cleanup", self.other))

    def describe(self):
        return {"other_prompt": self.other}

    def label(self):
        return f"Other prompt: {self.other}"


class Rewrite:
    """Rewrites the prompt text: `old` -> `new` in each prompt (`old` None: append `new`)."""

    def __init__(self, name: str, new: str, old: str | None = None, log: list | None = None):
        self.name, self.new, self.old, self.log = name, new, old, log if log is not None else []

    def check(self, sd, prompts):
        pass

    def call_kwargs(self, sd, call):
        self.log.append(("call", self.name))
        prompts = [p + self.new if self.old is None else p.replace(self.old, self.new) for p in call["prompt"]]
        return call | {"prompt": prompts}, lambda: self.log.append(("cleanup", self.name))

    def describe(self):
        return {self.name: self.new}

    def label(self):
        return f"{self.name}: {self.new}"


def _same(a, b) -> bool:
    return len(a) == len(b) and all((pixels(x) == pixels(y)).all() for x, y in zip(a, b))


def test_an_edit_gives_the_other_prompts_images_settings_and_label(pipe_sd1, tiny_sd1):
    log = []
    edited = pipe_sd1.generate("a dog", seed=[3, 4], steps=3, edits=[OtherPrompt("a cat", log)])
    cat = pipe_sd1.generate("a cat", seed=[3, 4], steps=3)
    dog = pipe_sd1.generate("a dog", seed=[3, 4], steps=3)
    assert _same(edited, cat) and not _same(edited, dog)
    assert log[0] == ("check", ["a dog"]) and log[-1] == ("cleanup", "a cat")
    assert set(log[1][1]) >= {"prompt", "negative_prompt", "num_images_per_prompt", "num_inference_steps",
                              "guidance_scale", "generator", "height", "width"}
    settings = edited[1].settings
    assert settings["other_prompt"] == "a cat" and settings["prompt"] == "a dog" and settings["seed"] == 4
    assert {k: v for k, v in settings.items() if k != "other_prompt"} == dog[1].settings
    text = edited[0].pnginfo().chunks[0][1].decode()
    assert text == ("parameters\x00a dog\nSteps: 3, Sampler: DDIM, CFG scale: 7.5, Seed: 3, Size: 16x16, "
                    f"Model: {tiny_sd1}, Other prompt: a cat")


def test_cleanup_runs_when_the_call_raises(pipe_sd1):
    class BadSize(Rewrite):
        def call_kwargs(self, sd, call):
            return call | {"height": 17}, lambda: self.log.append(("cleanup", self.name))  # not divisible by 8

    log = []
    with pytest.raises(ValueError, match="divisible by 8"):
        pipe_sd1.generate("a dog", seed=0, steps=2, edits=[OtherPrompt("a cat", log), BadSize("b", "x", log=log)])
    assert [e for e in log if e[0] == "cleanup"] == [("cleanup", "b"), ("cleanup", "a cat")]


def test_an_edit_that_fails_leaves_the_earlier_ones_cleaned_up(pipe_sd1):
    class Fails(Rewrite):
        def call_kwargs(self, sd, call):
            raise RuntimeError("cannot build")

    log = []
    with pytest.raises(RuntimeError, match="cannot build"):
        pipe_sd1.generate("a dog", seed=0, steps=2, edits=[Rewrite("a", " x", log=log), Fails("b", "y", log=log)])
    assert log == [("call", "a"), ("cleanup", "a")]


def test_check_sees_every_prompt_before_any_image(pipe_sd1):
    calls = []

    class NeedsCat(Rewrite):
        def check(self, sd, prompts):
            for p in prompts:
                if "cat" not in p:
                    raise PersonalizeError(f"no cat in {p!r}")

    handle = pipe_sd1.sd.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(PersonalizeError, match="no cat in 'a dog'"):
            pipe_sd1.generate(["a cat", "a dog"], seed=0, steps=2, edits=[NeedsCat("c", "", log=calls)])
    finally:
        handle.remove()
    assert calls == []  # neither call_kwargs nor the UNet ran


def test_two_edits_compose_in_order(pipe_sd1, tiny_sd1):
    log = []
    to_cat, to_bird = Rewrite("first", "cat", old="dog", log=log), Rewrite("second", "bird", old="cat", log=log)
    bird = pipe_sd1.generate("a dog", seed=[5], steps=3, edits=[to_cat, to_bird])  # dog -> cat -> bird
    assert log == [("call", "first"), ("call", "second"), ("cleanup", "second"), ("cleanup", "first")]
    cat = pipe_sd1.generate("a dog", seed=[5], steps=3, edits=[to_bird, to_cat])  # (no cat yet) dog -> cat
    assert _same(bird, pipe_sd1.generate("a bird", seed=[5], steps=3))
    assert _same(cat, pipe_sd1.generate("a cat", seed=[5], steps=3)) and not _same(bird, cat)
    assert bird[0].settings["first"] == "cat" and bird[0].settings["second"] == "bird"
    assert bird[0].pnginfo().chunks[0][1].decode().endswith(f"Model: {tiny_sd1}, first: cat, second: bird")
    assert cat[0].pnginfo().chunks[0][1].decode().endswith(f"Model: {tiny_sd1}, second: bird, first: cat")


def test_suppress_shorthand_description_and_edit_are_one_path(pipe_sd1):
    import personalize

    prompt = "a man wearing glasses"
    sugar = pipe_sd1.generate(prompt, seed=[3, 4], steps=4, edits=personalize.edits(suppress=["glasses"]))
    described = pipe_sd1.generate(prompt, seed=[3, 4], steps=4, edits={"suppress_eot": {"words": ["glasses"]}})
    built = pipe_sd1.generate(prompt, seed=[3, 4], steps=4, edits=[se.edit({"words": ["glasses"]})])
    plain = pipe_sd1.generate(prompt, seed=[3, 4], steps=4)
    assert _same(sugar, built) and _same(described, built) and not _same(sugar, plain)
    assert [g.settings for g in sugar] == [g.settings for g in built]
    assert sugar[0].settings["suppress"] == {"words": ["glasses"], "alpha": 1.0, "mode": "soft-weight",
                                             "retain_fraction": 0.2, "ito_iters": 0}
    assert sugar[0].pnginfo().chunks == built[0].pnginfo().chunks
    assert sugar[0].pnginfo().chunks[0][1].decode().endswith(", Suppress: glasses (alpha 1.0, ITO 0)")
    assert pipe_sd1.settings(prompt, 4, None, 4, edits=[se.edit({"words": ["glasses"]})]) == sugar[1].settings


def test_suppress_edit_is_the_stock_call_with_swr_embeddings(pipe_sd1):
    """The reference: the stock diffusers call given the SWR'd embedding and the step hook by hand."""
    from personalize.methods.suppression.suppress_ito import TokenSets

    prompt, sd = "a man wearing glasses", pipe_sd1.sd
    supp = se.Suppression(words=("glasses",), retain_fraction=0.0)
    cond, uncond = sd.encode_prompt([prompt], "cpu", 2, True)
    neg, positions, n = se.pipeline_positions(sd, prompt, supp.words, cond.shape[1])
    swr = se.swr(cond[0], positions, 1.0).repeat(2, 1, 1)
    hook = se.StepHook(cond, swr, [TokenSets.from_prompt(neg, n)] * 2, supp)
    ref = sd(prompt_embeds=swr, negative_prompt_embeds=uncond, num_images_per_prompt=1, num_inference_steps=4,
             generator=[torch.Generator("cpu").manual_seed(s) for s in (3, 4)], height=16, width=16,
             callback_on_step_end=hook, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]).images
    got = pipe_sd1.generate(prompt, seed=[3, 4], steps=4, edits=[se.edit(supp)])
    assert len(got) == 2 and all((pixels(g) == np.asarray(r)).all() for g, r in zip(got, ref))


def test_suppress_edit_errors(pipe_sd1):
    with pytest.raises(se.SuppressError, match="callback_on_step_end itself; pass one or the other"):
        pipe_sd1.generate("a dog", steps=2, edits=[se.edit({"words": "dog"})], callback_on_step_end=lambda *a: a[-1])
    with pytest.raises(se.SuppressError, match="needs the prompt as text"):
        pipe_sd1.generate("a dog", steps=2, edits=[OtherPrompt("a cat"), se.edit({"words": "dog"})])
    with pytest.raises(se.SuppressError, match="'cat': it is not a word or span of the prompt 'a dog'"):
        pipe_sd1.check_edits(["a cat", "a dog"], [se.edit({"words": ["cat"]})])
    with pytest.raises(se.SuppressError, match="suppress_mode 'ito'"):
        se.edit({"words": ["dog"], "suppress_mode": "ito"})
    with pytest.raises(se.SuppressError, match="at least one non-empty word"):
        se.edit(se.Suppression(words=()))
    with pytest.raises(se.SuppressError, match=r"unknown suppress option\(s\) \['alhpa'\]"):
        se.edit({"words": ["dog"], "alhpa": 1})
    assert se.edit({"words": "dog", "suppress_mode": "swr+ito"}).describe()["suppress"]["ito_iters"] == 10
    assert se.edit({"words": ["dog"], "alpha": 2.0}).label() == "Suppress: dog (alpha 2.0, ITO 0)"


def test_settings_refuse_a_clashing_edit(pipe_sd1):
    with pytest.raises(PersonalizeError, match=r"describes \['prompt'\]"):
        pipe_sd1.generate("a dog", seed=0, steps=2, edits=[Rewrite("prompt", "x")])
    with pytest.raises(PersonalizeError, match=r"describes \['suppress'\]"):
        pipe_sd1.settings("a dog", 0, edits=[se.edit({"words": "dog"}), se.edit({"words": "a"})])


def test_the_app_controls_build_edits_through_one_description(pipe_sd1, tmp_path):
    from personalize.app.ui import Callbacks
    from personalize.studio import Studio

    on = Callbacks(Studio(pipe_sd1, tmp_path, tmp_path / "out"))
    (one,) = on._edits("glasses, a hat ,", "swr+ito", None, "")
    assert one.describe()["suppress"]["words"] == ["glasses", "a hat"] and one.supp.ito_iters == 10
    assert on._edits("glasses", "off", None, "") == [] and on._edits(" , ", "swr", None, "") == []
    (other,) = on._edits("", "off", None, "", "suppress_eot", "{words: [hat], alpha: 2}")  # the generic control
    assert other.label() == "Suppress: hat (alpha 2, ITO 0)"
    with pytest.raises(PersonalizeError, match="not YAML"):
        on._edits("", "off", None, "", "suppress_eot", "words: [hat")
    with pytest.raises(PersonalizeError, match="not a generation edit; known edits: face2diffusion, suppress_eot"):
        on._edits("", "off", None, "", "lora", "")
