"""`personalize export ARTIFACT --format lora|checkpoint|embedding`: files that load in other tools.

  lora        kohya's layout (personalize.kohya) for AUTOMATIC1111, ComfyUI, kohya's tools and diffusers'
              `load_lora_weights`: a LoRA's own factors exactly, any other weight change by truncated SVD
  checkpoint  one `.safetensors` in the original (LDM) layout, the base with the artifact(s) applied, that
              A1111 and ComfyUI load as a model and diffusers as `from_single_file` (personalize.export.ldm)
  embedding   `<trigger>.safetensors`, one key, float32 (n_vectors, width): A1111, ComfyUI, diffusers
A LoRA or checkpoint of an artifact with new tokens (Custom Diffusion's modifier, ClassDiffusion's) gets the token
files beside it: a checkpoint cannot hold a token the base's tokenizer lacks. Everything is checked and computed
before the first file is written; each file is written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from personalize.artifacts import Artifact, check_trigger, load_artifact
from personalize.errors import PersonalizeError

FORMATS = ("lora", "checkpoint", "embedding")
WHY_NOT = {  # a registry kind whose artifacts cannot leave -> why
    "encoder": "Face2Diffusion's vectors replace the text encoder's input hidden states at 'f l' (token and "
               "position embedding both), which no other tool's embedding or LoRA loader does; use it here "
               "(personalize generate --face-encoder/--person)",
}


class ExportError(PersonalizeError):
    """An export that cannot be made; the message says what was wrong and what was expected."""


@dataclass
class Plan:
    """What one export writes: path -> (tensors, metadata), and the lines to print."""

    files: dict[Path, tuple[dict, dict[str, str]]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def default_out(source: Path, fmt: str) -> Path:
    return {"lora": source.with_name(f"{source.stem}-lora.safetensors"),
            "checkpoint": source.with_name(f"{source.stem}-checkpoint.safetensors"),
            "embedding": source.with_name(f"{source.stem}-embeddings")}[fmt]


def check_exportable(arts: list[Artifact], fmt: str, registry) -> None:
    from personalize.methods import record_for_artifact

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt != "checkpoint" and len(arts) != 1:
        raise ExportError(f"--format {fmt} takes one artifact, got {len(arts)} (several combine only in a checkpoint)")
    for art in arts:
        kind = record_for_artifact(art, registry).kind
        if kind in WHY_NOT:
            raise ExportError(f"{art.path} cannot leave this project: {WHY_NOT[kind]}")
        if fmt == "embedding" and not art.embeddings:
            raise ExportError(f"{art.path} holds no token embedding ({art.method}, weights {art.kind}); export it "
                              "with --format lora or --format checkpoint")
        if fmt != "embedding" and art.kind == "none":
            raise ExportError(f"{art.path} holds only token embeddings, no weight change: --format embedding (an "
                              "embedding file already loads in AUTOMATIC1111, ComfyUI and diffusers)")


def embedding_files(arts: list[Artifact], folder: Path) -> Plan:
    """`<trigger>.safetensors` per trigger in `folder`, one key each (the layout every client reads)."""
    from personalize.artifacts import make_metadata

    plan = Plan()
    for art in arts:
        for trigger, vectors in art.embeddings.items():
            meta = make_metadata("textual_inversion", art.metadata.get("base_model", ""), [check_trigger(trigger)],
                                 personalize_source=str(art.path), personalize_method=art.method)
            plan.files[folder / f"{trigger}.safetensors"] = ({trigger: vectors.float().contiguous()}, meta)
    if plan.files:
        names = ", ".join(t for a in arts for t in a.embeddings)
        plan.lines.append(f"tokens {names}: put the token file(s) in A1111's embeddings/ (prompt with the trigger) "
                          "or ComfyUI's models/embeddings/ (prompt with embedding:<trigger>)")
    return plan


def family(sd) -> str:
    """sd1 | sd2, by the rule the checkpoint writer uses (personalize.export.ldm: the text encoder's activation,
    checked against the UNet's projection); SDXL and other UNets with added conditioning are refused."""
    from personalize.export.ldm import check_unet, infer_variant

    check_unet(sd.unet)
    return infer_variant(sd.text_encoder, sd.unet)


def base_of(arts: list[Artifact], base: str | None) -> tuple[str, list[str]]:
    """The base model to export against, and a note for each artifact that was trained on another."""
    named = {a.metadata.get("base_model") for a in arts} - {None, ""}
    if base:
        return base, [f"note: {a.path} was trained on {a.metadata['base_model']!r}; exported against {base!r}"
                      for a in arts if a.metadata.get("base_model") not in (None, "", base)]
    if len(named) != 1:
        raise ExportError("pass --base: " + ("the artifacts name no base model" if not named else
                                             f"the artifacts were trained on different bases {sorted(named)}"))
    return named.pop(), []


def load_base(base: str, local_files_only: bool):
    """The stock diffusers pipeline of the base, float32 on the CPU."""
    from personalize.components import load_components

    return load_components(base, local_files_only=local_files_only).pipeline()


def lora_plan(art: Artifact, sd, apply, rank, out: Path) -> Plan:
    from personalize import kohya
    from personalize.export.changes import read_changes
    from personalize.export.lora import to_lora

    fam = family(sd)
    changes = read_changes(sd, art, apply)
    if changes.empty:
        raise ExportError(f"{art.path} changes no weight of this base: nothing for a LoRA to hold")
    lora = to_lora(changes, rank)
    meta = kohya.metadata(lora.factors, fam, out.stem) | {
        "personalize_source": str(art.path), "personalize_method": art.method,
        "base_model": art.metadata.get("base_model", ""), "reconstruction_error": f"{lora.worst_error:.3e}"}
    plan = Plan({out: (lora.state_dict(), meta)}, [lora.summary()])
    return plan


def checkpoint_plan(arts: list[Artifact], sd, applies, half: bool, out: Path) -> Plan:
    import torch

    from personalize.export.changes import fold
    from personalize.export.ldm import ldm_state_dict

    fam = family(sd)
    vocab = sd.text_encoder.get_input_embeddings().weight.shape[0]
    for art, apply in zip(arts, applies):
        apply(sd, art)
    fold(sd)
    if sd.text_encoder.get_input_embeddings().weight.shape[0] != vocab:
        sd.text_encoder.resize_token_embeddings(vocab)  # new tokens' rows go in their token files, not here
    tensors = ldm_state_dict(sd.unet, sd.vae, sd.text_encoder, fam)
    if half:
        tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"personalize_sources": json.dumps([str(a.path) for a in arts]), "base_model": arts[0].metadata.get(
        "base_model", ""), "personalize_family": fam}
    return Plan({out: (tensors, meta)}, [f"checkpoint ({fam}, {'float16' if half else 'float32'}): "
                                         f"{len(tensors)} tensors in the original layout"])


