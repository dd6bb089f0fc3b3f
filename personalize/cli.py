"""`personalize generate|train|export|convert|config|quickstart ...`: parse, build, call. Bad input -> one clear line on stderr, exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from personalize.errors import PersonalizeError
from personalize.profiles import TOY


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="batch generation: prompts x seeds -> PNGs, grid.png, results.jsonl")
    p.add_argument("--base", default=TOY, help="diffusers folder, hub id, .safetensors file or 'toyworld'")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeatable); '{}' becomes the trigger word")
    src.add_argument("--prompts", help="file with one prompt per line ('#' comments, blank lines skipped)")
    p.add_argument("--seeds", default="0", help="seeds like '0-7' or '0-3,10' (default 0)")
    p.add_argument("--artifact", action="append", default=[], help="artifact .safetensors (repeatable)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 30)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance (default 7.5; the toy world 5, what it was tuned for: "
                        "the base's profile, personalize.profiles)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    p.add_argument("--scheduler", default=None, help="ddim, euler, euler_a, dpmpp_2m, unipc, pndm, lms, ddpm")
    p.add_argument("--preset", default=None, metavar="METHOD",
                   help="a method's official sampling settings where no flag says otherwise, e.g. face2diffusion: "
                        "euler_a, 30 steps, guidance 7, 512x512 (inference_f2d.py)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: float16 on GPU)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub")
    p.add_argument("--safety-checker", action="store_true", help="run the model's safety checker (off by default)")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("content suppression (SuppressEOT)")
    g.add_argument("--suppress", action="append", default=[], metavar="WORDS",
                   help="a word or span of every prompt to leave out of the images (repeatable)")
    g.add_argument("--suppress-mode", default="swr", choices=["swr", "swr+ito"],
                   help="swr: edit the text embedding only (about free); swr+ito: plus attention-loss optimization")
    g.add_argument("--suppress-alpha", type=float, default=None, help="SWR strength (default 1; < 0 strengthens)")
    g.add_argument("--suppress-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other Suppression setting, e.g. retain_fraction=0.3, ito_iters=5 (repeatable)")
    _add_face_flags(p)
    p.add_argument("--edit", action="append", nargs="+", default=[], metavar=("METHOD", "KEY=VALUE"),
                   help="any generation edit of the method registry with its options as YAML values, e.g. "
                        "--edit suppress_eot 'words=[glasses]' suppress_mode=swr (repeatable; applied after the "
                        "--face/--suppress shorthands)")


def _add_face_flags(p) -> None:
    from personalize.face import DETECTOR_HELP

    g = p.add_argument_group("faces (Face2Diffusion): the person goes where each prompt says 'f l'")
    g.add_argument("--face", action="append", default=[], metavar="PHOTO",
                   help="a face photo; one for every prompt, or one per prompt (repeatable)")
    g.add_argument("--face-detector", default=None, metavar="SPEC",
                   help="how the face is found and aligned: " + DETECTOR_HELP)
    g.add_argument("--face-encoder", default=None, metavar="FILE",
                   help="a face2diffusion.safetensors encoder (default on the toy world: the shipped one)")
    g.add_argument("--person", action="append", default=[], metavar="FILE",
                   help="a <name>.f2d.safetensors person file instead of a photo (repeatable)")


def _suppress_options(args) -> dict:
    from personalize.config import parse_scalar

    options = {} if args.suppress_alpha is None else {"alpha": args.suppress_alpha}
    for item in args.suppress_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PersonalizeError(f"--suppress-option {item!r}: expected KEY=VALUE, e.g. retain_fraction=0.3")
        options[key.strip()] = parse_scalar(value, f"--suppress-option {key.strip()}")
    if options and not args.suppress:
        raise PersonalizeError("--suppress-alpha/--suppress-option need --suppress WORDS")
    return options


def _edit_options(name: str, items: list[str]) -> dict:
    from personalize.config import parse_scalar

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PersonalizeError(f"--edit {name} {item!r}: expected KEY=VALUE, e.g. 'words=[glasses]'")
        options[key.strip()] = parse_scalar(value, f"--edit {name} {key.strip()}")
    return options


def _edit_description(args) -> list[tuple[str, dict]]:
    """The generation edits the flags ask for, as (method, options) pairs: the Face2Diffusion face edit for
    --face / --person, SuppressEOT for --suppress (the shorthands), then each --edit METHOD KEY=VALUE..."""
    options, pairs = _suppress_options(args), []
    if args.face_encoder and not args.face:
        raise PersonalizeError("--face-encoder needs --face PHOTO")
    if args.face or args.person:
        if args.suppress:
            raise PersonalizeError("--face/--person and --suppress do not combine yet (both edit the prompt's "
                                   "text embedding)")
        pairs.append(("face2diffusion", {"face": args.face, "person": args.person, "encoder": args.face_encoder or "",
                                         "detector": args.face_detector or ""}))
    if args.suppress:
        pairs.append(("suppress_eot", {"words": args.suppress, "suppress_mode": args.suppress_mode, **options}))
    return pairs + [(name, _edit_options(name, items)) for name, *items in args.edit]


def _edits(args, registry) -> list:
    """The generation edits (`personalize.pipeline.Edit`) of the flags, made by `methods.edits_from`."""
    from personalize.methods import edits_from
    from personalize.profiles import profile_for

    return edits_from(_edit_description(args), profile_for(args.base), registry)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert pickled .pt/.bin embeddings, or the official Face2Diffusion "
                                       "weights, to safetensors (weights_only load)")
    p.add_argument("files", nargs="*", help=".pt or .bin embedding files")
    p.add_argument("--face2diffusion", nargs=2, default=None, metavar=("MSID.pt", "MAPPING.pt"),
                   help="the official Face2Diffusion msid.pt and mapping.pt -> one face2diffusion.safetensors "
                        "encoder (their licence, CC BY-NC-SA 4.0, goes into its metadata)")
    p.add_argument("--out", default=None, help="output folder (default: beside each input); with --face2diffusion "
                                               "also a .safetensors file (default: beside MSID.pt)")
    p.add_argument("--token", default=None, help="trigger word to use (default: the file's own name)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def _add_export(sub) -> None:
    for name, fmt in (("export", None), ("export-lora", "lora")):
        what = ("an artifact as a file other tools load: --format lora (kohya layout: A1111, ComfyUI, kohya, "
                "diffusers), checkpoint (one .safetensors, original layout) or embedding")
        p = sub.add_parser(name, help=what if fmt is None else "the same as export --format lora")
        p.set_defaults(format=fmt)
        p.add_argument("artifact", nargs="+", help="artifact .safetensors (several only for --format checkpoint)")
        if fmt is None:
            p.add_argument("--format", help="lora, checkpoint or embedding")
        p.add_argument("--rank", default=None, help="LoRA rank: N or 'full' (default: a LoRA's own; 16 for an SVD "
                                                    "extraction, whose error is printed)")
        p.add_argument("--base", default=None, help="the base model (default: the artifact's base_model metadata)")
        p.add_argument("--fp16", action="store_true", help="checkpoint tensors in float16 (half the size)")
        p.add_argument("--out", default=None, help="output file (a folder for embedding; default beside the artifact)")
        p.add_argument("--local-files-only", action="store_true", help="never contact the hub")
        p.add_argument("--force", action="store_true", help="overwrite existing output files")


def _add_erasure_card(sub) -> None:
    p = sub.add_parser("erasure-card", help="the robustness card of an erased toy-world model: direct prompts, "
                                            "paraphrases, pairs, attacks (textual inversion, relearning), collateral")
    p.add_argument("artifact", help="an erasure .safetensors trained on the toy world (esd, abo, uce)")
    p.add_argument("--concept", default=None, help="the erased shape, color or accessory (default: from the file)")
    p.add_argument("--out", default=None, help="output folder (default: <artifact>-card beside it)")
    p.add_argument("--images", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=9000, help="first sampling seed (default 9000)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25, the toy model's)")
    p.add_argument("--attack-seed", type=int, default=0, help="the attackers' training seed (default 0)")
    p.add_argument("--ti-steps", type=int, default=None, help="textual inversion attack steps (default 400)")
    p.add_argument("--relearn-steps", type=int, default=None, help="DreamBooth relearning steps (default 100)")


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config: defaults <- YAML files <- --dotted.key=value")
    p.add_argument("--config", action="append", default=[], help="YAML file (repeatable, later ones win)")


def _add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="the main job on the bundled toy world, in a few minutes on a CPU")
    p.add_argument("--out", default="outputs/quickstart", help="output folder (default outputs/quickstart)")
    p.add_argument("--seeds", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--train-steps", type=int, default=None, help="DreamBooth steps (default: the measured 300)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train any method: --config configs/<method>.yaml [--a.b=value ...]")
    p.add_argument("--config", action="append", default=[],
                   help="YAML config (repeatable, later ones win); a bundled one by name: lora, toyworld/sude")


def _add_train_classes(sub) -> None:
    p = sub.add_parser("train-classes", help="dct for many classes: a token file per class, one file with all, "
                                             "summary.md")
    p.add_argument("--config", action="append", default=[], help="YAML config (repeatable), e.g. configs/dct.yaml")
    p.add_argument("--classes", nargs="+", required=True, help="class labels or 0-based indices of the classifier")


def _add_evaluate_faces(sub) -> None:
    p = sub.add_parser("evaluate-faces", help="identity (face-recognition cosine to the input face), face detection "
                                              "rate and CLIP text scores of a `generate` output folder")
    p.add_argument("--images", required=True, metavar="FOLDER", help="a `personalize generate` output folder "
                                                                     "(PNGs and results.jsonl)")
    p.add_argument("--face", action="append", required=True, metavar="PHOTO",
                   help="the input face photo: one for every image, or one per prompt (repeatable)")
    p.add_argument("--face-detector", default=None, metavar="SPEC",
                   help="an insightface pack folder or detection .onnx (default ~/.insightface/models/buffalo_l); "
                        "'cascade' (coarse); 'none' (the images are aligned face crops)")
    p.add_argument("--recognizer", action="append", default=[], metavar="PACK_OR_ONNX",
                   help="an insightface pack folder or recognition .onnx (repeatable; default: the detector's pack, "
                        "else ~/.insightface/models/buffalo_l)")
    p.add_argument("--clip", default=None, metavar="MODEL", help="a CLIP model folder or hub id for the text score "
                                                                 "(e.g. openai/clip-vit-large-patch14)")
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub")
    p.add_argument("--out", default=None, metavar="FILE", help="report (default FOLDER/face_scores.json)")


def _add_app(sub) -> None:
    sub.add_parser("app", add_help=False, help="the Gradio app (options: personalize app --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="personalize", description="Teach Stable Diffusion new subjects.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_convert(sub)
    _add_export(sub)
    _add_erasure_card(sub)
    _add_config(sub)
    _add_quickstart(sub)
    _add_train(sub)
    _add_train_classes(sub)
    _add_evaluate_faces(sub)
    _add_app(sub)
    return parser


def _no_loader_bars() -> None:
    """--no-progress also hides the loaders' bars ("Loading pipeline components", "Loading weights")."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _apply_preset(args) -> None:
    """--preset METHOD: that method's official sampling settings (its registry record's `preset`) fill the
    sampling flags left unset; --steps defaults to 30 either way."""
    if args.preset:
        from personalize.methods import REGISTRY

        with_preset = [n for n, r in REGISTRY.items() if r.preset]
        if args.preset not in with_preset:
            raise PersonalizeError(f"--preset {args.preset!r}: expected one of {', '.join(with_preset)}")
        for key, value in REGISTRY[args.preset].preset.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.steps = 30 if args.steps is None else args.steps


