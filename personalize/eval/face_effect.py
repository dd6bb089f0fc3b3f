"""Face2Diffusion in the toy world (issue 19): one photo of a held-out person (16 identities neither training
stage ever drew) -> that person in new prompts, scored by Judge B (which no stage trained against).

Each identity gives one photo: neutral, no accessory, white background. Probes, each a list of
(prompt, {head: asked value}) per identity:
  - identity:        "<prefix> f l": all four identity heads right;
  - face_shape, skin, hair_color, hair_style: the same images, one identity head each (chance 1/3 to 1/4);
  - in_context:      "f l" with another ask (an expression, a hat, glasses, a background): the identity;
  - other_asks:      the same prompts: is the ask followed;
  - leak_expression: the prompts asking another expression: the photo's expression (neutral) instead;
  - leak_background: the prompts asking another background: the photo's background (white) instead;
  - base:            "<prefix> a person": the identity by chance (about 1/144).
Measurement prompts use the prefixes "a portrait of" / "a picture of"; `TUNING` ("a photo of") is the set
recipes were chosen on.
"""

from __future__ import annotations

from pathlib import Path

from personalize.eval.erasure import SAMPLING, read_as_asked
from personalize.profiles import TOY
from personalize.toyworld import faces
from personalize.toyworld import world as w

PHOTO = {"expression": "neutral", "accessory": "none", "background": "white"}
ASKS = [("{a} a smiling f l", {"expression": "smiling"}), ("{b} a surprised f l", {"expression": "surprised"}),
        ("{a} f l wearing a hat", {"accessory": "hat"}), ("{b} f l wearing glasses", {"accessory": "glasses"}),
        ("{a} f l on a blue background", {"face_background": "blue"}),
        ("{b} f l on a green background", {"face_background": "green"})]
MEASURE = {"a": "a portrait of", "b": "a picture of"}
TUNING = {"a": "a photo of", "b": "a photo of"}
IMAGES = {"identity": 4, "face_shape": 4, "skin": 4, "hair_color": 4, "hair_style": 4,
          "base": 4}  # per_prompt multiples for the one-prompt probes (6-prompt ones: 1)


def probes(identity: int, prefixes: dict = MEASURE, subject: str = "f l") -> dict[str, list[tuple[str, dict]]]:
    """`subject` replaces "f l" (a per-person tuning arm's words, e.g. "sks person")."""
    who = {"kind": "face"} | w.identity_parts(identity)
    asks = [(p.format(**prefixes).replace("f l", subject), ask) for p, ask in ASKS]
    expression = [(p, {"expression": PHOTO["expression"]}) for p, ask in asks if "expression" in ask]
    background = [(p, {"face_background": PHOTO["background"]}) for p, ask in asks if "face_background" in ask]
    alone = f"{prefixes['a']} {subject}"
    return {"identity": [(alone, who)],
            **{head: [(alone, {"kind": "face", head: value})] for head, value in who.items() if head != "kind"},
            "in_context": [(p, who) for p, _ in asks],
            "other_asks": [(p, {"kind": "face"} | ask) for p, ask in asks],
            "leak_expression": expression, "leak_background": background,
            "base": [(f"{prefixes['a']} a person", who)]}


def photo(identity: int):
    from PIL import Image

    return Image.fromarray(faces.held_out_photo(identity, **PHOTO))


def rates(pipe, judge, identity: int, per_prompt: int, seed: int, prefixes: dict = MEASURE,
          face_kw: dict | None = None, subject: str = "f l", skip: tuple = ()) -> dict[str, float]:
    """Judge's rate per probe for one identity; `face_kw` is what `generate` gets for the face (edits=[a face
    edit], or person=...) in the prompts with `subject`; probes in `skip` are not drawn. Probes with the same
    prompts share images."""
    out, drawn = {}, {}
    for probe, items in probes(identity, prefixes, subject).items():
        if probe in skip:
            continue
        prompts, n = tuple(p for p, _ in items), IMAGES.get(probe, 1) * per_prompt
        if prompts not in drawn:
            kw = face_kw if subject in prompts[0] else None
            drawn[prompts] = [g.image for g in pipe.generate(list(prompts), num_images=n, seed=seed, **SAMPLING,
                                                             **(kw or {}))]
        out[probe] = read_as_asked(judge, drawn[prompts], [e for _, e in items for _ in range(n)])
    return out


def mean_rows(rows: list[dict]) -> dict[str, float]:
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}


def load_encoder(encoder: str | Path, checkpoint: str | Path | None = None):
    """The encoder file, or its mapping network as saved in a training checkpoint of the same run."""
    from safetensors.torch import load_file

    from personalize.methods.face2diffusion.encoder import FaceEncoder, load_strict

    enc = FaceEncoder.load(encoder)
    if checkpoint:
        path = Path(checkpoint) / "trainable.safetensors"
        load_strict(enc.mapping, load_file(str(path)), "mapping", path)
    return enc


