"""The multi-seed effect harness (personalize.eval.stats, personalize.eval.effects): hand-computed
statistics, a known synthetic effect detected, a null one not (at about the nominal 5 % rate), the report files,
and the command's errors. No training here: the toy-world effects themselves are in test_*_effect(s).py."""

import json
import random
from pathlib import Path

import pytest

from personalize.eval import effects, stats

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "toyworld"


def test_t_quantiles_are_the_textbook_values():
    assert stats.t975(1) == 12.706 and stats.t975(4) == 2.776 and stats.t975(9) == 2.262
    assert stats.t975(22) == 2.060  # between tabulated values: the next one up (a slightly wider interval)
    assert stats.t975(1000) == 1.96
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stats.t975(0)


def test_paired_effect_by_hand():
    # deltas 1, 2, 3: mean 2, sd 1, se 1/sqrt(3) = 0.57735; half width 4.303 * 0.57735 = 2.48434
    e = stats.paired_effect([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert stats.num(0.0123) == "0.012" and stats.num(-0.00123, True) == "-1.23e-03" and stats.num(0.5, True) == "+0.500"
    assert e.n == 3 and e.mean == pytest.approx(2.0) and e.se == pytest.approx(0.57735, abs=1e-5)
    assert e.lo == pytest.approx(-0.48434, abs=1e-4) and e.hi == pytest.approx(4.48434, abs=1e-4)
    assert not e.detected and not e.harmful and e.verdict() == "no difference shown"
    assert 1.0 <= e.boot_lo <= e.boot_hi <= 3.0  # a bootstrap mean never leaves the range of the deltas
    # paired, not pooled: a large shared seed-to-seed spread cancels in the differences
    e = stats.paired_effect([0.1, 0.5, 0.9, 0.3], [0.2, 0.6, 1.0, 0.4])
    assert e.mean == pytest.approx(0.1) and e.se == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="one value per seed"):
        stats.paired_effect([1, 2], [1])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stats.paired_effect([1], [1])


def _arms(rng, effect, n=5):
    """A synthetic pair of arms over n seeds: a seed-to-seed spread of 0.1 shared by both arms, noise 0.03."""
    base = [0.5 + rng.gauss(0, 0.1) for _ in range(n)]
    return base, [b + effect + rng.gauss(0, 0.03) for b in base]


def test_a_known_effect_is_detected_and_a_null_one_is_not():
    rng = random.Random(0)
    assert all(stats.paired_effect(*_arms(rng, 0.10), bootstrap=False).detected for _ in range(50))  # 0.10 = 7 se at n=5
    assert all(stats.paired_effect(*_arms(rng, -0.10), bootstrap=False).harmful for _ in range(50))
    false = sum(stats.paired_effect(*_arms(rng, 0.0), bootstrap=False).detected for _ in range(1000))
    assert 20 <= false <= 45  # a one-sided false positive rate of 2.5 % (binomial 95 % range for 1000: 16-35)


def _fake_run(effect):
    rng = random.Random(1)

    def run_seed(seed):
        base, treated = _arms(rng, effect, n=1)
        return {"base": {"composition": base[0], "fidelity": 0.8}, "regularized": {"composition": treated[0],
                                                                                 "fidelity": 0.8}}
    return run_seed


def test_the_harness_reports_a_synthetic_effect_and_a_null(tmp_path):
    rows = effects.grid([1, 2, 3, 4, 5], _fake_run(0.2), progress=False)
    assert [(r["arm"], r["seed"]) for r in rows[:2]] == [("base", 1), ("regularized", 1)]
    found = stats.effects(rows, "base")["regularized"]
    assert found["composition"].detected and found["composition"].n == 5
    assert found["fidelity"].mean == 0 and not found["fidelity"].detected
    text = effects.report(rows, tmp_path, title="synthetic", notes="known +0.2")
    assert "| composition |" in text and "| higher |" in text and "known +0.2" in text
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    assert (tmp_path / "effects.md").read_text() == text
    assert (tmp_path / "effects.png").read_bytes()[:4] == b"\x89PNG"
    null = effects.grid([1, 2, 3, 4, 5], _fake_run(0.0), progress=False)
    assert "| higher |" not in effects.report(null, tmp_path / "null", plot=False)


def test_rows_are_paired_by_seed_not_by_order():
    rows = [{"arm": "regularized", "seed": 2, "x": 0.9}, {"arm": "base", "seed": 1, "x": 0.1},
            {"arm": "base", "seed": 2, "x": 0.8}, {"arm": "regularized", "seed": 1, "x": 0.3}]
    e = stats.effects(rows, "base")["regularized"]["x"]
    assert e.deltas == pytest.approx((0.2, 0.1))
    with pytest.raises(ValueError, match="reference arm 'none'"):
        stats.effects(rows, "none")


def test_arms_from_config_applies_overrides_to_both_arms():
    arms, train, prompt = effects.arms_from_config(
        CONFIGS / "sude.yaml", ["--train.learning_rate=3e-4", "--method.lambda_sude=2", "--method.base.name=lora"])
    assert float(train["learning_rate"]) == 3e-4 and arms["regularized"]["lambda_sude"] == 2
    assert arms["base"] == {"name": "lora"} and arms["regularized"]["base"] == {"name": "lora"}
    assert prompt == "a photo of a sks person" and effects.subject_for(arms) == "face"
    assert effects.subject_for(effects.arms_from_config(CONFIGS / "classdiffusion.yaml")[0]) == "circle"


def test_the_command_rejects_bad_input_before_training(tmp_path, capsys):
    assert effects.main([str(CONFIGS / "sude.yaml"), "--seeds", "1", "--out", str(tmp_path / "a")]) == 2
    assert "--seeds must be at least 2" in capsys.readouterr().err
    assert effects.main([str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "b")]) == 2
    assert "is not a file" in capsys.readouterr().err
    plain = tmp_path / "dreambooth.yaml"
    plain.write_text("method:\n  name: dreambooth\n")
    assert effects.main([str(plain), "--out", str(tmp_path / "c")]) == 2
    assert "needs a method with a base" in capsys.readouterr().err
    assert effects.main([str(CONFIGS / "sude.yaml"), "--out", str(tmp_path / "d"), "--", "--train.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abcd")  # nothing half-written


def test_mechanism_scores_by_their_definitions(pipe_sd1):
    """text_drift is 0 for the same phrase and positive otherwise; category_margin with the class prompt as
    the subject prompt is +mean((eps_c - eps_u)^2), with the empty prompt as the subject prompt its negative."""
    from PIL import Image

    from personalize.eval import mechanism

    sd = pipe_sd1.sd
    assert mechanism.text_drift(sd, "a red dog", "a red dog") == pytest.approx(0.0, abs=1e-6)
    assert mechanism.text_drift(sd, "a red dog", "a blue car") > 1e-4
    size = sd.unet.config.sample_size * sd.vae_scale_factor
    images = [Image.new("RGB", (size, size), c) for c in ((200, 40, 40), (30, 30, 220))]
    same = mechanism.category_margin(sd, images, "a dog", "a dog", timesteps=(200, 600))
    empty = mechanism.category_margin(sd, images, "", "a dog", timesteps=(200, 600))
    assert same > 0 and empty == pytest.approx(-same, rel=1e-4)
