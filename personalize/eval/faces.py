"""Identity and text scores of generated faces, as Face2Diffusion (Shiohara & Yamasaki, "Face2Diffusion for Fast and
Editable Face Personalization", CVPR 2024) evaluates: identity = cosine of face-recognition embeddings of the
generated face and the input face, text = CLIP similarity of the image and the prompt with the pseudo-word "f l"
replaced by "a person", and the harmonic mean of the two. Every score names the model that made it (`"models"`).

    report = evaluate_folder("outputs/alice", ["alice.jpg"], clip="openai/clip-vit-large-patch14")

Identity: an insightface pack's ArcFace (`Recognizer`). An encoder trained with ArcFace flatters ArcFace, so any
callable with a `.name`, taking aligned crops (uint8 (112, 112, 3) RGB) to (N, D) embeddings, is a second
recognizer, e.g. facenet-pytorch if you have it (not a dependency):

    class FaceNet:  # (N, 112, 112, 3) -> (N, 512), FaceNet's input scaling
        name, net = "facenet-pytorch vggface2", facenet_pytorch.InceptionResnetV1(pretrained="vggface2").eval()
        def __call__(self, crops):
            x = torch.tensor(np.stack(crops)).permute(0, 3, 1, 2).float().sub(127.5).div(128)
            return self.net(x).detach().numpy()
    evaluate_faces(refs, images, prompts, detector, [Recognizer(pack), FaceNet()])

Text: raw cosine in [-1, 1], not scaled by 100 (torchmetrics' CLIPScore is 100 * max(cos, 0), Hessel et al.'s
2.5 * max(cos, 0)). Heavy imports (insightface, onnxruntime, torch, transformers) are inside functions.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from personalize.errors import PersonalizeError

log = logging.getLogger(__name__)
CROP = 112  # ArcFace's input, the crop detect_and_align makes
BATCH = 32
NO_DETECTOR = "none (images are aligned face crops)"
IDENTIFIER = "f l"  # Face2Diffusion's pseudo-word (personalize.methods.face2diffusion.inject.IDENTIFIER)


class EvalError(PersonalizeError):
    """An evaluation that cannot run: a missing results file, a face count that does not match, a bad model."""


def scored_text(prompt: str) -> str:
    """The prompt CLIP scores: the identifier "f l" (as a whole word pair) replaced by "a person"."""
    return re.sub(rf"\b{re.escape(IDENTIFIER)}\b", "a person", prompt)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, (N, D)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Recognizer:
    """An insightface recognition model (ArcFace, e.g. buffalo_l's w600k_r50.onnx) from a pack folder or an .onnx:
    aligned crops (uint8 (112, 112, 3) RGB) -> L2-normalised embeddings (N, D)."""

    def __init__(self, source: str | Path):
        from personalize.face import insightface_model, pack_model

        folder = Path(os.path.expanduser(str(source)))
        self.path = pack_model(folder, "recognition")
        self.model = insightface_model(self.path, "ArcFaceONNX", "w600k_r50.onnx of buffalo_l")
        self.name = f"arcface {folder.name}/{self.path.name}" if folder.is_dir() else f"arcface {self.path.name}"

    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        # get_feat reads BGR (it swaps to RGB itself): flip our RGB crops
        feats = [self.model.get_feat([np.ascontiguousarray(c[:, :, ::-1]) for c in crops[i:i + BATCH]])
                 for i in range(0, len(crops), BATCH)]
        return _normalise(np.concatenate(feats))  # (N, D)


class ClipScorer:
    """CLIP text alignment: a transformers `CLIPModel` with its tokenizer and image processor, from a local folder
    or a hub id. `scorer(images, texts)` -> (N,) raw cosine of each image's and its text's projected embeddings."""

    def __init__(self, model: str, local_files_only: bool = False, device: str | None = None):
        import torch
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.name = f"CLIP {model}"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = CLIPModel.from_pretrained(model, local_files_only=local_files_only).eval().to(self.device)
            self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local_files_only)
            self.processor = CLIPImageProcessor.from_pretrained(model, local_files_only=local_files_only)
        except (OSError, ValueError) as err:
            raise EvalError(f"--clip {model}: not a CLIP model folder or hub id with its tokenizer and image "
                            f"processor ({type(err).__name__}: {str(err).splitlines()[0]})") from err
        self.max_length = self.model.config.text_config.max_position_embeddings

    def __call__(self, images: list, texts: list[str]) -> np.ndarray:
        import torch

        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images, {len(texts)} texts")
        scores = []
        for i in range(0, len(images), BATCH):
            text = self.tokenizer(texts[i:i + BATCH], padding=True, truncation=True, max_length=self.max_length,
                                  return_tensors="pt").to(self.device)
            pixels = self.processor(images=images[i:i + BATCH], return_tensors="pt").pixel_values.to(self.device)
            with torch.no_grad():  # the forward pass returns both embeddings L2-normalised, (B, P) each
                out = self.model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels)
            scores.append((out.text_embeds * out.image_embeds).sum(-1).float().cpu().numpy())
        return np.concatenate(scores)  # (N,)


def _crop(image: np.ndarray, detector, name: str, reference: bool = False) -> tuple[np.ndarray | None, int]:
    """(the largest face aligned to 112 x 112, faces found); (None, 0) for a generated image without a face. With no
    detector the image is taken as an aligned crop, resized."""
    from PIL import Image

    from personalize.face import FaceNotFound, detect_and_align

    if detector is None:
        return np.asarray(Image.fromarray(image).resize((CROP, CROP), Image.BICUBIC)), 1
    try:
        face = detect_and_align(image, detector, CROP, name)
    except FaceNotFound as err:
        if reference:
            raise EvalError(f"reference {err}") from err
        return None, 0
    return face.crop, face.faces_found


def _identity(recognizer, references: list[np.ndarray], crops: list, index: list[int]) -> np.ndarray:
    """(N,) cosine of each image's face to its reference's, 0 where no face was found."""
    refs = _normalise(recognizer(references))  # (R, D); a plug-in recognizer may not normalise
    out = np.zeros(len(crops))
    rows = [i for i, c in enumerate(crops) if c is not None]
    if rows:
        emb = _normalise(recognizer([crops[i] for i in rows]))  # (n, D)
        if emb.shape != (len(rows), refs.shape[1]):
            raise EvalError(f"recognizer {recognizer.name}: returned {emb.shape}, expected ({len(rows)}, D)")
        out[rows] = (emb * refs[np.asarray(index)[rows]]).sum(1)
    return out


def evaluate_faces(references: list[np.ndarray], images: list[np.ndarray], prompts: list[str], detector,
                   recognizers: list, clip=None, reference_index: list[int] | None = None, *,
                   reference_names: list[str] | None = None, image_names: list[str] | None = None) -> dict:
    """Scores of RGB uint8 `images` against `references` (image k against reference_index[k]; default: one
    reference for all, or one each). The report: {"models", "per_image", "summary"}."""
    n = len(images)
    index = reference_index or ([0] * n if len(references) == 1 else list(range(len(references))))
    names = [r.name for r in recognizers]
    if not n or len(prompts) != n or len(index) != n or not all(0 <= i < len(references) for i in index):
        raise EvalError(f"{n} images, {len(prompts)} prompts, {len(references)} references, reference index "
                        f"{index}: expected one prompt and one valid reference index per image")
    if not recognizers or len(set(names)) != len(names):
        raise EvalError(f"recognizers {names}: expected at least one, each with its own name")
    ref_names = reference_names or [f"reference {i}" for i in range(len(references))]
    img_names = image_names or [f"image {k}" for k in range(n)]
    ref_crops = [_crop(r, detector, nm, reference=True)[0] for r, nm in zip(references, ref_names)]
    found = [_crop(im, detector, nm) for im, nm in zip(images, img_names)]
    crops = [c for c, _ in found]
    identity = {r.name: _identity(r, ref_crops, crops, index) for r in recognizers}
    texts = [scored_text(p) for p in prompts]
    text = None
    if clip is not None:
        from PIL import Image

        text = clip([Image.fromarray(im) for im in images], texts)
    per_image = [{"file": img_names[k], "prompt": prompts[k], "text": texts[k], "reference": ref_names[index[k]],
                  "detected": crops[k] is not None, "faces_found": found[k][1],
                  "identity": {nm: float(v[k]) for nm, v in identity.items()},
                  "text_score": None if text is None else float(text[k])} for k in range(n)]
    models = {"detector": NO_DETECTOR if detector is None else detector.name, "identity": names,
              "text": None if clip is None else clip.name}
    return {"models": models, "per_image": per_image, "summary": _summary(identity, crops, text, models)}


def _summary(identity: dict[str, np.ndarray], crops: list, text: np.ndarray | None, models: dict) -> dict:
    """Detection rate; mean identity over all images (0 where no face) and over the detected ones (None if none);
    mean text score; their harmonic mean (first recognizer, all images; 0 unless both are positive)."""
    detected = np.array([c is not None for c in crops])
    out = {"images": len(crops), "detected": int(detected.sum()), "detection_rate": float(detected.mean()),
           "identity_all_images": {nm: float(v.mean()) for nm, v in identity.items()},
           "identity_detected_images": {nm: float(v[detected].mean()) if detected.any() else None
                                        for nm, v in identity.items()},
           "text_score": None if text is None else float(text.mean()), "harmonic_mean": None}
    if text is not None:
        a, b = out["identity_all_images"][models["identity"][0]], out["text_score"]
        out["harmonic_mean"] = {"identity": models["identity"][0], "text": models["text"],
                                "value": 2 * a * b / (a + b) if a > 0 and b > 0 else 0.0}
    return out


def _read_rgb(path: Path, what: str) -> np.ndarray:
    """uint8 (H, W, 3) through the one opener (`personalize.photos`); a clear error for a missing, unreadable or
    oversized file."""
    from personalize.photos import PhotoError, open_photo

    try:
        return np.asarray(open_photo(path, what))
    except PhotoError as err:
        raise EvalError(str(err)) from err


def read_results(folder: str | Path) -> list[dict]:
    """The records of `personalize generate`'s results.jsonl: each with a "file" in `folder` and a "prompt"."""
    folder = Path(folder)
    path = folder / "results.jsonl"
    if not path.is_file():
        raise EvalError(f"no results.jsonl in {folder}: expected the output folder of `personalize generate`")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EvalError(f"{path}: not readable as text ({err})") from err
    records = []
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    for number, line in lines:
        try:
            record = json.loads(line)
        except ValueError as err:
            raise EvalError(f"{path} line {number}: not JSON ({err})") from err
        if not (isinstance(record, dict) and isinstance(record.get("file"), str)
                and isinstance(record.get("prompt"), str)):
            raise EvalError(f"{path} line {number}: expected an object with \"file\" and \"prompt\" strings")
        if Path(record["file"]).name != record["file"] or not (folder / record["file"]).is_file():
            raise EvalError(f"{path} line {number}: image {record['file']!r} is not a file in {folder}")
        records.append(record)
    if not records:
        raise EvalError(f"{path} lists no images")
    return records


def match_references(prompts: list[str], faces: int) -> list[int]:
    """One face for every image, or one per distinct prompt in order of first appearance (as `generate --face`)."""
    distinct = list(dict.fromkeys(prompts))
    if faces == 1:
        return [0] * len(prompts)
    if faces == len(distinct):
        return [distinct.index(p) for p in prompts]
    raise EvalError(f"{faces} faces for {len(distinct)} distinct prompts: give one face for every image, or one "
                    "per prompt in the order the prompts first appear in results.jsonl")


def evaluate_folder(folder: str | Path, faces: list[str | Path], detector_spec: str | None = None,
                    recognizer_specs: list[str] = (), clip: str | None = None, local_files_only: bool = False,
                    extra_recognizers: list = ()) -> dict:
    """`evaluate_faces` on a `personalize generate` output folder. Defaults: the detector of
    personalize.face.DEFAULT_PACK; the recognizer of the detector's pack folder (else of DEFAULT_PACK)."""
    from personalize.face import DEFAULT_PACK, resolve_detector
    from personalize.face import detector_spec as default_spec

    folder = Path(folder)
    records = read_results(folder)
    prompts = [r["prompt"] for r in records]
    if not faces:
        raise EvalError("give the input face photo(s) the images were made from")
    index = match_references(prompts, len(faces))
    recorded = records[0].get("face")
    # generate records each face as "<file name>#<digest of the crop it read>": compare the file names
    if isinstance(recorded, list) and [str(n).split("#")[0] for n in recorded] != [Path(f).name for f in faces]:
        log.warning("results.jsonl says the images were made from %s; scoring against %s", recorded,
                    [Path(f).name for f in faces])
    references = [_read_rgb(Path(f), "face photo") for f in faces]
    images = [_read_rgb(folder / r["file"], "image") for r in records]
    spec = default_spec(detector_spec)  # the default pack unless another detector is named
    default = spec if Path(os.path.expanduser(spec)).is_dir() else DEFAULT_PACK
    detector = resolve_detector(spec)
    recognizers = [Recognizer(s) for s in (recognizer_specs or [default])] + list(extra_recognizers)
    scorer = ClipScorer(clip, local_files_only) if clip else None
    report = evaluate_faces(references, images, prompts, detector, recognizers, scorer, index,
                            reference_names=[str(f) for f in faces], image_names=[r["file"] for r in records])
    return {"folder": str(folder)} | report


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal, each score with the model that produced it."""
    s, m = report["summary"], report["models"]
    lines = [f"faces in {s['detected']}/{s['images']} images ({100 * s['detection_rate']:.1f} %): {m['detector']}"]
    for name in m["identity"]:
        detected = s["identity_detected_images"][name]
        lines.append(f"identity ({name}): {s['identity_all_images'][name]:.4f} over all images (0 where no face), "
                     f"{'n/a' if detected is None else f'{detected:.4f}'} over images with a face")
    if m["text"]:
        h = s["harmonic_mean"]
        lines += [f"text ({m['text']}, raw cosine): {s['text_score']:.4f}",
                  f"harmonic mean ({h['identity']}, {h['text']}): {h['value']:.4f}"]
    return lines
