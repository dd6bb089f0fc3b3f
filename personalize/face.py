"""Real face photos -> the aligned square crop a face encoder reads: detection, five landmarks, a similarity warp.

    detector = resolve_detector("~/.insightface/models/buffalo_l")   # or a detection .onnx, "cascade", "none"
    face = detect_and_align(photo, detector, size=112)               # face.crop (112, 112, 3) uint8, face.landmarks

Face2Diffusion's official inference (mapooon/Face2Diffusion, inference_f2d.py) finds 68 landmarks with
`face_alignment`, keeps the first face, reduces them to 5 points (the two eye centres, the nose tip, the two mouth
corners) and warps the photo with a similarity transform onto InsightFace's 112x112 ArcFace template. Ours does
the same warp from the 5 points of insightface's SCRFD detector (same point order, image-left eye first), and keeps
the *largest* face where the official code keeps the first: a photo with a bystander then still gives the subject.

Detectors (`resolve_detector`):
- an insightface model pack folder (`~/.insightface/models/buffalo_l` by default; its detection model is found by
  its outputs) or a detection `.onnx` file: SCRFD through `insightface.model_zoo.get_model` (the `[face]` extra);
- "cascade": needs no model pack. The LBP frontal-face cascade trained by OpenCV that ships inside scikit-image,
  then in each half of the box's eye band the point darkest against its surroundings as an eye, nose and mouth
  placed from the template. Coarse (frontal, upright faces), ours, for machines without a pack;
- "none": the photo is already an aligned square crop.

Everything heavy (onnxruntime, insightface, OpenCV, scikit-image) is imported inside the function that needs it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personalize.errors import PersonalizeError

log = logging.getLogger(__name__)

# InsightFace's ArcFace template on a 112x112 crop (insightface/utils/face_align.py `arcface_dst`; inference_f2d.py
# warps onto the same points): image-left eye, image-right eye, nose tip, left and right mouth corners, (x, y).
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
DEFAULT_PACK = "~/.insightface/models/buffalo_l"
DETECTOR_HELP = ("an insightface model pack folder (default ~/.insightface/models/buffalo_l) or its detection "
                 ".onnx; 'cascade' (built in, coarse: frontal faces); 'none' (the photo is an aligned square crop; "
                 "the toy world's default)")
MAX_PIXELS = 4096 * 4096  # a face photo larger than this is refused before it is decoded


class FaceNotFound(PersonalizeError):
    """A photo in which the detector finds no face."""


class FaceModelError(PersonalizeError):
    """A face model (detector or recognizer) that is missing or cannot be loaded."""


@dataclass
class Detection:
    """One face: its box (x0, y0, x1, y1), five landmarks (5, 2) in TEMPLATE_112's order, the detector's score."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


@dataclass
class AlignedFace:
    """What the encoder reads (`crop`, uint8 (S, S, 3)), where it came from in the photo, and how many faces
    the detector saw."""

    crop: np.ndarray
    landmarks: np.ndarray  # (5, 2) in the photo
    box: np.ndarray  # (4,) in the photo
    matrix: np.ndarray  # (2, 3): photo (x, y, 1) -> crop (x, y)
    faces_found: int


# ------------------------------------------------------------------------------------------------ geometry