def export(paths: list[str], fmt: str, *, base: str | None = None, rank: str | int | None = None,
           out: str | None = None, half: bool = False, force: bool = False, local_files_only: bool = False,
           registry=None) -> Plan:
    """Check, compute, then write every file of the export; returns what was written (Plan.files' keys)."""
    from personalize.atomic import atomic_save_file
    from personalize.methods import REGISTRY, record_for_artifact

    registry = registry or REGISTRY
    arts = [load_artifact(p) for p in paths]
    check_exportable(arts, fmt, registry)
    if rank is not None and fmt != "lora":
        raise ExportError(f"--rank is for --format lora, not {fmt}")
    if half and fmt != "checkpoint":
        raise ExportError(f"--fp16 is for --format checkpoint, not {fmt}")
    target = Path(out) if out else default_out(Path(paths[0]), fmt)
    if fmt == "embedding":
        plan = embedding_files(arts, target)
    else:
        if target.suffix != ".safetensors":
            raise ExportError(f"--out {target}: a {fmt} is written as a .safetensors file")
        tokens = embedding_files(arts, target.parent)
        _refuse_existing([target, *tokens.files], force)  # before the slow part
        base, notes = base_of(arts, base)
        sd = load_base(base, local_files_only)
        applies = [record_for_artifact(a, registry).apply for a in arts]
        plan = (lora_plan(arts[0], sd, applies[0], rank, target) if fmt == "lora"
                else checkpoint_plan(arts, sd, applies, half, target))
        plan.files |= tokens.files
        plan.lines += tokens.lines + notes
    _refuse_existing(list(plan.files), force)
    for path, (tensors, meta) in plan.files.items():
        atomic_save_file(tensors, path, meta)
    return plan


def _refuse_existing(paths: list[Path], force: bool) -> None:
    there = [str(p) for p in paths if p.exists()]
    if there and not force:
        raise ExportError(f"{there[0]} exists: pass --force to overwrite" + (f" ({len(there)} files)"
                                                                           if len(there) > 1 else ""))
