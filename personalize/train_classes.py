"""Many classes in one command (a request of the official DCT repository, idansc/discriminative_class_tokens
issue #2): `personalize train-classes --config configs/dct.yaml --classes "tiger cat" goldfish 282`.

One dct run per class, each in `<output_dir>/<trigger>/` with its own single-key token file (what diffusers'
`load_textual_inversion`, AUTOMATIC1111 and ComfyUI load), then, in `<output_dir>`:
  - `dct-classes.safetensors`: every token in one file (our artifact format; the app and `generate` load it);
  - `summary.md` / `summary.json`: class, trigger, the classifier's label, steps, the best loss, the accuracy at
    the best step, the held-out classifier's accuracy (with method.eval_classifier), the file.
Every class is resolved against the classifier before anything trains, so a typo fails in seconds. A class whose
token file already exists is not retrained (delete its folder to retrain it): a long batch can be restarted.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from personalize.artifacts import load_artifact, save_artifact
from personalize.atomic import atomic_write_text
from personalize.errors import PersonalizeError

COLUMNS = ("class", "trigger", "label", "steps", "best_step", "best_loss", "accuracy_at_best", "held_out_accuracy",
           "file")


def plan(cfg, classes: list[str]) -> list[tuple[str, str]]:
    """[(class, trigger)] for each class, checked against the classifier; duplicates and a shared
    method.placeholder_token are refused."""
    from personalize.methods import parse_options
    from personalize.methods.class_tokens import dct

    if cfg.method.get("name") != "dct":
        raise PersonalizeError(f"train-classes trains method dct; the config's method.name is "
                               f"{cfg.method.get('name')!r} (use --config configs/dct.yaml)")
    if not classes:
        raise PersonalizeError("--classes is empty: give one or more class labels or indices")
    if len(classes) > 1 and cfg.method.get("placeholder_token"):
        raise PersonalizeError("method.placeholder_token would give every class the same trigger; leave it empty "
                               "(each class gets dct-<class name>)")
    clf = dct.load_classifier(cfg.method.get("classifier", dct.Options.classifier), cfg.model.local_files_only)
    out = []
    for name in classes:
        o = parse_options("dct", cfg.method | {"target": name})
        try:
            _, word = dct.resolve_target(clf, o)
        except Exception as err:
            raise PersonalizeError(f"class {name!r}: {err}") from None
        out.append((name, dct.trigger(o, word)))
    seen: dict[str, str] = {}
    for name, trigger in out:
        if trigger in seen:
            raise PersonalizeError(f"classes {seen[trigger]!r} and {name!r} give the same trigger {trigger!r}")
        seen[trigger] = name
    return out


def row(name: str, art, out: Path) -> dict:
    m = art.metadata
    return {"class": name, "trigger": art.triggers[0], "label": m.get("target_label", ""),
            "steps": m.get("steps", ""), "best_step": m.get("best_step", ""), "best_loss": m.get("best_loss", ""),
            "accuracy_at_best": m.get("accuracy_at_best", ""),
            "held_out_accuracy": m.get("eval_accuracy_held_out", ""), "file": str(Path(art.path).relative_to(out))}


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def train_classes(cfg, classes: list[str], train=None) -> Path:
    """Train each class (skipping a finished one), then write the combined file and the summary; -> summary.md."""
    if train is None:
        from personalize.trainer import train
    out = Path(cfg.train.output_dir)
    rows, embeddings = [], {}
    for name, trigger in plan(cfg, classes):
        path = out / trigger / f"{trigger}.safetensors"
        if not path.exists():
            run = copy.deepcopy(cfg)
            run.method = cfg.method | {"target": name, "placeholder_token": ""}
            run.train.output_dir = str(out / trigger)
            result = train(run)
            if result.artifact is None:  # cut short: the summary would be incomplete
                raise PersonalizeError(f"class {name!r}: the run ended without a token file")
            path = Path(result.artifact)
        art = load_artifact(path)
        rows.append(row(name, art, out))
        embeddings[trigger] = art.embeddings[trigger]
    base = art.metadata.get("base_model", str(cfg.model.pretrained))
    save_artifact(out / "dct-classes.safetensors", "dct", base, embeddings=embeddings,
                  classes=json.dumps({r["trigger"]: r["class"] for r in rows}))
    atomic_write_text(out / "summary.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(out / "summary.md", table(rows) + "\n")
    return out / "summary.md"
