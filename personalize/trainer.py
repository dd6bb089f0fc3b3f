"""The one training loop for every method, on accelerate.

    result = personalize.trainer.train(load_config(["configs/lora.yaml"], ["--train.max_train_steps=400"]))

The loop knows no method names: a method (methods registry; the protocol is in `personalize.methods.base`)
returns named loss terms, which are summed with its weights and logged one by one. The loop derives the
optimizer's parameters, the checkpoint's tensors and the DDP wrapping from the method's `trainable_modules()`.
Every random draw of a step (data order, crops, noise, timesteps, VAE samples) is a function of (seed,
micro-step, rank), so `resume_from_checkpoint: latest` continues exactly and a resumed run ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from personalize.checkpoint import list_checkpoints, load_checkpoint, prune_checkpoints, resolve_resume, save_checkpoint
from personalize.errors import PersonalizeError, Stopped

logger = logging.getLogger(__name__)
class TrainError(PersonalizeError):
    """A training option that cannot work on this machine or with this config."""


@dataclass
class TrainResult:
    artifact: Path | None  # None when the run was cut short (`stop_after`); a method's own early stop writes it
    step: int
    method: object


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The frozen weights' dtype for `train.mixed_precision` (the one table, `components.DTYPES`)."""
    from personalize.components import DTYPES, MIXED_PRECISION

    if mixed_precision not in MIXED_PRECISION:
        raise TrainError(f"train.mixed_precision={mixed_precision!r}; expected one of {', '.join(MIXED_PRECISION)}")
    return DTYPES[mixed_precision]


def step_generator(seed: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator for one micro-batch of one rank: a pure function of (seed, micro, rank)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + micro * 8_191 + rank * 131) % (2**63))


def make_accelerator(train):
    """accelerate's `Accelerator` (it honours ACCELERATE_USE_CPU), checked against the launcher's WORLD_SIZE."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from personalize.dist import check_world

    weight_dtype(train.mixed_precision)
    if train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("train.mixed_precision=fp16 needs a CUDA GPU; on CPU use 'bf16' or 'no'")
    out = Path(train.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=train.gradient_accumulation_steps, mixed_precision=train.mixed_precision,
        log_with=None if train.report_to in ("none", None) else train.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    check_world(accelerator.num_processes)
    return accelerator


def trainable_parameters(modules: dict[str, torch.nn.Module]) -> list[torch.nn.Parameter]:
    """Every parameter that trains (requires_grad), module by module in the method's order."""
    return [p for m in modules.values() for p in m.parameters() if p.requires_grad]


def fused_ok(params: list[torch.nn.Parameter]) -> bool:
    """torch's fused AdamW kernel (one vectorized pass per tensor) applies: floating parameters, all on one CPU or
    CUDA device. It computes the same update as the default loop (same formula, element by element); on the toy
    UNet's 3.7M parameters it is about 4x faster on a CPU core (benchmarks/BENCHMARKS.md), where torch's default
    is the per-tensor Python loop."""
    devices = {p.device for p in params}
    return (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
            and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params))


def make_optimizer(params: list[torch.nn.Parameter], train, lr: float):
    if not params:
        raise TrainError("the method has no trainable parameters (its trainable_modules() hold none that train)")
    groups = [{"params": params, "lr": lr, "weight_decay": train.adam_weight_decay}]
    kwargs = dict(betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_epsilon)
    if train.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise TrainError("train.use_8bit_adam needs bitsandbytes (CUDA only): pip install bitsandbytes") from err
        return bnb.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs, fused=True if fused_ok(params) else None)


def make_lr_scheduler(optimizer, train, num_processes: int):
    """diffusers' `get_scheduler`; steps count once per process, as accelerate steps it (diffusers scripts)."""
    from diffusers.optimization import SchedulerType, get_scheduler

    names = [s.value for s in SchedulerType]
    if train.lr_scheduler not in names:
        raise TrainError(f"train.lr_scheduler={train.lr_scheduler!r}; expected one of {', '.join(names)}")
    return get_scheduler(train.lr_scheduler, optimizer, num_warmup_steps=train.lr_warmup_steps * num_processes,
                         num_training_steps=train.max_train_steps * num_processes)


MAX_STEPS = 10_000_000


