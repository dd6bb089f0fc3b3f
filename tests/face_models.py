"""Tiny ONNX models with the input/output layout of insightface's face models, built by the tests (no model pack
can be downloaded here). insightface's model router reads them as it reads the real ones: SCRFD for a model with
9 outputs (scores, boxes, 5-point landmarks for strides 8/16/32, two anchors a cell), ArcFace for a square input of
112 px. What they compute is made up; their layout is insightface's (insightface/model_zoo/scrfd.py, arcface_onnx.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

STRIDES = (8, 16, 32)
ANCHORS = 2  # per cell, as SCRFD's 9-output models


@dataclass
class FakeFace:
    """A face the fake detector always reports, in its input's pixels (size x size): box, 5 landmarks, score."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray  # (5, 2)
    score: float = 0.9


def _anchor(size: int, center: tuple[float, float]) -> tuple[int, tuple[float, float]]:
    """The stride-8 anchor row nearest `center` and that anchor's centre."""
    cells = size // 8
    j, i = (min(int(round(c / 8)), cells - 1) for c in center)
    return (i * cells + j) * ANCHORS, (j * 8.0, i * 8.0)


def scrfd_onnx(path: Path, faces: list[FakeFace], size: int = 64) -> Path:
    """An SCRFD-layout detector with a fixed input of size x size that reports `faces` (stride 8) whatever it is
    shown: constant outputs, plus 0 x the image's mean so the graph reads its input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    outs = {}
    for stride in STRIDES:
        n = (size // stride) ** 2 * ANCHORS
        outs[stride] = [np.full((n, 1), 0.01, np.float32), np.ones((n, 4), np.float32), np.zeros((n, 10), np.float32)]
    for face in faces:
        cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
        row, (ax, ay) = _anchor(size, (cx, cy))
        score, box, kps = outs[8]
        score[row] = face.score
        box[row] = np.array([ax - face.box[0], ay - face.box[1], face.box[2] - ax, face.box[3] - ay]) / 8
        kps[row] = ((np.asarray(face.landmarks, np.float32) - [ax, ay]) / 8).ravel()
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    inits, outputs = [numpy_helper.from_array(np.zeros((), np.float32), "zero")], []
    for kind in range(3):  # scores, boxes, landmarks: each for strides 8, 16, 32 (insightface's output order)
        for stride in STRIDES:
            name = f"{('score', 'bbox', 'kps')[kind]}_{stride}"
            value = outs[stride][kind]
            inits.append(numpy_helper.from_array(value, name + "_c"))
            nodes.append(helper.make_node("Add", [name + "_c", "nothing"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "fake_scrfd", [helper.make_tensor_value_info(
        "input.1", TensorProto.FLOAT, [1, 3, size, size])], outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def arcface_onnx(path: Path, dim: int = 64, seed: int = 0) -> Path:
    """An ArcFace-layout recognizer: (N, 3, 112, 112) -> (N, dim), a fixed random projection of the 8x8-pooled
    image (so the same face gives the same vector, and different images different ones)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(seed).standard_normal((3 * 8 * 8, dim)).astype(np.float32)
    nodes = [helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "proj"], ["683"])]
    graph = helper.make_graph(nodes, "fake_arcface",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", dim])],
                              [numpy_helper.from_array(weight, "proj")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def model_pack(folder: Path, faces: list[FakeFace], size: int = 64) -> Path:
    """A folder laid out like an insightface pack (buffalo_l's file names): a detector and a recognizer."""
    folder.mkdir(parents=True, exist_ok=True)
    scrfd_onnx(folder / "det_10g.onnx", faces, size)
    arcface_onnx(folder / "w600k_r50.onnx")
    return folder
