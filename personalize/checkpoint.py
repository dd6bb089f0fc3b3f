"""`checkpoint-<step>` folders: trainable weights, optimizer, LR scheduler and loop state, without pickles.

accelerate's `save_state` writes the optimizer and scheduler with `torch.save`, and `load_state` unpickles
them; our rule is that no pickle is loaded outside `personalize convert`. So a checkpoint here is
  trainable.safetensors   every trainable parameter of the method's `trainable_modules()`, `<module>.<parameter>`
  optimizer.safetensors   every tensor of the optimizer state, keyed `state.<param index>.<name>`
  state.json              optimizer param groups and scalar state, LR scheduler, grad scaler, step, method
Each file is written atomically and the folder is renamed into place last, so a crash leaves no
half checkpoint under its final name. No RNG state is needed: every random draw of a step is a function of
(seed, step) (see `personalize.data.PositionSampler` and `personalize.trainer.step_generator`).
DeepSpeed keeps its own (sharded) format: under DeepSpeed we call accelerate's `save_state`/`load_state`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from personalize.atomic import atomic_save_file, atomic_write_text
from personalize.errors import PersonalizeError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(PersonalizeError):
    """A checkpoint that cannot be found or does not fit this run."""


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`latest` -> the newest checkpoint in output_dir (None when there is none yet: a fresh start, as diffusers)."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"train.resume_from_checkpoint={resume!r} is not a checkpoint folder "
                              "(expected 'latest' or a path to checkpoint-<step> holding state.json)")
    return path


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The parameters that train (requires_grad), keyed `<module name>.<parameter name>`."""
    return {f"{prefix}.{name}": p.detach().cpu().clone()
            for prefix, module in modules.items() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    expected = {k: v.shape for k, v in trainable_state(modules).items()}
    if {k: v.shape for k, v in state.items()} != expected:
        raise CheckpointError(f"checkpoint holds {len(state)} tensors that do not match this run's "
                              f"{len(expected)} trainable weights; was it written by another method or config?")
    for prefix, module in modules.items():
        params = dict(module.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith(prefix + "."):
                    params[key[len(prefix) + 1:]].copy_(value)


def save_checkpoint(path: Path, step: int, modules: dict, optimizer, scheduler, accelerator, info: dict) -> Path:
    """Write checkpoint-<step> (main process only; DeepSpeed: every process, its own shard)."""
    if accelerator.distributed_type.value == "DEEPSPEED":
        accelerator.save_state(str(path))
        return path
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        opt_tensors, opt_meta = _split_optimizer_state(optimizer.state_dict())
        atomic_save_file(trainable_state(modules), tmp / "trainable.safetensors", {"format": "personalize"})
        atomic_save_file(opt_tensors, tmp / "optimizer.safetensors", {"format": "personalize"})
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "scaler": scaler, **info}
        atomic_write_text(tmp / "state.json", json.dumps(state, indent=1, default=_json_default))
    except BaseException as err:  # a full disk or Ctrl-C mid-write: no .checkpoint-N.tmp/ is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            kept = [str(p) for _, p in list_checkpoints(path.parent)]
            raise CheckpointError(f"could not write {path.name} ({err.strerror or err}); earlier checkpoints are "
                                  f"kept ({', '.join(kept) or 'none yet'}); free space or choose another "
                                  "train.output_dir") from err
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def _json_default(value):
    if torch.is_tensor(value):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's state.json")


def load_checkpoint(path: Path, modules: dict, optimizer, scheduler, accelerator, info: dict) -> int:
    """Restore a checkpoint into a set-up run; returns its step. `info` must match what was saved; a truncated or
    mismatched file is one `CheckpointError` naming the checkpoint."""
    if accelerator.distributed_type.value == "DEEPSPEED":
        accelerator.load_state(str(path))
        m = CHECKPOINT_RE.match(path.name)
        return int(m.group(1)) if m else 0
    from safetensors import SafetensorError

    try:
        return _restore(path, modules, optimizer, scheduler, accelerator, info)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:  # truncated or edited
        raise CheckpointError(f"checkpoint {path} cannot be resumed from ({type(err).__name__}: "
                              f"{' '.join(str(err).split())[:200]}); point train.resume_from_checkpoint at another "
                              "checkpoint-<step>, or delete this one") from err


def _restore(path: Path, modules: dict, optimizer, scheduler, accelerator, info: dict) -> int:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: state.json is not an object; was it edited?")
    for key, value in info.items():
        if state.get(key) != value:
            raise CheckpointError(f"checkpoint {path} was written with {key}={state.get(key)!r}; "
                                  f"this run has {key}={value!r}")
    load_trainable_state(modules, load_file(str(path / "trainable.safetensors")))
    opt_tensors = load_file(str(path / "optimizer.safetensors"), device=str(accelerator.device))
    optimizer.load_state_dict(_join_optimizer_state(opt_tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    return int(state["step"])


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    """Remove the oldest checkpoints so that `keep - 1` remain before a new one is saved (diffusers' rule)."""
    if keep is None:
        return
    found = list_checkpoints(output_dir)
    for _, path in found[: max(0, len(found) - keep + 1)]:
        shutil.rmtree(path, ignore_errors=True)