def cmd_generate(args) -> int:
    from personalize.artifacts import load_artifact
    from personalize.batch import fill_trigger, parse_seeds, read_prompts, run_batch
    from personalize.cpu import configure_threads
    from personalize.dist import process_state
    from personalize.methods import REGISTRY
    from personalize.pipeline import check_numbers, load_pipeline
    from personalize.profiles import profile_for

    prompts = read_prompts(args.prompts) if args.prompts else args.prompt
    if any(not p.strip() for p in prompts):
        raise PersonalizeError("--prompt must not be empty")
    _apply_preset(args)
    seeds = parse_seeds(args.seeds)
    if args.batch_size < 1 or args.steps < 1:
        raise PersonalizeError("--batch-size and --steps must be >= 1")
    check_numbers(args.steps, 7.5 if args.guidance_scale is None else args.guidance_scale, args.height, args.width,
                  seeds)  # before the model loads
    edits = _edits(args, args.registry or REGISTRY)  # bad options fail before the model loads
    configure_threads(profile_for(args.base).max_threads)
    artifacts = [load_artifact(path) for path in args.artifact]  # read once, before the model
    prompts = fill_trigger(prompts, [t for a in artifacts for t in a.triggers])  # a bad '{}' fails here too
    if args.no_progress:
        _no_loader_bars()
    state = process_state()
    pipe = load_pipeline(args.base, artifacts, device=args.device or state.device, dtype=args.dtype,
                         scheduler=args.scheduler, local_files_only=args.local_files_only,
                         safety_checker=args.safety_checker)
    pipe.bind_edits(prompts, edits)  # every prompt, before the first image is written
    guidance = pipe.profile.guidance_scale if args.guidance_scale is None else args.guidance_scale
    records = run_batch(
        pipe, prompts, seeds, args.out, batch_size=args.batch_size, state=state, progress=not args.no_progress,
        negative_prompt=args.negative_prompt, steps=args.steps, guidance_scale=guidance,
        height=args.height, width=args.width, edits=edits,
    )
    if state.is_main_process:
        print(f"{len(records)} images in {args.out} (grid.png, results.jsonl)")
    return 0