def measure_encoder(encoder: str | Path, per_prompt: int = 2, sample_seed: int = 7000,
                    prefixes: dict = MEASURE, identities: list[int] = faces.HELD_OUT, judge: str = "b",
                    device: str = "cpu", checkpoint: str | Path | None = None, skip: tuple = ()) -> dict:
    """Mean rates over the held-out identities for one encoder file (each identity its own sampling seeds)."""
    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    from personalize.methods.face2diffusion.edit import FaceEdit

    pipe, j = load_pipeline(TOY, device=device), Judge.load(judge)
    enc = load_encoder(encoder, checkpoint).to(device)
    rows = [rates(pipe, j, i, per_prompt, sample_seed + 10 * k, prefixes, {"edits": [FaceEdit(enc, [photo(i)])]},
                  skip=skip) for k, i in enumerate(identities)]
    return mean_rows(rows)


# One-shot per-person tuning on the same photo, the comparison arms: DreamBooth as in the SuDe toy recipe's
# base (1 photo, lr 1e-4, 200 steps; bench_face.py times the same run) and textual inversion as in appearance.py
# (4 vectors from "person", lr 5e-3, 1000 steps). Both use the instance prompt alone (no caption file).
ARMS = {
    "dreambooth": ({"name": "dreambooth"}, {"learning_rate": 1e-4, "max_train_steps": 200}, "sks person"),
    "textual_inversion": ({"name": "textual_inversion", "placeholder_token": "sks", "initializer_token": "person",
                           "num_vectors": 4}, {"learning_rate": 5e-3, "max_train_steps": 1000}, "sks"),
}


def train_arm(arm: str, identity: int, seed: int, out: Path, steps: int | None = None) -> tuple[Path, float]:
    """Tune `arm` on the identity's one photo (`steps`: other than the arm's); (artifact, seconds of the run)."""
    import time

    from personalize.config import load_config
    from personalize.trainer import train

    method, schedule, _ = ARMS[arm]
    schedule = schedule | ({"max_train_steps": steps} if steps else {})
    folder = out / "photo"
    folder.mkdir(parents=True, exist_ok=True)
    photo(identity).save(folder / "0.png")
    cfg = load_config([], {"model": {"pretrained": TOY},
                           "data": {"instance_data_dir": str(folder), "instance_prompt": "a photo of a sks person"},
                           "train": {"output_dir": str(out / "train"), "seed": seed, "report_to": "none",
                                     "checkpointing_steps": 10**6, "train_batch_size": 1} | schedule,
                           "method": method})
    start = time.perf_counter()
    artifact = train(cfg).artifact
    return artifact, time.perf_counter() - start


def measure_arm(arm: str, seed: int, out: str | Path, per_prompt: int = 2, sample_seed: int = 7000,
                prefixes: dict = MEASURE, identities: list[int] = faces.HELD_OUT, device: str = "cpu",
                steps: int | None = None, skip: tuple = ()) -> dict:
    """Mean rates (and seconds per person) of one-shot `arm` over the identities, training seed `seed`."""
    from personalize.pipeline import load_pipeline
    from personalize.toyworld.judge import Judge

    j, rows = Judge.load("b"), []
    for k, i in enumerate(identities):
        artifact, seconds = train_arm(arm, i, seed, Path(out) / f"{arm}-{seed}-{i}", steps)
        pipe = load_pipeline(TOY, [artifact], device=device)
        rows.append(rates(pipe, j, i, per_prompt, sample_seed + 10 * k, prefixes, {}, ARMS[arm][2], ("base", *skip))
                    | {"seconds": seconds})
    return mean_rows(rows)


def main(argv: list[str] | None = None) -> None:
    """Rates of one encoder (and its checkpoints) or one arm, as JSON: what training/toyworld/f2d_effect.py
    collects. With --encoder the JSON maps "final" and each checkpoint folder's name to its rates."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--encoder", help="a face2diffusion.safetensors")
    ap.add_argument("--checkpoint", nargs="*", default=[], help="checkpoint-<step> folders of the run that "
                    "wrote --encoder, measured too")
    ap.add_argument("--arm", choices=sorted(ARMS), help="measure one-shot tuning instead of an encoder")
    ap.add_argument("--seed", type=int, default=0, help="the arm's training seed")
    ap.add_argument("--arm-steps", type=int, default=None, help="the arm's steps, other than its recipe's")
    ap.add_argument("--work", default="outputs/face-arms")
    ap.add_argument("--prompts", choices=["measure", "tuning"], default="measure")
    ap.add_argument("--sample-seed", type=int, default=7000)
    ap.add_argument("--per-prompt", type=int, default=2)
    ap.add_argument("--identities", type=int, nargs="+", default=faces.HELD_OUT)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--probes", nargs="+", default=None, help="only these probes (default: all)")
    ap.add_argument("--out", required=True, help="JSON file to write")
    a = ap.parse_args(argv)
    from personalize.cpu import TOY_THREADS, configure_threads

    configure_threads(TOY_THREADS)
    if bool(a.encoder) == bool(a.arm):
        ap.error("give --encoder or --arm (one of them)")
    skip = tuple(k for k in probes(0) if a.probes and k not in a.probes)
    common = dict(per_prompt=a.per_prompt, sample_seed=a.sample_seed, identities=a.identities, device=a.device,
                  prefixes=MEASURE if a.prompts == "measure" else TUNING, skip=skip)
    if a.encoder:
        result = {Path(c).name if c else "final": measure_encoder(a.encoder, checkpoint=c, **common)
                  for c in [None, *a.checkpoint]}
    else:
        result = measure_arm(a.arm, a.seed, a.work, steps=a.arm_steps, **common)
    from personalize.atomic import atomic_write_text

    atomic_write_text(Path(a.out), json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
