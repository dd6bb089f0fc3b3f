"""Pure helpers of the GPU benchmark: seconds per step by differencing, the markdown report, atomic writes.

No torch here: tests/test_gpu_bench.py checks these on hand-made rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def sec_per_step(wall_short: float, wall_long: float, extra_steps: int) -> float:
    """Seconds per training step from a short and a long run of the same arm.

    Loading, set-up and saving are in both runs and cancel; what is left is `extra_steps` steps. On a noisy
    machine and a tiny model the difference can come out near zero or negative: it is reported as measured."""
    if extra_steps <= 0:
        raise ValueError(f"the long run needs more steps than the short one, got {extra_steps} extra")
    return (wall_long - wall_short) / extra_steps


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None where either is missing or the divisor is not positive."""
    if ours is None or theirs is None or theirs <= 0:
        return None
    return ours / theirs


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _status(row: dict) -> str:
    if row.get("error"):
        return "error"
    if row.get("skipped"):
        return "skipped: " + row["skipped"].replace("|", "/")
    return "ok"


def arm_table(rows: list[dict]) -> list[str]:
    """Markdown table of the training arms, one line per row."""
    lines = ["| arm | impl | s/step | peak CUDA MB | max RSS MB | short s | long s | status |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row.get("kind", "train") != "train":
            continue
        cells = [row["arm"], row["impl"], _cell(row.get("sec_per_step"), 4), _cell(row.get("peak_cuda_mb"), 0),
                 _cell(row.get("max_rss_mb"), 0), _cell(row.get("wall_short_s"), 2),
                 _cell(row.get("wall_long_s"), 2), _status(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(ours, diffusers) rows with the same base, precision and options, both measured."""
    def key(row):
        return row["base"], row["precision"], tuple(row["options"])

    done = [r for r in rows if r.get("kind", "train") == "train" and r.get("sec_per_step") is not None]
    theirs = {key(r): r for r in done if r["impl"] == "diffusers"}
    return [(r, theirs[key(r)]) for r in done if r["impl"] == "ours" and key(r) in theirs]


def ratio_table(rows: list[dict]) -> list[str]:
    """Markdown table of ours / diffusers for each measured pair (s/step, peak CUDA memory, max RSS)."""
    lines = ["| pair | s/step ours/diffusers | peak CUDA ours/diffusers | max RSS ours/diffusers |",
             "|---|---|---|---|"]
    for ours, theirs in pairs(rows):
        name = " ".join([ours["base"], "+".join([ours["precision"], *ours["options"]])])
        cells = [name, _cell(ratio(ours["sec_per_step"], theirs["sec_per_step"])),
                 _cell(ratio(ours.get("peak_cuda_mb"), theirs.get("peak_cuda_mb"))),
                 _cell(ratio(ours.get("max_rss_mb"), theirs.get("max_rss_mb")))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


METHOD_BASES = {"classdiffusion": "custom_diffusion", "sude": "dreambooth"}  # regularizer -> its base's arm


def method_table(rows: list[dict]) -> list[str]:
    """Markdown table of each regularizer's step against its base's (ours, same precision and options)."""
    def key(row):
        return row["base"], row["precision"], tuple(row["options"])

    done = {key(r): r for r in rows if r.get("kind", "train") == "train" and r["impl"] == "ours"
            and r.get("sec_per_step") is not None}
    lines = ["| method on its base | s/step x base | peak CUDA x base |", "|---|---|---|"]
    for (base, precision, options), row in done.items():
        ref = done.get((METHOD_BASES.get(base), precision, options))
        if ref is not None:
            name = f"{base} / {ref['base']} " + "+".join([precision, *options])
            lines.append(f"| {name} | {_cell(ratio(row['sec_per_step'], ref['sec_per_step']))} | "
                         f"{_cell(ratio(row.get('peak_cuda_mb'), ref.get('peak_cuda_mb')))} |")
    return lines


def generate_lines(rows: list[dict]) -> list[str]:
    """One line per generate-vs-plain row."""
    lines = []
    for row in rows:
        if row.get("kind") != "generate":
            continue
        if row.get("ratio") is None:
            lines.append(f"- {row['arm']}: {_status(row)}")
        else:
            lines.append(f"- {row['arm']}: generate / plain = {row['ratio']:.3f} (median of {row['rounds']} "
                         f"rounds; {row['generate_s']:.3f} s vs {row['plain_s']:.3f} s)")
    return lines


def markdown(header: dict, rows: list[dict]) -> str:
    """The whole results.md: the run's header, the arms, the ours/diffusers ratios, generate vs plain."""
    head = ", ".join(f"{k} {v}" for k, v in header.items() if k != "probes")
    probes = ", ".join(f"{k}: {v}" for k, v in header.get("probes", {}).items())
    parts = ["# GPU benchmark", "", head, ""]
    if probes:
        parts += [f"Optional packages: {probes}", ""]
    parts += ["## Training arms (s/step = (long - short) / extra steps)", "", *arm_table(rows), ""]
    parts += ["## Ours / diffusers", "", *ratio_table(rows), ""]
    parts += ["## Regularizers / their bases (ours)", "", *method_table(rows), ""]
    parts += ["## Generate vs plain pipeline", "", *(generate_lines(rows) or ["- not run"]), ""]
    return "\n".join(parts)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp name in the same folder and os.replace, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(out: Path, header: dict, rows: list[dict]) -> None:
    """results.json ({"header": ..., "rows": [...]}) and results.md, both atomically."""
    write_atomic(out / "results.json", json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    write_atomic(out / "results.md", markdown(header, rows))
