"""The method registry: one module per method (peft style), an explicit dict of records, no import-time magic.

    REGISTRY["lora"]  ->  MethodRecord(name, options, build, apply, kind, edit)

The protocol a trained method keeps and the record's fields are in `personalize.methods.base`; adding a method is
the checklist in `docs/adding-a-method.md`. `build_method(config, registry)` and `record_for_artifact(art,
registry)` take the registry as an argument, so a test (or a plugin) can train and apply a method that is not
in the default dict without changing it.
"""

from __future__ import annotations

import dataclasses
import logging
import typing

from personalize.artifacts import ArtifactError, artifact_family
from personalize.config import ConfigError, coerce, did_you_mean
from personalize.methods.base import MethodError, MethodRecord, TrainingMethod
from personalize.methods.class_tokens import dct
from personalize.methods import face2diffusion
from personalize.methods.erasure import abo, esd, uce
from personalize.methods.erasure.apply import apply_erasure, describe_erasure
from personalize.methods.face2diffusion import edit as f2d_edit, mapping_stage, msid_stage
from personalize.methods.personalization import (
    classdiffusion, custom_diffusion, dreambooth, lora, sude, textual_inversion,
)
from personalize.methods.personalization.apply import apply_parts
from personalize.methods.personalization.bases import BASES
from personalize.methods.suppression import suppress_eot
from personalize.profiles import FAMILY_NAMES

logger = logging.getLogger(__name__)


def _trained(module, kind: str, describe=None) -> MethodRecord:
    name = module.Options.name
    return MethodRecord(name, module.Options, module.build, apply_parts, kind, describe=describe)


REGISTRY: dict[str, MethodRecord] = {
    "textual_inversion": _trained(textual_inversion, "personalization"),
    "dreambooth": _trained(dreambooth, "personalization"),
    "custom_diffusion": _trained(custom_diffusion, "personalization"),
    "lora": _trained(lora, "personalization"),
    "classdiffusion": _trained(classdiffusion, "regularizer"),  # on a personalization base (`method.base`)
    "sude": _trained(sude, "regularizer"),
    # one token row steered by a frozen classifier through generated images (no training images)
    "dct": _trained(dct, "classifier", dct.describe),
    # Face2Diffusion: an encoder trained once (stage 1 MSID, stage 2 mapping network); a face is a generation edit
    "f2d_msid": MethodRecord("f2d_msid", msid_stage.Options, msid_stage.build, face2diffusion.apply_refused, "encoder"),
    "face2diffusion": MethodRecord("face2diffusion", mapping_stage.Options, mapping_stage.build,
                                   face2diffusion.apply_refused, "encoder", edit=f2d_edit.edit,
                                   preset=face2diffusion.INFERENCE_PRESET, describe=face2diffusion.describe),
    # concept erasure: the UNet fine-tuned against a frozen copy; artifacts hold differences (`weights: diff`)
    "esd": MethodRecord("esd", esd.Options, esd.build, apply_erasure, "erasure", describe=describe_erasure),
    "abo": MethodRecord("abo", abo.Options, abo.build, apply_erasure, "erasure", describe=describe_erasure),
    "uce": MethodRecord("uce", uce.Options, uce.build, apply_erasure, "erasure",  # closed form, no loop
                        describe=describe_erasure),
    # content suppression trains nothing and has no artifact: a generation edit (`Pipeline.generate(edits=...)`)
    "suppress_eot": MethodRecord("suppress_eot", suppress_eot.Suppression, None, None, "inference",
                                 edit=suppress_eot.edit),
}

__all__ = ["REGISTRY", "MethodError", "MethodRecord", "TrainingMethod", "build_method", "check_family", "edits_from",
           "make_edit", "parse_options", "record_for_artifact", "record_for_base", "training_record"]


def training_record(name: str | None, registry: dict = REGISTRY) -> MethodRecord:
    if name not in registry:
        raise MethodError(f"unknown method {name!r} (config key method.name); known methods: {', '.join(registry)}")
    record = registry[name]
    if record.build is None:
        raise MethodError(f"method {name!r} is inference-only; it cannot be trained")
    return record


def record_for_artifact(art, registry: dict = REGISTRY) -> MethodRecord:
    """The record whose `apply` reads this artifact (its `method` metadata)."""
    record = registry.get(art.method)
    if record is None or record.apply is None:
        known = ", ".join(n for n, r in registry.items() if r.apply is not None)
        raise ArtifactError(f"{art.path}: unknown method {art.method!r} in metadata; known methods: {known}")
    return record


def record_for_base(art, profile, base: str, registry: dict = REGISTRY) -> MethodRecord:
    """`record_for_artifact`, on a base of `profile` (`personalize.profiles`): an artifact made for another model
    family than the base's (an SD 1.x LoRA on SDXL, or the reverse), or whose method does not run on this
    family, is refused naming both."""
    family = artifact_family(art)
    if family != profile.family:
        raise ArtifactError(f"{art.path} was made for {FAMILY_NAMES.get(family, family)} models, but the base "
                            f"{base!r} is {FAMILY_NAMES.get(profile.family, profile.family)}; use a file trained "
                            "for this base's family")
    record = record_for_artifact(art, registry)
    check_family(record, profile, f"{art.path} ({art.method})")
    return record


