"""`personalize generate`: its flags, the generation edits they ask for, and the batch run."""

from __future__ import annotations

from personalize.errors import PersonalizeError
from personalize.profiles import TOY
from personalize.quiet import no_loader_bars


def add_generate(sub) -> None:
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
    from personalize.atomic import check_out_folder
    from personalize.batch import fill_trigger, parse_seeds, read_prompts, run_batch
    from personalize.cpu import configure_threads
    from personalize.dist import process_state
    from personalize.methods import REGISTRY
    from personalize.inputs import check_numbers, check_prompts
    from personalize.pipeline import load_pipeline
    from personalize.profiles import profile_for

    prompts = read_prompts(args.prompts) if args.prompts else args.prompt
    check_prompts(prompts, [args.negative_prompt] * len(prompts))  # empty or non-UTF-8: before the model loads
    check_out_folder(args.out, "--out")
    _apply_preset(args)
    seeds = parse_seeds(args.seeds)
    if args.batch_size < 1:
        raise PersonalizeError("--batch-size must be >= 1")
    check_numbers(args.steps, 7.5 if args.guidance_scale is None else args.guidance_scale, args.height, args.width,
                  seeds)  # before the model loads
    edits = _edits(args, args.registry or REGISTRY)  # bad options fail before the model loads
    configure_threads(profile_for(args.base).max_threads)
    artifacts = [load_artifact(path) for path in args.artifact]  # read once, before the model
    prompts = fill_trigger(prompts, [t for a in artifacts for t in a.triggers])  # a bad '{}' fails here too
    if args.no_progress:
        no_loader_bars()
    state = process_state()
    pipe = load_pipeline(args.base, artifacts, device=args.device or state.device, dtype=args.dtype,
                         scheduler=args.scheduler, local_files_only=args.local_files_only,
                         safety_checker=args.safety_checker)
    pipe.bind_edits(prompts, edits)  # every prompt, before the first image is written
    guidance = pipe.profile.guidance_scale if args.guidance_scale is None else args.guidance_scale
    result = run_batch(
        pipe, prompts, seeds, args.out, batch_size=args.batch_size, state=state, progress=not args.no_progress,
        negative_prompt=args.negative_prompt, steps=args.steps, guidance_scale=guidance,
        height=args.height, width=args.width, edits=edits,
    )
    if state.is_main_process:
        total = len(result.records)
        kept = f": {total - result.kept} new, {result.kept} already there with these settings" if result.kept else ""
        print(f"{total} images in {args.out} (grid.png, results.jsonl){kept}")
    return 0
