"""`personalize generate|train|export|convert|config|quickstart ...`: parse, build, call. Bad input -> one clear line on stderr, exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from personalize.cli_generate import add_generate, cmd_generate
from personalize.errors import PersonalizeError, os_error_line
from personalize.quiet import no_loader_bars


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
    p = sub.add_parser("config", help="print the resolved config: defaults <- YAML files <- --dotted.key=value",
                       epilog=OVERRIDES)
    p.add_argument("--config", action="append", default=[], help="YAML file (repeatable, later ones win)")


def _add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="the main job on the bundled toy world: about 1 min on a 2-core CPU, "
                                          "no download")
    p.add_argument("--out", default="outputs/quickstart", help="output folder (default outputs/quickstart)")
    p.add_argument("--seeds", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--train-steps", type=int, default=None, help="DreamBooth steps (default: the measured 300)")


OVERRIDES = ("any config key as --section.key=value after the files, e.g. --train.max_train_steps=400 "
             "--method.rank=8 --data.instance_data_dir=photos (later wins; YAML values: null, true, [a, b]); "
             "`personalize config --config ...` prints the merged result")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train any method: --config configs/<method>.yaml [--a.b=value ...]",
                       epilog=OVERRIDES, usage="personalize train [-h] --config CONFIG [--config ...] "
                                                "[--section.key=value ...]")
    p.add_argument("--config", action="append", default=[],
                   help="YAML config (repeatable, later ones win); a bundled one by name: lora, toyworld/sude")


def _add_train_classes(sub) -> None:
    p = sub.add_parser("train-classes", help="dct for many classes: a token file per class, one file with all, "
                                             "summary.md", epilog=OVERRIDES)
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
    add_generate(sub)
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
    no_loader_bars()  # errors stay one line on stderr
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
    from personalize.trainer import check_train_config

    cfg = load_config(args.config, args.overrides)
    parse_options(cfg.method.get("name"), cfg.method)  # the method's keys, checked as training checks them
    check_train_config(cfg.train)  # and its numbers: what is printed would train
    print(dump_config(cfg), end="")
    return 0


def cmd_quickstart(args) -> int:
    from personalize.cpu import TOY_THREADS, configure_threads
    from personalize.eval.quickstart import WRITTEN, examples_dir, run

    if args.seeds < 1 or (args.train_steps is not None and args.train_steps < 1):
        raise PersonalizeError("--seeds and --train-steps must be >= 1")
    configure_threads(TOY_THREADS)
    overrides = {} if args.train_steps is None else {"max_train_steps": args.train_steps}
    report = run(args.out, args.seeds, overrides)
    print(report.read_text())
    artifact = next(report.parent.glob("train/*.safetensors"))
    print(f"""Written: {report.parent}/{', '.join(WRITTEN)}

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
    except OSError as err:  # the machine's: a full disk, a folder that cannot be written
        print(f"personalize {args.command}: error: {os_error_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C; training says where it stopped and how to resume (errors.Stopped)
        print(f"personalize {args.command}: {str(err) or 'stopped (Ctrl-C)'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
