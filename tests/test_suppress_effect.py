"""SuppressEOT's effect in the toy world, on sets of sampling seeds, judged by Judge B.

Re-measured on prompts this test never uses, 5 sets x 8 seeds (docs/effects.md): textures detected 0.997 ->
SWR 0.519 (delta CI -0.495 to -0.461), negative prompt 0.838; accessories 1.000 -> SWR 0.480 (-0.600 to -0.440).
Here: 3 sets of seeds 2000-2011 (textures, 4 per set) / 2000-2008 (accessories, 3 per set); the bars below are the
calibration's (seeds 0-11), re-checked on these seeds.

The calibration, on toy world 1.1, scored by Judge B (seeds 0-11, DDIM 25 steps, guidance 5; rates pooled over the cases):
  textures (8 prompts, suppress "stripes"/"dots"): detected none 0.92, negative prompt 0.96, SWR 0.43, SWR+ITO 0.48;
      kept: object 1.00 / color 1.00 / shape 1.00 without suppression; SWR 1.00 / 0.65 / 0.33, SWR+ITO 1.00 / 0.63 / 0.55.
  accessories (5 prompts, suppress "glasses"/"hat", 8 seeds): detected none 1.00, SWR 0.03, SWR+ITO 0.03; kept:
      face 1.00 / expression 1.00 without; SWR 1.00 / 0.93, SWR+ITO 1.00 / 0.90.
History of the calibration: toy world 1.0 with Judge A gave SWR 0.25 / SWR+ITO 0.24 textures detected, color kept
0.95 / 0.91, negative prompt 0.96, accessories SWR 0.22 / SWR+ITO 0.28. The first 1.1 release with Judge B moved
textures to 0.44 / 0.48 and color to 0.74 / 0.70; the final 1.1 (appearance in words, trained longer) moved
color again to 0.65 / 0.63 (-0.09 / -0.07), so its bar went from 0.65x to 0.55x (about 1.5 binomial standard
errors below the measured rate, 96 images). Bars: suppressed at most 0.55 of the rate without (SWR 0.47x, ITO
0.52x measured), color at least 0.55x, a negative prompt at least 0.7x (1.05x measured).
Shape and expression are not asserted: the toy model reads them from the padding columns, the [EOT] block that
SuppressEOT must edit (`test_toy_model_reads_details_from_the_padding`); real SD reads far more from the words.
"""

import pytest
import torch

from personalize.eval.stats import effects, means
from personalize.eval.suppression import ARMS, CASES, measure_sets

pytestmark = pytest.mark.effect  # runs by default; `pytest -m 'not effect'` leaves it out

SEEDS = 8
SETS, FIRST_SEED = 3, 2000  # sampling-seed sets 2000-2011 (textures) / 2000-2008 (accessories): not the calibration's 0-11


@pytest.fixture(scope="module")
def world():
    from personalize.pipeline import load_pipeline
    from personalize.toyworld import Judge

    return load_pipeline("toyworld", device="cpu"), Judge.load("b")


@pytest.fixture(scope="module")
def texture_rows(world):
    return measure_sets(*world, CASES["texture"], ARMS, sets=SETS, per_set=4, first_seed=FIRST_SEED)


@pytest.fixture(scope="module")
def textures(texture_rows):
    return means(texture_rows)  # arm -> rates pooled over the sets (equal sizes: the mean of the set means)


@pytest.fixture(scope="module")
def accessory_rows(world):
    arms = {k: v for k, v in ARMS.items() if k != "negative_prompt"}
    return measure_sets(*world, CASES["accessory"], arms, sets=SETS, per_set=3, first_seed=FIRST_SEED)


@pytest.fixture(scope="module")
def accessories(accessory_rows):
    return means(accessory_rows)


@pytest.mark.parametrize("arm, color_bar", [("swr", 0.55), ("swr+ito", 0.55)])
def test_suppressed_texture_falls_by_half_and_the_object_keeps_its_color(textures, arm, color_bar):
    none, got = textures["none"], textures[arm]
    print(f"textures {arm}: {got} (none: {none})")
    assert got["suppressed"] <= 0.55 * none["suppressed"]
    assert got["kept:kind"] >= 0.9 * none["kept:kind"]
    assert got["kept:color"] >= color_bar * none["kept:color"]


@pytest.mark.parametrize("arm", ["swr", "swr+ito"])
def test_the_drop_holds_in_every_seed_set(texture_rows, accessory_rows, arm):
    """Paired by sampling-seed set (3 sets): the 95 % t interval of the change in detection is below zero."""
    for rows in (texture_rows, accessory_rows):
        drop = effects(rows, "none")[arm]["suppressed"]
        print(f"{arm}: suppressed {drop}")
        assert drop.harmful, drop  # harmful = the whole interval below zero: the attribute is detected less


def test_a_negative_prompt_does_not_drop_it(textures):
    """The paper's starting point: the word stays in the prompt, so a negative prompt barely helps."""
    assert textures["negative_prompt"]["suppressed"] >= 0.7 * textures["none"]["suppressed"]


def test_suppressed_accessory_falls_by_half_and_ito_keeps_the_face(accessories):
    none = accessories["none"]
    print(f"accessories: {accessories}")
    for arm in ("swr", "swr+ito"):
        assert accessories[arm]["suppressed"] <= 0.5 * none["suppressed"], arm
    assert accessories["swr+ito"]["kept:kind"] >= 0.9 * none["kept:kind"]


def test_toy_model_reads_details_from_the_padding(world):
    """Why shape and expression are not asserted above: replacing only the padding columns (after the [EOT]) of
    a plain prompt by those of the empty prompt, nothing suppressed, already loses most shapes and expressions."""
    pipe, judge = world
    sd = pipe.sd
    empty, _ = sd.encode_prompt("", "cpu", 1, False)
    prompts = {"a large blue square": ("shape", "square"), "a large green cross": ("shape", "cross"),
               "a photo of a neutral person": ("expression", "neutral")}
    rates = {"plain": [], "padding from ''": []}
    for prompt, (head, value) in prompts.items():
        cond, uncond = sd.encode_prompt(prompt, "cpu", 1, True)
        swapped = cond.clone()
        n = len(sd.tokenizer(prompt).input_ids)
        swapped[:, n:] = empty[:, n:]
        for arm, embeds in (("plain", cond), ("padding from ''", swapped)):
            out = sd(prompt_embeds=embeds.expand(SEEDS, -1, -1), negative_prompt_embeds=uncond.expand(SEEDS, -1, -1),
                     generator=[torch.Generator().manual_seed(s) for s in range(SEEDS)], num_inference_steps=25,
                     guidance_scale=5)
            rates[arm] += [p.get(head) == value for p in judge.predict(out.images)]
    plain, swapped = (sum(v) / len(v) for v in rates.values())
    print(f"detail kept: plain {plain:.2f}, padding from the empty prompt {swapped:.2f}")
    assert plain >= 0.9 and swapped <= 0.6
