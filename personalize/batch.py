"""Batch generation: prompts x seeds -> one PNG each (settings in the text chunk), `grid.png`, `results.jsonl`.

Resumable: an image whose file exists with the same settings is not generated again. Under
`accelerate launch` with several processes the (prompt, seed) jobs are split between them; the main
process writes the grid and the results file once everyone is done.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from personalize.atomic import atomic_path, atomic_write_text
from personalize.errors import PersonalizeError, read_text


def slug(prompt: str, fallback: str = "prompt") -> str:
    """A file-name-safe prefix of a prompt: 'a photo, of x' -> 'a_photo_of_x' (at most 40 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", prompt).strip("_")[:40] or fallback


@dataclass(frozen=True)
class Job:
    index: int  # prompt index
    prompt: str
    seed: int

    @property
    def filename(self) -> str:
        return f"{self.index:04d}-{slug(self.prompt)}-s{self.seed}.png"


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range that every device accepts
MAX_SEED_COUNT = 100_000  # images per prompt one command may ask for


def parse_seeds(text: str) -> list[int]:
    """'0-7' -> 0..7; '1,5,9' and '0-3,10' work too. A range runs upward ('5-1' is an error, not nothing), a part
    is never half a range ('1-'), and the count is checked before any list is built."""
    parts = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise PersonalizeError(f"--seeds {text!r}: {part.strip()!r} is not a seed or a range like '0-7' "
                                   "(expected integers >= 0 and ranges like '0-7' or '0-3,10')")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise PersonalizeError(f"--seeds {text!r}: the range {part.strip()!r} runs downward; write {hi}-{lo}")
        if hi > MAX_SEED:
            raise PersonalizeError(f"--seeds {text!r}: seeds go up to {MAX_SEED} (2**63 - 1), got {hi}")
        parts.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in parts)
    if count > MAX_SEED_COUNT:
        raise PersonalizeError(f"--seeds {text!r} asks for {count:,} seeds per prompt; at most {MAX_SEED_COUNT:,}")
    return [s for lo, hi in parts for s in range(lo, hi + 1)]


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    if not path.is_file():
        raise PersonalizeError(f"prompt file not found: {path}")
    lines = [ln.strip() for ln in read_text(path, "prompt file").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        raise PersonalizeError(f"prompt file {path} is empty: expected one prompt per line")
    return prompts


def fill_trigger(prompts: list[str], triggers: list[str]) -> list[str]:
    """Replace `{}` with the one loaded trigger word."""
    if not any("{}" in p for p in prompts):
        return prompts
    if len(triggers) != 1:
        raise PersonalizeError(
            f"prompts use '{{}}' but {len(triggers)} trigger words are loaded ({triggers}); "
            "expected exactly one embedding artifact, or write the trigger words in the prompts"
        )
    return [p.replace("{}", triggers[0]) for p in prompts]


def _existing_settings(path: Path) -> dict | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return json.loads(im.text.get("personalize", "null"))
    except (OSError, ValueError):
        return None


@dataclass
class BatchResult:
    records: list[dict]  # every job's file and settings (main process; [] on the others)
    kept: int  # files already in the folder with these settings, not generated again (all processes)


def run_batch(pipe, prompts: list[str], seeds: list[int], out: str | Path, batch_size: int = 4,
              state=None, progress: bool = True, **gen_kwargs) -> BatchResult:
    """Generate every (prompt, seed) not already in `out`; the records of all jobs and how many were kept.

    `gen_kwargs` go to both `pipe.generate` and `pipe.settings` (negative_prompt, steps, guidance_scale, height,
    width, edits): an existing file is kept only if its stored settings are what these would write."""
    from tqdm.auto import tqdm

    out = Path(out)
    jobs = [Job(i, p, s) for i, p in enumerate(prompts) for s in seeds]
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    done = {j.filename for j in jobs
            if _existing_settings(out / j.filename) == pipe.settings(j.prompt, j.seed, **gen_kwargs)}
    mine = jobs[rank::world]
    todo = [j for j in mine if j.filename not in done]
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not progress, desc=f"generate[{rank}]")
    for prompt_jobs in _chunks(todo, batch_size):
        images = pipe.generate(prompt_jobs[0].prompt, seed=[j.seed for j in prompt_jobs], **gen_kwargs)
        for job, img in zip(prompt_jobs, images):
            with atomic_path(out / job.filename) as tmp:
                img.image.save(tmp, format="PNG", pnginfo=img.pnginfo())
        bar.update(len(prompt_jobs))
    bar.close()
    if state is not None:
        state.wait_for_everyone()
    if rank != 0:
        return BatchResult([], len(done))
    records = [{"file": j.filename, **(_existing_settings(out / j.filename) or {})} for j in jobs]
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    _write_grid(out, jobs, len(prompts), len(seeds))
    return BatchResult(records, len(done))


def _chunks(jobs: list[Job], size: int):
    """Consecutive jobs of the same prompt, at most `size` per generate call."""
    chunk: list[Job] = []
    for job in jobs:
        if chunk and (job.index != chunk[0].index or len(chunk) == size):
            yield chunk
            chunk = []
        chunk.append(job)
    if chunk:
        yield chunk


def make_grid(images: list, cols: int | None = None, rows: list[str] | None = None,
              columns: list[str] | None = None):
    """PIL images of one size in rows of `cols` (default: all in one row). `columns`: a label above each column
    (the seeds); `rows`: a line above each row (its prompt), cut to the grid's width, as A1111's grids label
    their axes."""
    from PIL import Image, ImageDraw, ImageFont

    cols = cols or len(images)
    n_rows = -(-len(images) // cols)
    w, h = images[0].size
    font = ImageFont.load_default()
    line = LABEL_HEIGHT if rows or columns else 0
    top, band = (line if columns else 0), (line if rows else 0)
    grid = Image.new("RGB", (cols * w, top + n_rows * (band + h)), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(columns or []):
        text = text if draw.textlength(text, font=font) <= w - 4 else text.split()[-1]  # "seed 12" -> "12"
        draw.text((c * w + 2, 1), _fit(draw, text, w - 4, font), fill="black", font=font)
    for r, text in enumerate(rows or []):
        draw.text((2, top + r * (band + h) + 1), _fit(draw, text, cols * w - 4, font), fill="black", font=font)
    for k, im in enumerate(images):
        grid.paste(im, ((k % cols) * w, top + (k // cols) * (band + h) + band))
    return grid


LABEL_HEIGHT = 14  # pixels of one label line (Pillow's default font is 11 high)


def _fit(draw, text: str, width: int, font) -> str:
    """`text`, cut with '...' so that it fits `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _write_grid(out: Path, jobs: list[Job], rows: int, cols: int) -> None:
    """One row per prompt (labelled with it), one column per seed (labelled 'seed N')."""
    from PIL import Image

    images = [Image.open(out / j.filename).convert("RGB") for j in jobs]
    grid = make_grid(images, cols, rows=[jobs[r * cols].prompt for r in range(rows)],
                     columns=[f"seed {j.seed}" for j in jobs[:cols]])
    with atomic_path(out / "grid.png") as tmp:
        grid.save(tmp, format="PNG")