def template(size: int = 112) -> np.ndarray:
    """The five template points on an S x S crop (the 112 template scaled, as insightface's estimate_norm does)."""
    return TEMPLATE_112 * (size / 112.0)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation; no reflection) taking points `src`
    (N, 2) onto `dst` (N, 2), as a (2, 3) matrix (Umeyama 1991, the estimate skimage's SimilarityTransform makes)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d0.T @ s0 / len(src))  # covariance (2, 2)
    d = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rotation = u @ np.diag(d) @ vt
    scale = float((sig * d).sum() / (s0 ** 2).sum(1).mean())
    return np.hstack([scale * rotation, (mu_d - scale * rotation @ mu_s)[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(2, 3) matrix applied to (N, 2) points."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The S x S crop whose pixel (x, y) is the photo's pixel at matrix^-1 (x, y), pixel centres on integers (as
    cv2.warpAffine, what insightface's norm_crop calls); outside the photo is black."""
    from PIL import Image

    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]  # crop -> photo
    # PIL samples output pixel (x, y) at inverse @ (x + 0.5, y + 0.5) in a frame whose pixel centres sit on
    # half-integers: shift in and out by half a pixel so both frames put centres on integers.
    shifted = inverse.copy()
    shifted[:, 2] = inverse[:, 2] + 0.5 - 0.5 * (inverse[:, 0] + inverse[:, 1])
    out = Image.fromarray(np.ascontiguousarray(image)).transform(
        (size, size), Image.AFFINE, tuple(shifted.ravel()), resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out)


def align(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """(crop uint8 (S, S, 3), matrix (2, 3)): the photo warped so its five landmarks land on the template."""
    matrix = similarity(landmarks, template(size))
    return warp(image, matrix, size), matrix


# ------------------------------------------------------------------------------------------------ detectors


def onnx_role(path: Path) -> str:
    """"detection" (SCRFD-style: five or more outputs), "recognition" (ArcFace-style: a square input of at least 112
    px, as insightface's model router decides), or "" for the other models of a pack."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - a file that is not an ONNX model has no role in a pack
        return ""
    if len(graph.output) >= 5:
        return "detection"
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    return "recognition" if len(dims) == 4 and dims[2] == dims[3] and dims[2] >= 112 else ""


def pack_model(source: str | Path, role: str) -> Path:
    """The `role` model ("detection" or "recognition") of an insightface pack folder, or `source` itself if it is
    an .onnx file; a clear error naming where to put a pack when there is none."""
    path = Path(os.path.expanduser(str(source)))
    if path.is_file() and path.suffix == ".onnx":
        return path
    if not path.is_dir():
        other = ("; without a pack use --face-detector cascade (coarse) or none (the photo is an aligned crop)"
                 if role == "detection" else "")
        raise FaceModelError(f"no insightface model pack at {path}: put a pack there (e.g. buffalo_l, unpacked into "
                             f"~/.insightface/models/buffalo_l; its licence is for non-commercial research) or pass "
                             f"a {role} .onnx file{other}")
    found = [p for p in sorted(path.glob("*.onnx")) if onnx_role(p) == role]
    if not found:
        raise FaceModelError(f"{path}: no {role} model (.onnx) in this folder; expected an insightface model pack "
                             "such as buffalo_l or antelopev2")
    return found[0]


def insightface_model(path: Path, kind: str, example: str, **prepare):
    """One .onnx through insightface's model zoo (which routes it by its inputs and outputs), prepared on CUDA when
    onnxruntime offers it, else the CPU; a clear error unless insightface reads it as `kind` (SCRFD, ArcFaceONNX)."""
    try:
        import onnxruntime
        from insightface.model_zoo import get_model
    except ImportError as err:
        raise FaceModelError(f"face models need insightface and onnxruntime ({err.name} is missing): "
                             "pip install 'personalize[face]'") from err
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    try:
        model = get_model(str(path), providers=["CUDAExecutionProvider"] * cuda + ["CPUExecutionProvider"])
        if model is not None:
            model.prepare(ctx_id=0 if cuda else -1, **prepare)
    except Exception as err:  # onnxruntime and insightface raise many kinds for a file that is not a model
        raise FaceModelError(f"{path}: could not be loaded as an insightface model ({type(err).__name__}: "
                             f"{err})") from err
    if type(model).__name__ != kind:
        raise FaceModelError(f"{path}: insightface reads it as {type(model).__name__}, not {kind}; expected a "
                             f"model such as {example}")
    return model


class InsightFaceDetector:
    """SCRFD through insightface's model zoo (the detector of buffalo_l / antelopev2). Returns every face above
    `threshold`, with its five landmarks."""

    def __init__(self, source: str | Path = DEFAULT_PACK, det_size: int = 640, threshold: float = 0.5):
        self.path = pack_model(source, "detection")
        self.model = insightface_model(self.path, "SCRFD", "det_10g.onnx of buffalo_l",
                                       input_size=(det_size, det_size), det_thresh=threshold)
        if not getattr(self.model, "use_kps", False):
            raise FaceModelError(f"{self.path}: a face detector without landmarks; expected SCRFD with its five "
                                 "points, e.g. det_10g.onnx of buffalo_l")
        self.name = f"insightface SCRFD ({self.path.name})"

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """`image` RGB uint8 (H, W, 3)."""
        boxes, kps = self.model.detect(np.ascontiguousarray(image[:, :, ::-1]))  # insightface reads BGR
        return [Detection(b[:4].astype(np.float64), k.astype(np.float64), float(b[4])) for b, k in zip(boxes, kps)]


class CascadeDetector:
    """No model pack needed: scikit-image's copy of OpenCV's LBP frontal-face cascade finds the box, the point
    darkest against its surroundings (a difference of Gaussians) in each half of the box's eye band (rows 25-50 %)
    is taken as an eye, and the nose tip and mouth corners go where the template puts them relative to those eyes.
    Ours and coarse: upright, frontal faces, as the cascade itself."""

    name = "cascade (scikit-image's LBP frontal-face cascade, eyes by darkness)"

    def __init__(self):
        try:
            import skimage
            from skimage.feature import Cascade
        except ImportError as err:
            raise FaceModelError("the cascade face detector needs scikit-image: pip install 'personalize[face]'") from err
        self.cascade = Cascade(str(Path(skimage.data.__file__).parent / "lbpcascade_frontalface_opencv.xml"))

    def __call__(self, image: np.ndarray) -> list[Detection]:
        from skimage.color import rgb2gray

        gray = rgb2gray(image)
        side = min(gray.shape)
        boxes = self.cascade.detect_multi_scale(img=gray, scale_factor=1.2, step_ratio=1,
                                                min_size=(max(side // 10, 24),) * 2, max_size=(side, side))
        return [self._landmarks(gray, b) for b in _merge_boxes(boxes)]

    @staticmethod
    def _landmarks(gray: np.ndarray, box: dict) -> Detection:
        from scipy.ndimage import gaussian_filter

        x0, y0, w, h = box["c"], box["r"], box["width"], box["height"]
        top = y0 + h // 4
        band = gray[top: y0 + h // 2, x0: x0 + w]  # the eye band: rows 25-50 % of the box
        dark = gaussian_filter(band, w / 40) - gaussian_filter(band, w / 8)  # darker than its surroundings
        eyes = []
        for lo, hi in ((w * 15 // 100, w * 48 // 100), (w * 52 // 100, w * 85 // 100)):  # image-left, -right
            r, c = np.unravel_index(np.argmin(dark[:, lo:hi]), dark[:, lo:hi].shape)
            eyes.append([x0 + lo + c, top + r])
        to_photo = similarity(TEMPLATE_112[:2], np.array(eyes, np.float64))
        points = apply(to_photo, TEMPLATE_112)
        return Detection(np.array([x0, y0, x0 + w, y0 + h], np.float64), points, 1.0)


def _merge_boxes(boxes: list[dict]) -> list[dict]:
    """The cascade reports overlapping boxes of one face: keep the largest of each overlapping group."""
    kept: list[dict] = []
    for b in sorted(boxes, key=lambda b: -b["width"] * b["height"]):
        cx, cy = b["c"] + b["width"] / 2, b["r"] + b["height"] / 2
        if not any(k["c"] <= cx <= k["c"] + k["width"] and k["r"] <= cy <= k["r"] + k["height"] for k in kept):
            kept.append(b)
    return kept


def detector_spec(spec: str | None, default: str = "") -> str:
    """The detector a face photo gets: `spec`, else the base's `default` (its profile's `face_detector`: "none"
    on the toy world, whose photos are aligned crops), else insightface's default pack."""
    return (str(spec).strip() if spec else "") or default or DEFAULT_PACK


def resolve_detector(spec: str | None):
    """A detector for `spec` (see DETECTOR_HELP; empty: the default pack), or None for "none" (aligned crops)."""
    spec = detector_spec(spec)
    if spec == "none":
        return None
    if spec == "cascade":
        return CascadeDetector()
    return InsightFaceDetector(spec)


# ------------------------------------------------------------------------------------------------ photos


def detect_and_align(image: np.ndarray, detector, size: int = 112, name: str = "photo") -> AlignedFace:
    """The largest face of an RGB uint8 photo, aligned onto an S x S crop (inference_f2d.py keeps the first face
    its landmark model returns; we keep the largest). A warning when there are several, an error when none."""
    found = detector(image)
    if not found:
        raise FaceNotFound(f"face photo {name}: no face found in it ({detector.name})")
    if len(found) > 1:
        log.warning("face photo %s: %d faces found; using the largest", name, len(found))
    face = max(found, key=lambda d: d.area)
    crop, matrix = align(image, face.landmarks, size)
    return AlignedFace(crop, face.landmarks, face.box, matrix, len(found))
