"""benchmarks/gpu: the `--tiny` smoke run of run.sh (as CI runs it), its pure report helpers, and the SD-1.5
shapes of the full-size model (checked on the meta device, nothing allocated). No assertion on any timing value.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

GPU_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


def _load(name: str):
    """A module of benchmarks/gpu by file path (benchmarks/ is not a package; nothing goes on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"gpu_bench_{name}", GPU_BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finite_positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_tiny_run_writes_results(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(GPU_BENCH / "run.sh"), "--tiny", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    extra = results["header"]["extra_steps"]
    rows = results["rows"]
    for base in ("dreambooth", "lora"):
        [row] = [r for r in rows if r["kind"] == "train" and r["impl"] == "ours" and r["base"] == base]
        assert row["error"] is None and row["skipped"] is None, row
        assert _finite_positive(row["wall_short_s"]) and _finite_positive(row["wall_long_s"]), row
        assert row["sec_per_step"] == pytest.approx((row["wall_long_s"] - row["wall_short_s"]) / extra)
        assert _finite_positive(row["max_rss_mb"])
    # diffusers' scripts are not in the repo: without --examples their arms are recorded as skipped, not run
    assert all(r["skipped"] for r in rows if r["impl"] == "diffusers")
    [gen] = [r for r in rows if r["kind"] == "generate"]
    assert gen["error"] is None and _finite_positive(gen["ratio"]), gen
    assert "| arm | impl | s/step |" in (tmp_path / "results.md").read_text(encoding="utf-8")


def _row(impl, base, sps, peak, rss, options=(), skipped=None):
    return {"arm": f"{base} fp16 {impl}", "kind": "train", "impl": impl, "base": base, "precision": "fp16",
            "options": list(options), "sec_per_step": sps, "peak_cuda_mb": peak, "max_rss_mb": rss,
            "wall_short_s": None, "wall_long_s": None, "skipped": skipped, "error": None}


def test_report_helpers(tmp_path):
    report = _load("report")
    assert report.sec_per_step(5.0, 8.0, 10) == pytest.approx(0.3)
    assert report.sec_per_step(5.0, 4.5, 2) == pytest.approx(-0.25)  # noise is reported as measured
    with pytest.raises(ValueError):
        report.sec_per_step(5.0, 8.0, 0)
    assert report.ratio(0.3, 0.25) == pytest.approx(1.2)
    assert report.ratio(1.0, None) is None and report.ratio(1.0, 0.0) is None

    rows = [_row("ours", "dreambooth", 0.30, 1000.0, 2000.0), _row("diffusers", "dreambooth", 0.25, 800.0, 2500.0),
            _row("ours", "dreambooth", 0.5, 600.0, 2000.0, options=["gradient_checkpointing"]),
            _row("ours", "lora", 0.1, None, 1000.0), _row("diffusers", "lora", None, None, None, skipped="no x")]
    pairs = [(ours["arm"], theirs["arm"]) for ours, theirs in report.pairs(rows)]
    assert pairs == [("dreambooth fp16 ours", "dreambooth fp16 diffusers")]
    table = report.ratio_table(rows)
    assert table[2:] == ["| dreambooth fp16 | 1.200 | 1.250 | 0.800 |"]

    methods = [_row("ours", "custom_diffusion", 0.20, 500.0, 1.0), _row("ours", "classdiffusion", 0.21, 510.0, 1.0),
               _row("ours", "sude", 0.39, 1000.0, 1.0)]  # sude / the dreambooth fp16 row above: 0.39 / 0.30
    assert report.method_table(rows + methods)[2:] == ["| classdiffusion / custom_diffusion fp16 | 1.050 | 1.020 |",
                                                       "| sude / dreambooth fp16 | 1.300 | 1.000 |"]

    generate = {"arm": "generate vs plain pipeline", "kind": "generate", "impl": "ours", "ratio": 1.01,
                "generate_s": 0.505, "plain_s": 0.5, "rounds": 5}
    report.write_results(tmp_path, {"device": "test"}, [*rows, generate])
    text = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "| lora fp16 diffusers | diffusers | - | - | - | - | - | skipped: no x |" in text
    assert "generate / plain = 1.010 (median of 5 rounds" in text
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))["rows"][-1] == generate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]  # no temp file left


def test_full_size_model_has_sd15_shapes():
    import torch

    model = _load("model")
    with torch.device("meta"):  # shapes only: the real UNet would take 3.4 GB
        unet, vae, text_encoder = model.sd15_modules()
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, text_encoder)]
    assert counts == [859_520_964, 83_653_863, 123_060_480]  # SD-1.5's UNet, VAE and CLIP text encoder
    assert vae.config.scaling_factor == 0.18215 and unet.config.sample_size * 2 ** 3 == 512
