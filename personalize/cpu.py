"""How many CPU threads torch may use: never more than the CPUs this process can actually run on.

torch sizes its intra-op pool from the cores OpenMP reports, which ignores a container's cgroup CPU quota: in a
container limited to 2 CPUs on a 64-core host it starts 64 spinning threads. `configure_threads()` caps the
pool at `available_cpus()` and respects `OMP_NUM_THREADS` (as accelerate's launcher sets it) when given. Every
entry point (the `personalize` command, training/train.py, the app, the toy-world tools, the tests) calls it once.

The toy world's models are tiny (32x32 images, a few million parameters): their matmuls are too small to split,
and on a 2-vCPU machine one thread trains them faster than two (benchmarks/bench_threads.py). Entry points on
the toy world pass `max_threads=TOY_THREADS`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

TOY_THREADS = 1  # see the module docstring and benchmarks/BENCHMARKS.md


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's CFS quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`)."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu" if (root / "cpu").is_dir() else root
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            return None if quota <= 0 else quota / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: the affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def configure_threads(max_threads: int | None = None, environ: dict | None = None) -> int:
    """Set torch's intra-op threads to OMP_NUM_THREADS when it is set (a positive integer), else to
    min(torch's default, available_cpus(), max_threads). Returns the count in use."""
    import torch

    environ = os.environ if environ is None else environ
    want = None
    raw = environ.get("OMP_NUM_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        want = int(raw)
    n = want or min(torch.get_num_threads(), available_cpus(), max_threads or 1 << 30)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n
