"""Start the app: `personalize app [--base toyworld] [--artifacts-dir embeddings] [--outputs-dir outputs/app]`
(also `python -m personalize.app`, or `python -m app.main` from a checkout).

Binds 127.0.0.1 unless `--host` says otherwise; `--share` (a public gradio.live link) is off by default. Files are
served only from the outputs folder and Gradio's own temp folder; uploads are capped (`--max-file-size`) and must be
safetensors artifacts.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="personalize app", description="The personalize Gradio app.")
    from personalize.profiles import TOY

    p.add_argument("--base", default=TOY, help="diffusers folder, hub id, .safetensors file or 'toyworld'")
    p.add_argument("--artifacts-dir", default="embeddings", help="folder scanned for .safetensors artifacts")
    p.add_argument("--outputs-dir", default="outputs/app", help="where 'Save' writes PNGs")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--queue-size", type=int, default=8, help="requests waiting at most; more are refused")
    p.add_argument("--max-file-size", default="200mb", help="largest upload accepted")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--local-files-only", action="store_true", help="never contact the hub")
    from personalize.face import DETECTOR_HELP

    p.add_argument("--face-detector", default="", metavar="SPEC",
                   help="how uploaded face photos are found and aligned: " + DETECTOR_HELP)
    return p


def make_app(args, registry: dict | None = None):
    """(demo, launch kwargs) for parsed `args`: the pipeline is loaded here, once; `registry`: the method
    registry the app offers (default: `personalize.methods.REGISTRY`)."""
    from pathlib import Path

    from personalize.app import ui
    from personalize.pipeline import load_pipeline
    from personalize.studio import Studio

    pipe = load_pipeline(args.base, device=args.device, dtype=args.dtype, local_files_only=args.local_files_only)
    pipe.sd.set_progress_bar_config(disable=False, leave=False)  # gr.Progress(track_tqdm=True) follows it
    outputs = Path(args.outputs_dir)
    outputs.mkdir(parents=True, exist_ok=True)
    Path(args.artifacts_dir).mkdir(parents=True, exist_ok=True)
    demo = ui.build(Studio(pipe, args.artifacts_dir, outputs, args.face_detector, registry))
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    launch = {"server_name": args.host, "server_port": args.port, "share": args.share,
              "max_file_size": args.max_file_size, "allowed_paths": [str(outputs.resolve())]}
    return demo, launch


def main(argv: list[str] | None = None) -> int:
    from personalize.cpu import configure_threads
    from personalize.errors import PersonalizeError
    from personalize.profiles import profile_for
    from personalize.quiet import quiet

    quiet()
    args = build_parser().parse_args(argv)
    configure_threads(profile_for(args.base).max_threads)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("personalize app: error: the app needs gradio: pip install 'personalize[app]'", file=sys.stderr)
        return 2
    try:
        check_port(args.host, args.port)  # before the model loads, and before the URL is printed
        demo, launch = make_app(args)
        print(f"personalize app: http://{args.host}:{args.port} (this machine only unless --host; --share for a "
              "public link; Ctrl+C stops it)", flush=True)
        demo.launch(quiet=True, **launch)  # quiet: gradio's own banner suggests `share=True`, our flag is --share
    except (PersonalizeError, OSError) as err:  # OSError: the port taken between the check and the launch
        print(f"personalize app: error: {err}", file=sys.stderr)
        return 2
    return 0


def check_port(host: str, port: int) -> None:
    """Refuse a port another program holds (gradio would fail only after the model loaded)."""
    import socket

    from personalize.errors import PersonalizeError

    if not 0 < port < 65536:
        raise PersonalizeError(f"--port {port}: expected 1..65535")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gradio probes: TIME_WAIT is free
            probe.bind((host, port))
    except OSError as err:
        raise PersonalizeError(f"--port {port} on {host} is not free ({err.strerror}); another app is using it: "
                               "pass --port with a free one") from None


if __name__ == "__main__":
    sys.exit(main())