def make_edit(name: str, options, profile=None, registry: dict = REGISTRY):
    """The generation edit of an inference method (`Pipeline.generate(edits=[...])`), from its options, for a
    base of `profile` (`personalize.profiles`; None: the method's default, or its options' `base`)."""
    record = registry.get(name)
    if record is None or record.edit is None:
        known = ", ".join(n for n, r in registry.items() if r.edit is not None)
        raise MethodError(f"{name!r} is not a generation edit; known edits: {known}")
    if options is not None and not isinstance(options, dict) and not dataclasses.is_dataclass(options):
        raise MethodError(f"the options of edit {name!r} must be a mapping of option names to values, got "
                          f"{type(options).__name__}")
    if profile is not None:
        check_family(record, profile, f"generation edit {name!r}")
    return record.edit(options or {}, profile)


def edits_from(description, profile=None, registry: dict = REGISTRY) -> list:
    """The generation edits of a plain description, in its order: {method name: options} or a list of
    (name, options) pairs (the same method twice), e.g. {"suppress_eot": {"words": ["glasses"]}}. Every front
    end builds its edits here: the CLI's --edit and shorthand flags, the Studio and the app, the Python API."""
    pairs = list(description.items()) if isinstance(description, dict) else list(description or ())
    if any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in pairs):
        raise MethodError("an edit description is {method name: options} or a list of (name, options) pairs, "
                          f"got {description!r}")
    return [make_edit(name, options, profile, registry) for name, options in pairs]


def check_family(record: MethodRecord, profile, what: str = "") -> None:
    """Refuse a method on a base of a family it does not support (`MethodRecord.families`), naming both."""
    if profile.family not in record.families:
        supported = ", ".join(FAMILY_NAMES.get(f, f) for f in record.families)
        family = FAMILY_NAMES.get(profile.family, profile.family)
        raise MethodError(f"{what or 'method ' + repr(record.name)} does not run on {family} bases; it supports "
                          f"{supported} bases")


def build_method(config, registry: dict = REGISTRY) -> TrainingMethod:
    """Check the method's options and data, before any model is loaded or any file written."""
    name = config.method.get("name")
    options = parse_options(name, config.method, registry)
    return registry[name].build(options, config)


# ------------------------------------------------------------------------------------------- options


def _fields(options_cls) -> set[str]:
    return {f.name for f in dataclasses.fields(options_cls)} - {"base_options"}


def parse_options(name: str, section: dict, registry: dict = REGISTRY):
    """The `method:` config section -> the method's `Options`; a key of another method is named as such.

    A regularizer (classdiffusion, sude) takes its own keys; its base is `method.base`, a name or a section
    `{name: <base>, <base option>: ...}`, parsed into `options.base_options`. The older flat form (the base's
    options beside the regularizer's) is still read, with a deprecation warning."""
    record = training_record(name, registry)
    if record.kind != "regularizer":
        return _parse(name, record.options, section, registry)
    own = _fields(record.options)
    base = section.get("base", record.options.base)
    base_section = dict(base) if isinstance(base, dict) else {"name": base}
    base_name = base_section.pop("name", None)
    if base_name not in BASES:
        raise ConfigError(f"config key 'method.base' of {name} must be one of {', '.join(BASES)} (or a section "
                          f"with name: <base>), got {base_name!r}")
    base_fields = _fields(registry[base_name].options) - {"name"}
    flat = {k for k in section if k in base_fields and (k not in own or not isinstance(base, dict))}
    if flat:
        logger.warning("method keys %s of %s belong to its base %s: write them under method.base (a flat "
                       "method section is deprecated)", sorted(flat), name, base_name)
        base_section |= {k: section[k] for k in flat}
    mine = {k: v for k, v in section.items() if k not in flat and k != "base"}
    options = _parse(name, record.options, mine | {"base": base_name}, registry)
    options.base_options = _parse(base_name, registry[base_name].options, base_section | {"name": options.name},
                                  registry, label=f"{name} (base {base_name})", prefix="method.base.")
    return options


def _parse(name: str, options_cls, section: dict, registry: dict, label: str | None = None,
           prefix: str = "method."):
    fields = _fields(options_cls)
    hints = typing.get_type_hints(options_cls)
    renamed = getattr(options_cls, "RENAMED", {})
    values = {}
    for key, value in section.items():
        if key in renamed:
            logger.warning("option '%s%s' of method %s is now '%s%s' (the old name is deprecated)", prefix, key,
                           label or name, prefix, renamed[key])
            key = renamed[key]
        if key not in fields:
            owners = [m for m, r in registry.items() if r.options and key in _fields(r.options)]
            where = f"it belongs to method {' / '.join(owners)}, not {name}" if owners else "no method has it"
            raise ConfigError(f"config key '{prefix}{key}' is not an option of method {label or name} ({where})"
                              f"{did_you_mean(key, fields)}; options: {', '.join(sorted(fields))}")
        values[key] = coerce(value, hints[key], f"{prefix}{key}")
    return options_cls(**values)
