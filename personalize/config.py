"""Config schema: defaults live once, in dataclasses; YAML files are diffs; dotted overrides win.

    cfg = load_config(["configs/sude.yaml"], ["--train.learning_rate=1e-6", "--train.max_train_steps=400"])

Names follow diffusers' example scripts where one exists. An unknown key anywhere,
in a YAML file or on the command line, raises ``ConfigError`` naming the key and the known ones.
The ``method`` section is free-form here: each method checks its own keys (methods registry).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from personalize.errors import PersonalizeError, read_text
from personalize.profiles import TOY

logger = logging.getLogger(__name__)
# old key -> its name now: loss weights are `lambda_<term>` everywhere (the old names still read, with a warning)
RENAMED = {"train.prior_loss_weight": "train.lambda_prior"}


class ConfigError(PersonalizeError):
    """A config file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    # diffusers folder, hub id, single-file .safetensors checkpoint, or a bundled model's name (the toy world)
    pretrained: str = TOY
    revision: str | None = None
    variant: str | None = None
    # never contact the hub; a local path is always loaded with local_files_only=True
    local_files_only: bool = False
    # single-file checkpoints only: diffusers folder or hub id whose configs describe the model
    # (diffusers' `from_single_file(config=...)`); None lets diffusers infer it
    single_file_config: str | None = None


@dataclass
class DataConfig:
    instance_data_dir: str | None = None
    instance_prompt: str | None = None
    class_data_dir: str | None = None
    class_prompt: str | None = None
    resolution: int | None = None  # None: the base model's native size
    center_crop: bool = True
    random_flip: bool = False
    num_class_images: int = 100
    class_generation_steps: int = 50  # sampling steps for generated class images


