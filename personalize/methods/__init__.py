"""The method registry: one module per method (peft style), an explicit dict, no import-time magic.

Each module follows the method protocol of DESIGN sec. 5:
  - `apply(pipe, artifact) -> undo` for inference (every method);
  - training methods also have `Options` (a dataclass: the keys of the config's `method:` section, with
    defaults) and `build(options, config) -> TrainingMethod`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Protocol

import torch

from personalize.methods.personalization import classdiffusion, custom_diffusion, dreambooth, lora, sude, textual_inversion
from personalize.methods.base import MethodError

METHODS = {
    "textual_inversion": textual_inversion,
    "dreambooth": dreambooth,
    "custom_diffusion": custom_diffusion,
    "lora": lora,
    "classdiffusion": classdiffusion,  # regularizers over a base (module attribute BASES)
    "sude": sude,
}  # content suppression (SuppressEOT) trains nothing and has no artifact: `Pipeline.generate(suppress=...)`


class TrainingMethod(Protocol):
    """What `personalize.trainer` needs from a method (it knows no method names)."""

    def setup(self, components, config, accelerator) -> None: ...
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...
    def param_groups(self, lr: float, weight_decay: float) -> list[dict]: ...
    def trainable_modules(self) -> dict[str, torch.nn.Module]: ...
    def use_modules(self, modules: dict[str, torch.nn.Module]) -> None: ...
    def dataloader(self, start_micro: int, rank: int, world: int, class_examples=None) -> typing.Iterable[dict]: ...
    # 'loss_*' terms are weighted by `loss_weights` (default 1) and summed; other keys (a gate rate) are only logged
    def training_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]: ...
    def loss_weights(self) -> dict[str, float]: ...
    def trainable_state(self) -> dict[str, torch.Tensor]: ...
    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None: ...
    def finish(self) -> None: ...  # after the last step, before `artifact`
    def artifact(self) -> dict: ...
    def format_prompt(self, prompt: str) -> str: ...
    def pipeline(self): ...


def method_module(name: str | None):
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r} (config key method.name); known methods: {', '.join(METHODS)}")
    module = METHODS[name]
    if not hasattr(module, "build"):
        raise MethodError(f"method {name!r} is inference-only; it cannot be trained")
    return module


def parse_options(name: str, section: dict):
    """The `method:` config section -> the method's `Options`; a key of another method is named as such.

    A regularizer (a module with `BASES`: classdiffusion, sude) takes its own keys; the other keys are options of
    its `base` and are parsed into `options.base_options`."""
    module = method_module(name)
    if not hasattr(module, "BASES"):
        return _parse(name, module.Options, section)
    own = {f.name for f in dataclasses.fields(module.Options)} - {"base_options"}
    options = _parse(name, module.Options, {k: v for k, v in section.items() if k in own}, own)
    if options.base not in module.BASES:
        from personalize.config import ConfigError

        raise ConfigError(f"config key 'method.base' of {name} must be one of {', '.join(module.BASES)}, "
                          f"got {options.base!r}")
    rest = {k: v for k, v in section.items() if k not in own}
    options.base_options = _parse(options.base, METHODS[options.base].Options, rest | {"name": options.name},
                                  set(own), regularizer=name)
    return options


def _parse(name: str, options_cls, section: dict, also: set | None = None, regularizer: str | None = None):
    from personalize.config import ConfigError, _coerce

    fields = {f.name for f in dataclasses.fields(options_cls)} - {"base_options"}
    hints = typing.get_type_hints(options_cls)
    values = {}
    for key, value in section.items():
        if key not in fields:
            owners = [m for m, mod in METHODS.items()
                      if hasattr(mod, "Options") and key in {f.name for f in dataclasses.fields(mod.Options)}]
            where = f"it belongs to method {' / '.join(owners)}, not {name}" if owners else "no method has it"
            known = sorted(fields | (also or set()))
            label = f"{regularizer} (base {name})" if regularizer else name
            raise ConfigError(f"config key 'method.{key}' is not an option of method {label} ({where}); "
                              f"options: {', '.join(known)}")
        values[key] = _coerce(value, hints[key], f"method.{key}")
    return options_cls(**values)


def build_method(config) -> TrainingMethod:
    """Check the method's options and data, before any model is loaded or any file written."""
    name = config.method.get("name")
    options = parse_options(name, config.method)
    return METHODS[name].build(options, config)