def check_train_config(train) -> None:
    """The train section's numbers and output folder, checked before anything loads (also by `personalize
    config`, so what it prints would train)."""
    positive = ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps",
                "validation_steps")
    bad = [f"train.{k}={getattr(train, k)}" for k in positive if getattr(train, k) < 1]
    if bad:
        raise TrainError(f"{', '.join(bad)}: expected a positive integer")
    if train.max_train_steps > MAX_STEPS:  # a typo's extra zeros; the LR schedule is built for this many steps
        raise TrainError(f"train.max_train_steps={train.max_train_steps:,}: expected at most {MAX_STEPS:,} (the "
                         "methods here train for hundreds to a few thousand)")
    import math

    odd = [f"train.{k}={v}" for k, v in vars(train).items() if isinstance(v, float) and not math.isfinite(v)]
    if odd:
        raise TrainError(f"{', '.join(odd)}: expected a finite number")
    from personalize.atomic import check_out_folder

    check_out_folder(train.output_dir, "train.output_dir")


def validate(method, components, config, step: int, accelerator) -> None:
    """Images for `validation_prompt` with fixed seeds, through the inference path (`Pipeline.generate` on the
    live modules, or the method's own `validation_images`), saved as a grid PNG and logged (main process)."""
    import numpy as np

    from personalize.atomic import atomic_path
    from personalize.batch import make_grid
    from personalize.pipeline import live_pipeline

    train = config.train
    pipe = live_pipeline(components)
    seeds = [train.seed + i for i in range(train.num_validation_images)]
    images_for = getattr(method, "validation_images", None) or default_validation_images
    with torch.no_grad(), accelerator.autocast():
        images = images_for(pipe, train.validation_prompt, seeds, train.validation_inference_steps)
    with atomic_path(Path(train.output_dir) / "validation" / f"step-{step:06d}.png") as tmp:
        make_grid(images, rows=[f"step {step}: {train.validation_prompt}"],
                  columns=[f"seed {s}" for s in seeds]).save(tmp, format="PNG")
    if "tensorboard" in str(train.report_to):
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        writer.add_images("validation", np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC")


def default_validation_images(pipe, prompt: str, seeds: list[int], steps: int) -> list:
    return [g.image for g in pipe.generate(prompt, seed=seeds, steps=steps)]


def _example_caption(folder) -> str:
    """The first image's caption (its .txt; '' without one), shown by the app for artifacts without a trigger
    word."""
    from personalize.data import list_images, read_caption

    try:
        caption = read_caption(list_images(folder)[0], "")
    except (PersonalizeError, IndexError, OSError):
        return ""
    return caption if isinstance(caption, str) else ""


def write_artifact(method, components, config) -> Path:
    from personalize.artifacts import save_content
    from personalize.config import config_json

    content = method.artifact()
    if not content.embeddings:  # no trigger word: say what it was trained on; a .txt caption wins over the
        caption = _example_caption(config.data.instance_data_dir)  # instance prompt, as it did in training
        if caption or not config.data.instance_prompt:
            content.metadata.setdefault("example_caption", caption)
    content.metadata.setdefault("family", components.profile.family)  # the model family it loads on
    path = Path(config.train.output_dir) / f"{content.name}.safetensors"
    return save_content(path, config.method["name"], components.source, content, config_json(config))


def train(config, stop_after: int | None = None, registry: dict | None = None) -> TrainResult:
    """Run one training job. `stop_after` (tests) ends the loop after that step as if the job were killed;
    `registry` (default: `personalize.methods.REGISTRY`) is where `method.name` is looked up."""
    from accelerate.state import AcceleratorState, GradientState

    try:
        return _train(config, stop_after, registry)
    finally:  # accelerate keeps its state in class-level singletons: leave none behind for the next job
        AcceleratorState._reset_state()
        GradientState._reset_state()


@dataclass
class _Run:
    method: object
    components: object
    accelerator: object
    optimizer: object
    lr_scheduler: object
    modules: dict  # the method's trainable modules, unwrapped: parameters and checkpoint state
    wrapped: list  # the same after `accelerator.prepare` (DDP under several processes)
    info: dict
    step: int


def _vocabulary_note(config) -> None:
    """A config written for another model (prompts of dogs) run on a base whose profile knows its vocabulary (the
    default toy world): say so, once, naming only the prompts this run uses (the instance prompt only for images
    without a .txt caption, the class prompt only with prior preservation)."""
    from personalize.profiles import profile_for

    profile = profile_for(config.model.pretrained)
    if profile.unknown_words is None:
        return
    data, train_cfg = config.data, config.train
    used = {"data.instance_prompt": data.instance_prompt if _uncaptioned(data.instance_data_dir) else None,
            "data.class_prompt": data.class_prompt if train_cfg.with_prior_preservation else None,
            "train.validation_prompt": train_cfg.validation_prompt}
    trigger = ["sks"] + [str(v) for k, v in config.method.items() if k in ("placeholder_token", "modifier_token")]
    parts = []
    for key, prompt in used.items():
        unknown = profile.unknown_words([prompt.replace("{}", "")], trigger) if prompt else []
        if unknown:
            parts.append(f"{', '.join(repr(u) for u in unknown)} ({key})")
    if parts:
        logger.warning("note: %s", profile.training_note.format(words="; ".join(parts)))


def _uncaptioned(folder) -> bool:
    """Some image of the training folder has no .txt caption (so the instance prompt is used for it)."""
    from personalize.data import CAPTION_SUFFIX, list_images

    try:
        return any(not p.with_suffix(CAPTION_SUFFIX).is_file() for p in list_images(folder))
    except PersonalizeError:
        return True


def _setup(config, registry: dict | None) -> _Run:
    """Everything before the first step: checks first, then model, method, optimizer, resume."""
    from accelerate.utils import set_seed

    from personalize.components import base_profile, components_from_config
    from personalize.methods import REGISTRY, build_method, check_family, training_record

    train_cfg = config.train
    check_train_config(train_cfg)
    method = build_method(config, registry or REGISTRY)  # options and data checked before anything is loaded
    record = training_record(config.method["name"], registry or REGISTRY)
    check_family(record, base_profile(config.model.pretrained))  # an SDXL base for an SD-only method: refused now
    _vocabulary_note(config)  # after those checks: a note never comes ahead of an error
    accelerator = make_accelerator(train_cfg)
    resume = resolve_resume(train_cfg.resume_from_checkpoint, train_cfg.output_dir)
    components = components_from_config(config.model)
    check_family(record, components.profile)  # a hub model that was not cached: known only now
    set_seed(train_cfg.seed)  # new weights (LoRA A, processors) start the same in every run and process
    method.setup(components, config, accelerator)
    world = accelerator.num_processes
    info = {"method": config.method["name"], "seed": train_cfg.seed, "world": world}
    if getattr(method, "closed_form", False):  # computed in `setup` (UCE): no optimizer, no steps
        return _Run(method, components, accelerator, None, None, {}, [], info, train_cfg.max_train_steps)
    lr = train_cfg.learning_rate
    if train_cfg.scale_lr:  # diffusers: lr x accumulation x batch x processes
        lr *= train_cfg.gradient_accumulation_steps * train_cfg.train_batch_size * world
    modules = method.trainable_modules()
    optimizer = make_optimizer(trainable_parameters(modules), train_cfg, lr)
    lr_scheduler = make_lr_scheduler(optimizer, train_cfg, world)
    prepared = accelerator.prepare(*modules.values(), optimizer, lr_scheduler)
    wrapped = list(prepared[: len(modules)])
    if hasattr(method, "use_modules"):
        method.use_modules(dict(zip(modules, wrapped)))
    optimizer, lr_scheduler = prepared[len(modules):]
    step = load_checkpoint(resume, modules, optimizer, lr_scheduler, accelerator, info) if resume else 0
    logger.info("training %s from step %d, lr %.3g, %d process(es)", info["method"], step, lr, world)
    return _Run(method, components, accelerator, optimizer, lr_scheduler, modules, wrapped, info, step)


def _train(config, stop_after: int | None, registry: dict | None) -> TrainResult:
    from tqdm.auto import tqdm

    train_cfg = config.train
    run = _setup(config, registry)
    if run.accelerator.is_main_process:
        run.accelerator.init_trackers("personalize", config={k: v for k, v in vars(train_cfg).items()
                                                              if isinstance(v, (int, float, str, bool))})
    if run.optimizer is None:
        return _finish(run, config, run.step)
    bar = tqdm(total=train_cfg.max_train_steps, initial=run.step, desc="steps",
               disable=not run.accelerator.is_local_main_process)
    try:
        step, stopped = _loop(run, config, bar, stop_after)
    except KeyboardInterrupt:  # one line with the step and how to resume, not a traceback (the CLI prints it)
        raise Stopped(_resume_line(run.step, Path(train_cfg.output_dir))) from None
    finally:
        bar.close()
    return _finish(run, config, step, stopped)


def _loop(run: _Run, config, bar, stop_after: int | None) -> tuple[int, bool]:
    """The steps from `run.step` to the end, an early stop or `stop_after`; returns (step, stopped early)."""
    train_cfg, out = config.train, Path(config.train.output_dir)
    method, accelerator, optimizer, lr_scheduler = run.method, run.accelerator, run.optimizer, run.lr_scheduler
    weights = method.loss_weights() if hasattr(method, "loss_weights") else {}
    params = trainable_parameters(run.modules)
    step, micro, stopped = run.step, run.step * train_cfg.gradient_accumulation_steps, False
    loader = method.dataloader(micro, accelerator.process_index, accelerator.num_processes)
    while step < train_cfg.max_train_steps and (stop_after is None or step < stop_after):
        batch, gen = next(loader), step_generator(train_cfg.seed, micro, accelerator.process_index)
        micro += 1
        with accelerator.accumulate(*run.wrapped):
            losses = method.training_step(batch, gen)
            total = sum(weights.get(k, 1.0) * v for k, v in losses.items() if k.startswith("loss_"))
            _check_finite(total, losses, step + 1, out)
            accelerator.backward(total)
            if accelerator.sync_gradients and train_cfg.max_grad_norm:
                accelerator.clip_grad_norm_(params, train_cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        step += 1
        logs = {k: v.detach().item() for k, v in losses.items()}
        logs |= {"loss": total.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        accelerator.log(logs, step=step)
        run.step = step
        _periodic(step, run, config)
        stopped = bool(getattr(method, "should_stop", None) and method.should_stop())  # its own early stop (dct)
        if stopped:
            if step < train_cfg.max_train_steps:
                logger.info("the method stopped early at step %d of %d", step, train_cfg.max_train_steps)
            break
    return step, stopped


def _resume_line(step: int, out: Path) -> str:
    """Where a Ctrl-C left the run: its step and the checkpoint `resume_from_checkpoint=latest` would take."""
    kept = list_checkpoints(out)
    if not kept:
        return f"stopped at step {step}, before the first checkpoint: no artifact written; rerun to start again"
    return (f"stopped at step {step}, no artifact written; resume from {kept[-1][1]} with "
            "--train.resume_from_checkpoint=latest")


def _check_finite(total: torch.Tensor, losses: dict, step: int, out: Path) -> None:
    """Stop before an update with a NaN/Inf loss: the weights are still the last good ones, no artifact is
    written, and the message says where to resume from."""
    if bool(torch.isfinite(total.detach()).all()):
        return
    terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items() if k.startswith("loss_"))
    kept = list_checkpoints(out)
    resume = f"the last checkpoint is {kept[-1][1]} (train.resume_from_checkpoint=latest)" if kept else "no checkpoint yet"
    raise TrainError(f"the loss is not finite at step {step} ({terms}): stopped before that update, no artifact "
                     f"written; {resume}. A lower train.learning_rate or train.mixed_precision=no usually helps")


def _finish(run: _Run, config, step: int, stopped: bool = False) -> TrainResult:
    """After the last step, an early stop or a closed-form setup: `finish`, the artifact (main process), end the
    trackers."""
    from personalize.config import dump_config

    method, accelerator = run.method, run.accelerator
    if hasattr(method, "finish"):
        method.finish()
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process and (stopped or step >= config.train.max_train_steps):
        path = write_artifact(method, run.components, config)
        dump_config(config, Path(config.train.output_dir) / "config.yaml")  # with the artifact it describes: a
        logger.info("wrote %s", path)  # failed rerun in the same folder leaves both as they were
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(path, step, method)


def _periodic(step: int, run: _Run, config) -> None:
    """Checkpoint every `checkpointing_steps` and validation images every `validation_steps`."""
    train_cfg, out, accelerator = config.train, Path(config.train.output_dir), run.accelerator
    deepspeed = accelerator.distributed_type.value == "DEEPSPEED"
    if step % train_cfg.checkpointing_steps == 0:
        if accelerator.is_main_process:
            prune_checkpoints(out, train_cfg.checkpoints_total_limit)
        if accelerator.is_main_process or deepspeed:
            save_checkpoint(out / f"checkpoint-{step}", step, run.modules, run.optimizer, run.lr_scheduler,
                            accelerator, run.info)
        accelerator.wait_for_everyone()
    if train_cfg.validation_prompt and step % train_cfg.validation_steps == 0:
        if accelerator.is_main_process:
            validate(run.method, run.components, config, step, accelerator)
        accelerator.wait_for_everyone()


__all__ = ["train", "TrainResult", "list_checkpoints"]
