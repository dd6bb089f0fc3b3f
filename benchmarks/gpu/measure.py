"""Run a Python script as `__main__` and record its wall time and peak memory as JSON.

    GPU_BENCH_MEASURE_JSON=out.json python benchmarks/gpu/measure.py SCRIPT [ARGS ...]

Both our trainer and diffusers' example scripts go through this wrapper, so both are measured the same way:
the clock starts just before the script runs (interpreter start-up is left out) and stops in a `finally`, so a
failing script still leaves its numbers. The script's exit status is passed on unchanged.
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import sys
import time

ENV_VAR = "GPU_BENCH_MEASURE_JSON"


def peak_cuda_mb() -> float | None:
    """Peak CUDA memory allocated by this process (MiB), or None without CUDA."""
    torch = sys.modules.get("torch")  # the script imported it already; importing here would add to the time
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def write_json(path: str, record: dict) -> None:
    """Write `record` to `path` atomically (a temp name in the same folder, then os.replace)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    os.replace(tmp, path)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: measure.py SCRIPT [ARGS ...] (the JSON goes to $" + ENV_VAR + ")")
    out = os.environ.get(ENV_VAR)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    # sys.path[0] is this wrapper's folder; make it the script's, as `python SCRIPT` would (and so that the
    # benchmark's own modules, e.g. model.py, cannot shadow anything the script imports)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    start = time.perf_counter()
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        wall = time.perf_counter() - start
        record = {"wall_s": wall, "peak_cuda_mb": peak_cuda_mb(),
                  # ru_maxrss is in KiB on Linux
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        if out:
            write_json(out, record)


if __name__ == "__main__":
    main()