def cmd_convert(args) -> int:
    """Embeddings (`personalize.convert`), or the official Face2Diffusion weights (`--face2diffusion`)."""
    from personalize.convert import convert
    from personalize.methods.face2diffusion.convert import BASE_MODEL, LICENCE, convert_official

    if bool(args.files) == bool(args.face2diffusion):
        raise PersonalizeError("give either embedding files or --face2diffusion MSID.pt MAPPING.pt (exactly one)")
    if args.face2diffusion and args.token:
        raise PersonalizeError("--token names an embedding's trigger; --face2diffusion writes an encoder (no trigger)")
    if args.face2diffusion:
        msid, mapping = args.face2diffusion
        written = convert_official(msid, mapping, args.out, args.force)
        print(f"{msid} + {mapping} -> {written}\nlicence: {LICENCE}\nuse: personalize generate --base {BASE_MODEL} "
              f"--preset face2diffusion --face-encoder {written} --face PHOTO --prompt \"a photo of f l\" --out OUT")
        return 0
    for path in args.files:
        written = convert(path, args.out, args.token, args.force)
        print(f"{path} -> {written}")
    return 0


def cmd_export(args) -> int:
    """`export` / `export-lora` (personalize.export.command): check, compute, write, print what and how."""
    from personalize.cpu import configure_threads
    from personalize.export.command import export

    if not args.format:
        raise PersonalizeError("--format is required: lora, checkpoint or embedding")
    _no_loader_bars()  # errors stay one line on stderr
    configure_threads()  # the SVDs use every CPU this process may use
    plan = export(args.artifact, args.format, base=args.base, rank=args.rank, out=args.out, half=args.fp16,
                  force=args.force, local_files_only=args.local_files_only)
    print("\n".join([*plan.lines, *(f"wrote {path}" for path in plan.files)]))
    return 0


