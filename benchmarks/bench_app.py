"""The app's overhead: one generate request through `gradio_client` against the same call on the Studio directly.

Both on the toy world in this process (the app launched with `prevent_thread_lock`), interleaved `--repeats` times
after a warm-up; printed: medians and the median of the per-round ratios (app / direct).

    python benchmarks/bench_app.py [--repeats 20] [--steps 25] [--images 2]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the app lives in the source tree's app/


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args()

    import torch
    from gradio_client import Client

    from app.main import build_parser, make_app

    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        demo, launch = make_app(build_parser().parse_args(
            ["--artifacts-dir", f"{tmp}/a", "--outputs-dir", f"{tmp}/o", "--port", str(port), "--device", "cpu"]))
        demo.launch(prevent_thread_lock=True, quiet=True, **launch)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        prompt = "a photo of a smiling person wearing glasses"
        call = (prompt, "", [], 0, args.steps, 5, 32, 32, args.images, "", "off")
        from personalize.pipeline import load_pipeline
        from personalize.studio import Studio

        studio = Studio(load_pipeline("toyworld", device="cpu"), f"{tmp}/a", f"{tmp}/o")

        def direct():
            studio.generate(prompt, "", [], 0, args.steps, 5, 32, 32, args.images)

        def through_app():
            client.predict(*call, api_name="/generate")

        direct(), through_app()
        t_direct, t_app = [], []
        for i in range(args.repeats):
            for fn in ((direct, through_app) if i % 2 == 0 else (through_app, direct)):
                start = time.perf_counter()
                fn()
                (t_direct if fn is direct else t_app).append(time.perf_counter() - start)
        demo.close()
    d, a = statistics.median(t_direct), statistics.median(t_app)
    paired = statistics.median(y / x for x, y in zip(t_direct, t_app))
    print(f"direct Studio.generate: median {d * 1000:.0f} ms; through the app (gradio_client): {a * 1000:.0f} ms")
    print(f"ratio app / direct: {a / d:.3f} (medians), {paired:.3f} (median of rounds), {args.images} images, "
          f"{args.steps} steps, {args.repeats} rounds")


if __name__ == "__main__":
    main()
