"""The method protocol, the registry's record type, and the error every method raises.

A training method is any object with these members; the loop (`personalize.trainer`) knows nothing else of it.

    setup(components, config, accelerator)   freeze, add what trains, place on the device, make its data
    trainable_modules() -> {name: module}     the modules holding every trainable parameter (requires_grad);
                                              the loop derives the optimizer's parameters, the checkpoint's
                                              tensors (exact resume) and the DDP wrapping from them
    dataloader(start, rank, world)            an endless iterator of batches from micro-step `start` on; every
                                              random draw a pure function of (seed, position, rank)
    training_step(batch, generator)           {"loss_*": scalar tensor, other keys: logged only}
    artifact() -> ArtifactContent             what the final file holds (`personalize.artifacts`)

Optional members (looked up with `getattr`, each with the default the loop uses without it):

    loss_weights() -> {"loss_x": w}           the weight of each term in the sum (default 1 each)
    use_modules({name: module})               the modules `accelerator.prepare` returned (DDP-wrapped under
                                              several processes); call those in `training_step`. Default: none
    finish()                                  after the last step, before `artifact`
    should_stop() -> bool                     asked after each optimizer step: True ends training there, and
                                              the artifact is written as after the last step (dct's early stop)
    closed_form = True                        the result is computed in `setup` (UCE): the loop makes no
                                              optimizer and runs no step; `trainable_modules` may be empty
    validation_images(pipe, prompt, seeds, steps) -> [PIL.Image]
                                              `pipe` is a `personalize.pipeline.Pipeline` on the live modules;
                                              default: `pipe.generate(prompt, ...)` as written

Inference is a module-level function of the method's registry record, `apply(sd_pipe, artifact) -> undo`, or a
generation edit (SuppressEOT) that trains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

import torch

from personalize.errors import PersonalizeError

KINDS = ("personalization", "regularizer", "classifier", "encoder", "erasure", "inference")


class MethodError(PersonalizeError):
    """A method option that does not fit the model or the other options."""


class TrainingMethod(Protocol):
    def setup(self, components, config, accelerator) -> None: ...
    def trainable_modules(self) -> dict[str, torch.nn.Module]: ...
    def dataloader(self, start: int, rank: int, world: int) -> Iterator[dict]: ...
    def training_step(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]: ...
    def artifact(self) -> Any: ...


@dataclass(frozen=True)
class MethodRecord:
    """One registry entry.

    name: the config's `method.name` and the artifact's `method` metadata.
    options: the dataclass of the `method:` config keys (None for a method without options).
    build: `build(options, config) -> TrainingMethod` (None: the method trains nothing).
    apply: `apply(sd_pipe, artifact) -> undo` for its artifacts (None: it has no artifact).
    kind: personalization | regularizer (sits on a personalization base, `method.base`) | classifier (no images:
    a frozen classifier steers it, dct) | encoder (a network trained once on a dataset: Face2Diffusion) | erasure |
    inference.
    edit: `edit(options, profile) -> Edit` for inference-time methods (generation edits, `personalize.pipeline`);
    `options` is a dict (or the method's options dataclass), `profile` the base's `personalize.profiles.Profile`
    (None: the method's own default).
    preset: the official inference script's sampling settings (scheduler, steps, guidance_scale, height, width),
    what `personalize generate --preset <name>` fills in where a flag does not say otherwise.
    describe: `describe(artifact) -> dict`, what a front end shows of one of its files (None: nothing more than
    the trigger words): "shows" (text in place of the trigger words: "erases: dog"), "note" (text after them:
    "class: dog"), "edit" (the name of the generation edit that reads the file as its `file` option: the file
    is a choice of that edit, not an artifact to apply), "compare" (True: the app's comparison shows the images
    without it).
    families: the model families (`personalize.profiles.Profile.family`: "sd" for SD 1.x/2.x and the toy world,
    "sdxl") the method trains, applies and edits on; any other base is refused before its weights load."""

    name: str
    options: type | None
    build: Callable | None
    apply: Callable | None
    kind: str
    edit: Callable | None = None
    preset: dict | None = None
    describe: Callable | None = None
    families: tuple[str, ...] = ("sd",)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method record {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