@dataclass
class TrainConfig:
    output_dir: str = "outputs/run"
    seed: int = 0
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    max_train_steps: int = 500
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    enable_xformers_memory_efficient_attention: bool = False
    use_8bit_adam: bool = False
    with_prior_preservation: bool = False
    lambda_prior: float = 1.0  # the prior-preservation term's weight (diffusers' --prior_loss_weight)
    snr_gamma: float | None = None
    offset_noise: bool = False  # add 0.1 * per-channel noise (train_dreambooth.py --offset_noise)
    cache_latents: bool = False  # encode each image (and flip) once; needs center_crop
    cache_text_encoder_outputs: bool = False  # when the text encoder is frozen
    dataloader_num_workers: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    validation_prompt: str | None = None
    validation_steps: int = 100
    num_validation_images: int = 4
    validation_inference_steps: int = 25
    report_to: str = "tensorboard"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # {"name": <registry key>, ...method-specific keys}; checked by the method itself
    method: dict[str, Any] = field(default_factory=lambda: {"name": "textual_inversion"})


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one leaf value against its annotation; YAML gives '1e-6' as a string."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin in (dict, list):
        if not isinstance(value, origin):
            raise ConfigError(f"config key '{key}' expects a {origin.__name__}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if value is False and key.endswith("mixed_precision"):
            return "no"  # YAML 1.1 reads accelerate's/diffusers' spelling `no` as False
    else:
        return value
    raise ConfigError(f"config key '{key}' expects {tp.__name__}, got {value!r}")


def did_you_mean(key: str, names) -> str:
    """' (did you mean 'learning_rate'?)' for a near miss among `names`, else ''."""
    import difflib

    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _merge(obj: Any, diff: dict, prefix: str = "") -> None:
    """Apply a nested dict of values onto a dataclass instance, in place."""
    if not isinstance(diff, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {diff!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in diff.items():
        dotted = f"{prefix}{key}"
        if dotted in RENAMED:
            logger.warning("config key '%s' is now '%s' (the old name is deprecated)", dotted, RENAMED[dotted])
            dotted = RENAMED[dotted]
            key = dotted.rsplit(".", 1)[-1]
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'{did_you_mean(key, names)}; known keys here: "
                              f"{', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, dotted + ".")
        elif key == "method" and isinstance(current, dict) and isinstance(value, dict):
            merge_sections(current, value)  # method keys are checked by the method itself
        else:
            setattr(obj, key, coerce(value, hints[key], dotted))


def merge_sections(current: dict, diff: dict) -> None:
    """Merge a free-form section in place, nested sections key by key. A section given by its name alone
    (`base: custom_diffusion`) merged with keys becomes `{name: custom_diffusion, ...keys}`; a name replaces a
    section (another base, its options dropped)."""
    for key, value in diff.items():
        old = current.get(key)
        if isinstance(value, dict) and isinstance(old, (dict, str)):
            merged = dict(old) if isinstance(old, dict) else {"name": old}
            merge_sections(merged, value)
            current[key] = merged
        else:
            current[key] = value


def parse_scalar(raw: str, what: str):
    """A command-line value as a YAML scalar ('1e-5' -> 1e-05, 'true' -> True, '' -> ''); `what` names it in errors."""
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]  # one line, not YAML's caret picture
        raise ConfigError(f"{what}: value {raw!r} is not a YAML scalar: {problem}") from None
    check_size(value, what)
    return value


def parse_overrides(args: list[str]) -> dict:
    """`--a.b=1` or `--a.b 1` -> {"a": {"b": 1}}; values are parsed as YAML scalars."""
    diff: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"expected an override like --train.learning_rate=1e-5, got {arg!r}")
        if "=" in arg:
            dotted, raw = arg[2:].split("=", 1)
        elif i + 1 < len(args):
            dotted, raw = arg[2:], args[i + 1]
            i += 1
        else:
            raise ConfigError(f"override {arg!r} has no value")
        node = diff
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parse_scalar(raw, f"--{dotted}")
        i += 1
    return diff


def find_config(path: str | Path) -> Path:
    """`path` itself when it is a file; else, for a relative path, the bundled config of that name
    (`configs/lora.yaml`, `lora.yaml` or `lora` -> <data root>/configs/lora.yaml; personalize.resources), so the
    README's commands run from any folder with an installed package."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    from personalize.resources import config_file

    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    for candidate in (config_file(*parts), config_file(*parts[:-1], parts[-1] + ".yaml")) if parts else ():
        if candidate.is_file():
            return candidate
    return path


def read_yaml(path: str | Path) -> dict:
    path = find_config(path)
    if not path.is_file():
        from personalize.resources import config_file

        names = sorted(str(p.relative_to(config_file())) for p in config_file().rglob("*.yaml"))
        raise ConfigError(f"config file not found: {path} (bundled configs: {', '.join(names) or 'none'})")
    try:
        data = yaml.safe_load(read_text(path, "config file"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from err
    check_size(data, f"config file {path}")
    return data or {}


MAX_VALUES = 100_000  # a config is a few hundred values; YAML aliases can make a 400-byte file expand to billions


def check_size(data, what: str, limit: int = MAX_VALUES) -> None:
    """Refuse a YAML value that expands to more than `limit` values once its aliases are followed (a "billion
    laughs" file): counted with a budget, so a bomb is refused after `limit` steps, not after expanding it."""
    stack, seen = [data], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            raise ConfigError(f"{what} expands to more than {limit:,} values (YAML aliases repeating lists or "
                              "mappings?); a config holds a few hundred")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def load_config(paths: list[str | Path] = (), overrides: list[str] | dict | None = None) -> Config:
    """Defaults <- each YAML file in order <- overrides (CLI strings or a nested dict)."""
    cfg = Config()
    for path in paths:
        try:
            _merge(cfg, read_yaml(path))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    if overrides:
        _merge(cfg, overrides if isinstance(overrides, dict) else parse_overrides(list(overrides)))
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, path: str | Path | None = None) -> str:
    """The resolved config as YAML; written atomically to `path` when given."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        from personalize.atomic import atomic_write_text

        atomic_write_text(path, text)
    return text


def config_json(cfg: Config) -> str:
    """Compact JSON for artifact metadata."""
    return json.dumps(to_dict(cfg), sort_keys=True)
