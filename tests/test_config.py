"""Config: dataclass defaults, YAML diffs, dotted overrides, unknown keys named, dump round trip."""

import logging
import pytest
from pathlib import Path

from personalize.config import ConfigError, dump_config, load_config, parse_overrides
from personalize.methods import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_toyworld():
    cfg = load_config()
    assert cfg.model.pretrained == "toyworld" and cfg.train.learning_rate == 5e-4


def test_yaml_diff_and_overrides_win(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("train:\n  learning_rate: 1.0e-5\n  max_train_steps: 100\nmethod:\n  name: sude\n  sude_weight: 0.4\n")
    cfg = load_config([f], ["--train.learning_rate=1e-6", "--train.max_train_steps", "400", "--model.pretrained=x/y"])
    assert cfg.train.learning_rate == 1e-6  # '1e-6' is a YAML string: coerced to float
    assert cfg.train.max_train_steps == 400 and cfg.model.pretrained == "x/y"
    assert cfg.method == {"name": "sude", "sude_weight": 0.4}
    assert cfg.train.seed == 0  # untouched default


def test_later_files_override_earlier(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("train: {seed: 1, train_batch_size: 2}\n")
    b.write_text("train: {seed: 7}\n")
    cfg = load_config([a, b])
    assert (cfg.train.seed, cfg.train.train_batch_size) == (7, 2)


@pytest.mark.parametrize("text,key", [("train:\n  lr: 1\n", "train.lr"), ("optimizer: {}\n", "optimizer")])
def test_unknown_yaml_key_is_named(tmp_path, text, key):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'") as err:
        load_config([f])
    assert "bad.yaml" in str(err.value)


def test_unknown_override_and_bad_type():
    with pytest.raises(ConfigError, match="unknown config key 'model.pretrain'"):
        load_config([], ["--model.pretrain=foo"])
    with pytest.raises(ConfigError, match="'train.max_train_steps' expects int"):
        load_config([], ["--train.max_train_steps=many"])
    with pytest.raises(ConfigError, match="expected an override"):
        parse_overrides(["train.seed=1"])


def test_optional_and_bool_coercion():
    cfg = load_config([], ["--train.snr_gamma=5", "--model.local_files_only=true", "--train.resume_from_checkpoint=latest"])
    assert cfg.train.snr_gamma == 5.0 and isinstance(cfg.train.snr_gamma, float)
    assert cfg.model.local_files_only is True and cfg.train.resume_from_checkpoint == "latest"
    cfg = load_config([], ["--train.snr_gamma=null"])
    assert cfg.train.snr_gamma is None


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(["/nonexistent/x.yaml"])


def test_dump_round_trip(tmp_path):
    cfg = load_config([], ["--train.seed=3", "--method.name=lora", "--method.rank=4"])
    path = tmp_path / "resolved.yaml"
    dump_config(cfg, path)
    again = load_config([path])
    assert again == cfg


def test_base_yaml_states_every_default():
    """configs/base.yaml lists every key once with the dataclass default."""
    from pathlib import Path

    from personalize.config import Config, read_yaml, to_dict

    base = read_yaml(Path(__file__).parents[1] / "configs" / "base.yaml")
    assert base == to_dict(Config())


METHOD_CONFIGS = [name for name, record in REGISTRY.items() if record.build is not None]  # every trained method


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_method_configs_are_diffs_with_valid_options(name):
    """configs/<method>.yaml: the method options parse, and shared keys appear only where they differ."""
    import yaml

    from personalize.config import Config, to_dict
    from personalize.methods import parse_options

    path = ROOT / "configs" / f"{name}.yaml"
    cfg = load_config([path])
    assert cfg.method["name"] == name
    parse_options(name, cfg.method)
    defaults = to_dict(Config())
    raw = yaml.safe_load(path.read_text())
    same = [f"{section}.{k}" for section in ("model", "data", "train")
            for k, v in (raw.get(section) or {}).items() if defaults[section][k] == v
            and k != "instance_data_dir"]  # shown as the one key every user sets
    assert same == [], f"{path.name} repeats defaults: {same}"


def test_old_loss_weight_names_still_read_with_a_warning(caplog):
    from personalize.methods import parse_options

    with caplog.at_level(logging.WARNING):
        cfg = load_config([], ["--train.prior_loss_weight=0.25"])
        options = parse_options("sude", {"name": "sude", "class_word": "dog", "sude_weight": 1.5})
    assert cfg.train.lambda_prior == 0.25 and options.lambda_sude == 1.5
    assert "'train.prior_loss_weight' is now 'train.lambda_prior'" in caplog.text
    assert "'method.sude_weight' of method sude is now 'method.lambda_sude'" in caplog.text
    with pytest.raises(ConfigError, match="unknown config key 'train.prior_weight'"):
        load_config([], ["--train.prior_weight=1"])


def _bomb(levels: int = 9) -> str:
    """A list whose YAML aliases expand to 9**levels strings (the 'billion laughs' shape), in a few hundred bytes."""
    parts = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    parts += [f"&a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def test_an_alias_bomb_inside_a_list_option_is_refused_quickly(tmp_path):
    import time

    f = tmp_path / "bomb.yaml"
    f.write_text(f"method:\n  name: esd\n  concepts: {_bomb()}\n")
    assert len(f.read_bytes()) < 600
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config([f])
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        load_config([], [f"--method.concepts={_bomb()}"])
    assert time.perf_counter() - start < 5  # refused after counting, not after expanding 387 million strings
    load_config([], {"method": {"name": "esd", "concepts": ["a triangle"] * 1000}})  # big but honest: fine