def cmd_erasure_card(args) -> int:
    from personalize.cpu import TOY_THREADS, configure_threads
    from personalize.eval.robustness import card, table

    steps = {k: v for k, v in (("textual_inversion", args.ti_steps), ("relearning", args.relearn_steps)) if v}
    if min([args.images, args.steps, *steps.values()]) < 1:
        raise PersonalizeError("--images, --steps, --ti-steps and --relearn-steps must be >= 1")
    source = Path(args.artifact)
    out = Path(args.out) if args.out else source.with_name(f"{source.stem}-card")
    configure_threads(TOY_THREADS)
    try:
        result = card(source, out, args.concept, args.images, args.seed, args.attack_seed, steps, args.steps)
    except ValueError as err:
        raise PersonalizeError(str(err)) from err
    print(f"{table(result)}\n\nWritten: {out}/card.md, card.json, grids/")
    return 0


def cmd_config(args) -> int:
    from personalize.config import dump_config, load_config
    from personalize.methods import parse_options

    cfg = load_config(args.config, args.overrides)
    parse_options(cfg.method.get("name"), cfg.method)  # the method's keys, checked as training checks them
    print(dump_config(cfg), end="")
    return 0


def cmd_quickstart(args) -> int:
    from personalize.cpu import TOY_THREADS, configure_threads
    from personalize.eval.quickstart import examples_dir, run

    if args.seeds < 1 or (args.train_steps is not None and args.train_steps < 1):
        raise PersonalizeError("--seeds and --train-steps must be >= 1")
    configure_threads(TOY_THREADS)
    overrides = {} if args.train_steps is None else {"max_train_steps": args.train_steps}
    report = run(args.out, args.seeds, overrides)
    print(report.read_text())
    artifact = next(report.parent.glob("train/*.safetensors"))
    print(f"""Written: {report.parent}/samples.png, subject.png, report.md

Next:
  personalize generate --artifact {artifact} --seeds 0-7 --out outputs/sks \\
      --prompt "a photo of a smiling sks person wearing glasses on a gray background"
  personalize train --config configs/lora.yaml --data.instance_data_dir={examples_dir()} \\
      --data.instance_prompt="a photo of a sks person" --train.validation_prompt="a photo of a smiling sks person" \\
      --train.output_dir=outputs/lora-person
  personalize app --artifacts-dir {report.parent}""")
    return 0


