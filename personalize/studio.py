"""What the app does, without any UI: list the artifacts of a folder, generate with a chosen set, save, upload.

The Gradio app (`personalize/app/ui.py`) only lays out controls and calls a `Studio`; everything here is plain Python, so
it is tested without a browser and usable from a notebook:

    studio = Studio(load_pipeline("path/to/sd15"), "embeddings/", "outputs/app")
    [e.label for e in studio.entries()]          # every .safetensors file, usable or not (with the reason)
    images = studio.generate("a photo of sks", artifacts=["embeddings/sks.safetensors"], seed=-1)
    edits = studio.edits({"suppress_eot": {"words": ["glasses"]}})    # any inference method of the registry
    images = studio.generate("a man wearing glasses", edits=edits)
    studio.save(images)                          # PNGs with their settings in the text chunk

The Studio knows no method: what it shows of a file comes from its method's registry record (`describe`), and
edits are made from plain descriptions by `personalize.methods.edits_from`.

Artifacts are swapped on the live pipeline (`Pipeline.set_artifacts`): only the difference is applied or undone,
the base is never reloaded. Paths outside the artifacts folder are refused.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from personalize.artifacts import ArtifactError, check_width, load_artifact, trained_on
from personalize.atomic import atomic_path
from personalize.batch import slug
from personalize.errors import PersonalizeError


@dataclass
class Entry:
    """One `.safetensors` file of the artifacts folder, as the app lists it."""

    path: str
    method: str = "?"
    triggers: list[str] = field(default_factory=list)
    base_model: str = "?"
    usable: bool = True
    reason: str = ""
    rel: str = ""  # the path relative to the artifacts folder: what tells two `dreambooth.safetensors` apart
    modified: str = ""  # the file's date, YYYY-MM-DD HH:MM
    trained_on: str = ""  # for a file without trigger words: the prompt or caption it was trained with
    # from the method's record (`MethodRecord.describe`):
    shows: str = ""  # text in place of the trigger words ("erases: dog", "encoder")
    note: str = ""  # text after them ("class: dog")
    edit: str = ""  # the generation edit that reads this file (its `file` option): a choice there, not applied
    compare: bool = False  # the comparison shows the images without this artifact
    licence: str = ""  # weights under another licence than ours (the `licence` metadata of converted weights)

    @property
    def name(self) -> str:
        return Path(self.path).stem

    @property
    def label(self) -> str:
        words = ", ".join(self.triggers) or self.shows or \
            (f"prompt: {self.trained_on!r}" if self.trained_on else "no trigger word")
        words += f" ({self.note})" if self.note else ""
        text = f"{self.rel or self.name} | {self.method} | {words} | base: {self.base_model}"
        text += f" | {self.modified}" if self.modified else ""
        text += f" | licence: {self.licence}" if self.licence else ""
        return text if self.usable else f"{text} | unusable: {self.reason}"


def describe(path: Path, width: int, folder: Path | None = None, registry: dict | None = None) -> Entry:
    """Read a file's metadata (ours or third-party) and check it against a text encoder of `width`; its method's
    record (`registry`, default `personalize.methods.REGISTRY`) says what more to show of it."""
    rel = str(path.relative_to(folder)) if folder is not None else path.name
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)) if path.exists() else ""
    try:
        art = load_artifact(path)
    except ArtifactError as err:
        return Entry(str(path), usable=False, reason=str(err).replace(f"{path}: ", ""), rel=rel, modified=stamp)
    base = art.metadata.get("base_model") or ("third-party file" if "method" not in art.metadata else "?")
    shown = _described(art, registry)
    entry = Entry(str(path), art.method, art.triggers, base, rel=rel, modified=stamp,
                  trained_on="" if art.triggers else trained_on(art), shows=str(shown.get("shows", "")),
                  note=str(shown.get("note", "")), edit=str(shown.get("edit", "")),
                  compare=bool(shown.get("compare", False)), licence=art.metadata.get("licence", ""))
    try:
        check_width(art, width)
    except ArtifactError as err:
        entry.usable, entry.reason = False, str(err).replace(f"{path}: ", "")
    return entry


def _described(art, registry: dict | None) -> dict:
    """The record's `describe(art)` of the file's method ({} for a method it does not know, or none)."""
    if registry is None:
        from personalize.methods import REGISTRY as registry
    record = registry.get(art.method)
    return dict(record.describe(art)) if record is not None and record.describe is not None else {}


def scan_artifacts(folder: str | Path, width: int, registry: dict | None = None) -> list[Entry]:
    """Every `.safetensors` file under `folder` (recursively, skipping training runs' `checkpoint-*` folders),
    sorted by path; pickles are not listed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [p for p in sorted(folder.rglob("*.safetensors"))
             if p.is_file() and not any(part.startswith("checkpoint-") for part in p.relative_to(folder).parts)]
    return [describe(p, width, folder, registry) for p in files]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


class Studio:
    """A pipeline plus the folders the app reads artifacts from and writes images to."""

    def __init__(self, pipe, artifacts_dir: str | Path, outputs_dir: str | Path, face_detector: str = "",
                 registry: dict | None = None):
        from personalize.face import detector_spec
        from personalize.methods import REGISTRY

        self.pipe = pipe
        self.artifacts_dir = Path(artifacts_dir)
        self.outputs_dir = Path(outputs_dir)
        self.registry = REGISTRY if registry is None else registry  # the methods it lists, applies and edits with
        # `personalize app --face-detector`, or the base profile's default ("none" on the toy world, else the pack)
        self.face_detector_spec = detector_spec(face_detector, pipe.profile.face_detector)
        self._detector = None  # made on the first face photo, then kept

    def face_detector(self):
        """The detector that finds and aligns uploaded face photos (`personalize.face`), made once; "none" when
        photos are taken as aligned crops."""
        if self._detector is None:
            from personalize.face import resolve_detector

            self._detector = resolve_detector(self.face_detector_spec) or "none"
        return self._detector

    def entries(self) -> list[Entry]:
        return scan_artifacts(self.artifacts_dir, self.pipe.width, self.registry)

    def _artifact_paths(self, chosen: list[str]) -> list[str]:
        paths = []
        for item in chosen or []:
            path = Path(item)
            path = path if path.is_absolute() else self.artifacts_dir / path
            if not _inside(path, self.artifacts_dir) or path.suffix != ".safetensors":
                raise PersonalizeError(f"artifact {item!r} is not a .safetensors file in {self.artifacts_dir}")
            paths.append(str(path))
        return paths

    def edit_names(self) -> list[str]:
        """The generation edits of the registry (its inference methods), by name."""
        return [name for name, record in self.registry.items() if record.edit is not None]

    def edits(self, description) -> list:
        """The generation edits (`personalize.pipeline.Edit`) of a plain description, {method: options} or a list
        of (method, options) pairs (`personalize.methods.edits_from`), for this base's profile. An option `file`
        names a file of the artifacts folder (a path outside it is refused)."""
        from personalize.methods import edits_from

        pairs = list(description.items()) if isinstance(description, dict) else list(description or ())
        resolved = []
        for pair in pairs:
            name, options = pair if isinstance(pair, (tuple, list)) and len(pair) == 2 else (pair, None)
            if isinstance(options, dict) and isinstance(options.get("file"), (str, Path)) and options["file"]:
                options = options | {"file": self._artifact_paths([str(options["file"])])[0]}
            resolved.append((name, options))
        return edits_from(resolved, self.pipe.profile, self.registry)

    @staticmethod
    def read_options(text: str, name: str = "the edit") -> dict:
        """An edit's options typed as YAML (`words: [glasses]`, or a flow mapping `{words: [glasses]}`)."""
        import yaml

        try:
            options = yaml.safe_load(text or "") or {}
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise PersonalizeError(f"the options of {name} are not YAML: {problem}") from None
        from personalize.config import check_size

        check_size(options, f"the options of {name}")
        if not isinstance(options, dict):
            raise PersonalizeError(f"the options of {name} must be a mapping like 'words: [glasses]', got "
                                   f"{type(options).__name__}")
        return options

    def edit_files(self, edit: str) -> list[Entry]:
        """The usable files of the artifacts folder that the generation edit `edit` reads (its `file` choices)."""
        return [e for e in self.entries() if e.edit == edit and e.usable]

    def preview(self, description):
        """What the first edit of `description` that has a preview shows (a face edit: the crop its encoder
        reads), or the error those options give; None when none has one."""
        for e in self.edits(description):
            if hasattr(e, "preview"):
                return e.preview()
        return None

    def check(self, prompt: str, artifacts: list[str] = (), num_images: int = 1, edits: list = (),
              compare: bool = False) -> None:
        """Raise the error `generate` (`compare`: `compare`) would give for these settings, before any denoising:
        an empty prompt, a bad image count, an artifact that is not in the folder or does not fit the base, an edit
        that does not apply to the prompt, a comparison without an erasure. Leaves `artifacts` applied."""
        self._prepare(prompt, artifacts, num_images)
        self.pipe.check_edits([prompt], self._edit_list(edits))
        if compare:
            self._erasures_to_compare(artifacts)

    def _prepare(self, prompt: str, artifacts, num_images) -> None:
        """The settings checks of `check` apart from the edits (which `Pipeline.generate` checks itself), then
        apply `artifacts`."""
        if not prompt or not prompt.strip():
            raise PersonalizeError("the prompt is empty: describe the image to generate")
        if not 1 <= int(num_images) <= 16:
            raise PersonalizeError(f"number of images must be 1..16, got {num_images}")
        self.pipe.set_artifacts(self._artifact_paths(list(artifacts)))

    def generate(self, prompt: str, negative_prompt: str = "", artifacts: list[str] = (), seed: int = -1,
                 steps: int = 30, guidance_scale: float | None = None, width: int | None = None,
                 height: int | None = None, num_images: int = 1, edits: list = ()) -> list:
        """Generate with exactly `artifacts` applied (paths in the artifacts folder) and `edits` (`Studio.edits`, or
        a plain description).
        seed -1 draws one (reported in each image's settings); a list gives each image its seed; guidance_scale
        None: the base's (its profile)."""
        self._prepare(prompt, artifacts, num_images)  # the edits are checked by Pipeline.generate, before any image
        seeds = [int(s) for s in seed] if isinstance(seed, list) else None if int(seed) < 0 else int(seed)
        guidance = None if guidance_scale is None else float(guidance_scale)
        return self.pipe.generate(prompt, negative_prompt or None, num_images=int(num_images), seed=seeds,
                                  steps=int(steps), guidance_scale=guidance, width=width and int(width),
                                  height=height and int(height), edits=self._edit_list(edits))

    def _edit_list(self, edits) -> list:
        from personalize.pipeline import is_description

        return self.edits(edits) if is_description(edits) else list(edits or ())

    def erasures(self, artifacts: list[str]) -> list[str]:
        """The chosen artifacts the comparison leaves out (their record says `compare`: erasures)."""
        erasing = {e.rel for e in self.entries() if e.compare}
        return [a for a in artifacts if a in erasing]

    def _erasures_to_compare(self, artifacts) -> list[str]:
        erasing = self.erasures(list(artifacts))
        if not erasing:
            raise PersonalizeError("the comparison needs an erasure artifact among the chosen ones (its label "
                                   "says 'erases: ...')")
        return erasing

    def compare(self, prompt: str, negative_prompt: str = "", artifacts: list[str] = (), seed: int = -1,
                **settings) -> tuple[list, list]:
        """(erased, without): the images with `artifacts`, then on the same seeds without the erasure artifacts
        among them (everything else still applied): what the erasure changed, image by image."""
        erasing = self._erasures_to_compare(artifacts)
        erased = self.generate(prompt, negative_prompt, artifacts, seed, **settings)
        seeds = [g.settings["seed"] for g in erased]
        kept = [a for a in artifacts if a not in erasing]
        return erased, self.generate(prompt, negative_prompt, kept, seeds, **settings)

    def save(self, images: list) -> list[Path]:
        """Write each GeneratedImage as a PNG (settings in its text chunk) under the outputs folder, atomically."""
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        written = []
        for k, img in enumerate(images):
            name = slug(img.settings["prompt"], "image")
            path = self.outputs_dir / f"{stamp}-{k:02d}-s{img.settings['seed']}-{name}.png"
            with atomic_path(path) as tmp:
                img.image.save(tmp, format="PNG", pnginfo=img.pnginfo())
            written.append(path)
        return written

    def upload(self, source: str | Path) -> Entry:
        """Copy an uploaded file into the artifacts folder if it is a readable safetensors artifact for this model;
        pickles and anything else are refused with the reason, and nothing is written."""
        source = Path(source)
        name = source.name  # Gradio keeps an upload's own file name inside its temp folder
        entry = describe(source, self.pipe.width, registry=self.registry)
        if not entry.usable:  # the reason names the upload's temp path: say the user's file name instead
            raise ArtifactError(f"{name} was not added: {entry.reason.replace(str(source), name)}")
        target = self.artifacts_dir / name
        if target.exists():
            raise ArtifactError(f"{name} was not added: a file of that name is already in {self.artifacts_dir}")
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        return describe(target, self.pipe.width, registry=self.registry)

    def export(self, artifact: str, fmt: str) -> tuple[list[Path], str]:
        """`personalize export` of one artifact of the folder into `<outputs>/exports/` against this app's base:
        the files written (a LoRA or checkpoint, token files beside it) and what the command printed, headed by
        the command line that does the same."""
        from personalize.export.command import default_out, export

        (path,) = self._artifact_paths([artifact])
        out = self.outputs_dir / "exports" / default_out(Path(path), fmt).name
        plan = export([path], fmt, base=self.pipe.base, out=str(out), force=True)
        command = f"personalize export {path} --format {fmt} --base {self.pipe.base} --out {out}"
        return list(plan.files), "\n".join([f"$ {command}", *plan.lines])

    def info(self, images: list, edits: list = ()) -> str:
        """A short text for the UI: the seeds used (so a random one can be reused) and the settings; the toy
        world's note on unknown words counts the words the `edits` give a meaning (a face's "f l")."""
        if not images:
            return ""
        seeds = ", ".join(str(g.settings["seed"]) for g in images)
        settings = {k: v for k, v in images[0].settings.items() if k not in ("prompt", "seed")}
        hint = self.pipe.prompt_hint(list(dict.fromkeys(g.settings["prompt"] for g in images)),
                                     [w for e in edits for w in getattr(e, "known_words", ())])
        return (f"note: {hint}\n" if hint else "") + f"seeds: {seeds}\n{json.dumps(settings, sort_keys=True)}"