def _training_config(args):
    """The merged config of `train`/`train-classes`, with the CPU thread cap and INFO logging they run under."""
    import logging

    from personalize.config import load_config
    from personalize.cpu import configure_threads
    from personalize.profiles import profile_for

    cfg = load_config(args.config, args.overrides)
    configure_threads(profile_for(cfg.model.pretrained).max_threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return cfg


def cmd_train(args) -> int:
    """The loop (personalize.trainer.train) on the merged config; under `accelerate launch` one per process."""
    from personalize.trainer import train

    result = train(_training_config(args))
    if result.artifact is not None:
        print(result.artifact)
    return 0


def cmd_train_classes(args) -> int:
    """`train` once per class (personalize.train_classes), then the combined token file and the summary."""
    from personalize.train_classes import train_classes

    summary = train_classes(_training_config(args), args.classes)
    print(f"{summary.read_text()}\nWritten: {summary.parent}/dct-classes.safetensors, summary.md, summary.json")
    return 0


def cmd_evaluate_faces(args) -> int:
    """Scores of a generate folder against its input faces (personalize.eval.faces), written as JSON."""
    import json

    from personalize.atomic import atomic_write_text
    from personalize.eval.faces import evaluate_folder, summary_lines

    out = Path(args.out) if args.out else Path(args.images) / "face_scores.json"
    report = evaluate_folder(args.images, args.face, args.face_detector, args.recognizer, args.clip,
                             args.local_files_only)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print("\n".join(summary_lines(report)) + f"\nWritten: {out}")
    return 0


def cmd_app(args) -> int:
    from personalize.app.main import main as app_main

    return app_main(args.overrides)


def main(argv: list[str] | None = None, registry: dict | None = None) -> int:
    """The command line; `registry`: the method registry to use instead of the default one (a test or a plugin
    that adds a method without editing this file)."""
    from personalize.quiet import quiet

    quiet()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("config", "app", "train", "train-classes"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.overrides, args.registry = rest, registry
    handlers = {"generate": cmd_generate, "convert": cmd_convert, "export": cmd_export, "export-lora": cmd_export,
                "erasure-card": cmd_erasure_card, "config": cmd_config,
                "quickstart": cmd_quickstart, "train": cmd_train, "train-classes": cmd_train_classes,
                "evaluate-faces": cmd_evaluate_faces, "app": cmd_app}
    try:
        return handlers[args.command](args)
    except PersonalizeError as err:
        print(f"personalize {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
