"""Real face photos (issue 20): the 5-point similarity alignment, insightface's detector API on a project-built
SCRFD-layout model, scikit-image's astronaut through the built-in cascade, and a real photo through generate."""

import logging

import numpy as np
import pytest

from face_models import FakeFace, model_pack, scrfd_onnx
from personalize import face

# eye centres in scikit-image's astronaut (512 x 512), read by hand off an 8x zoom: image-left, image-right
ASTRONAUT_EYES = np.array([[203.0, 101.0], [246.0, 104.0]])
# a face in the fake detector's 64 x 64 input: box and five landmarks (a tilted face)
FAKE_BOX = (16.0, 14.0, 48.0, 54.0)
FAKE_LANDMARKS = np.array([[24.0, 29.0], [40.0, 27.0], [33.0, 36.0], [27.0, 45.0], [39.0, 43.0]])


def rotation(deg, scale, shift):
    a = np.deg2rad(deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), shift[0]], [scale * np.sin(a), scale * np.cos(a), shift[1]]])


def test_template_points_give_the_identity_warp():
    m = face.similarity(face.TEMPLATE_112, face.TEMPLATE_112)
    assert np.abs(m - [[1, 0, 0], [0, 1, 0]]).max() <= 1e-6
    assert np.abs(face.apply(m, face.TEMPLATE_112) - face.TEMPLATE_112).max() <= 1e-4  # pixels
    # the 112 template scaled to another crop size, as insightface's estimate_norm does
    assert np.allclose(face.template(224), face.TEMPLATE_112 * 2)


@pytest.mark.parametrize("deg,scale,shift", [(30, 2.5, (100, 40)), (-75, 0.4, (-3, 7)), (180, 1.0, (50, 50))])
def test_moved_landmarks_map_back_onto_the_template(deg, scale, shift):
    moved = face.apply(rotation(deg, scale, shift), face.TEMPLATE_112)  # a face rotated, scaled, shifted
    m = face.similarity(moved, face.TEMPLATE_112)
    assert np.abs(face.apply(m, moved) - face.TEMPLATE_112).max() <= 1e-4
    assert np.linalg.det(m[:, :2]) > 0  # a similarity: no mirror image
    assert np.isclose(np.sqrt(np.linalg.det(m[:, :2])), 1 / scale)


def test_warp_puts_pixel_centres_on_integers():
    photo = np.zeros((40, 40, 3), np.uint8)
    photo[15, 22] = 255  # row 15, column 22
    crop = face.warp(photo, np.array([[1.0, 0, -10], [0, 1, -5]]), 20)  # crop (x, y) = photo (x + 10, y + 5)
    assert crop[10, 12].tolist() == [255, 255, 255] and crop.sum() == 3 * 255
    crop = face.warp(photo, np.array([[2.0, 0, 0], [0, 2.0, 0]]), 80)  # twice the size: photo (22, 15) at (44, 30)
    ys, xs = np.nonzero(crop[:, :, 0] == crop[:, :, 0].max())
    assert (xs.mean(), ys.mean()) == (44.0, 30.0)


def marked_photo(points, size=128):
    """A grey photo with a white 3x3 mark at each point (x, y)."""
    photo = np.full((size, size, 3), 90, np.uint8)
    for x, y in np.round(points).astype(int):
        photo[y - 1:y + 2, x - 1:x + 2] = 255
    return photo


def mark_centres(crop):
    """The centres of the white marks left in a crop, sorted as the template (left eye, right eye, nose, mouth)."""
    from scipy import ndimage

    labels, n = ndimage.label(crop[:, :, 0] > 170)
    centres = np.array(ndimage.center_of_mass(crop[:, :, 0] > 170, labels, range(1, n + 1)))[:, ::-1]
    return np.array([centres[np.argmin(((centres - t) ** 2).sum(1))] for t in face.TEMPLATE_112])


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    small = FakeFace((2, 2, 12, 12), FAKE_LANDMARKS / 5 + 2, 0.8)  # a second, smaller face in a corner
    return model_pack(tmp_path_factory.mktemp("pack") / "buffalo_l", [FakeFace(FAKE_BOX, FAKE_LANDMARKS), small])


def test_insightface_detector_api_and_alignment(pack, caplog):
    detector = face.resolve_detector(str(pack))  # the pack folder: its detection model is found by its outputs
    assert detector.path.name == "det_10g.onnx" and "SCRFD" in detector.name
    landmarks = FAKE_LANDMARKS * 2  # insightface letterboxes the 128 px photo into the 64 px input: x2 back
    photo = marked_photo(landmarks)
    found = detector(photo)
    assert len(found) == 2 and np.allclose(found[0].landmarks, landmarks, atol=1e-3)
    assert np.allclose(found[0].box, np.array(FAKE_BOX) * 2, atol=1e-3)
    with caplog.at_level(logging.WARNING, logger="personalize.face"):
        aligned = face.detect_and_align(photo, detector, 112, "two.png")
    assert "two.png: 2 faces found; using the largest" in caplog.text
    assert aligned.faces_found == 2 and np.allclose(aligned.box, np.array(FAKE_BOX) * 2, atol=1e-3)
    assert aligned.crop.shape == (112, 112, 3)
    # the marks drawn at the landmarks land on the template, up to the least-squares fit of a tilted face
    fit = np.abs(face.apply(face.similarity(landmarks, face.TEMPLATE_112), landmarks) - face.TEMPLATE_112).max()
    assert np.abs(mark_centres(aligned.crop) - face.TEMPLATE_112).max() <= fit + 0.6
    assert face.resolve_detector(str(pack / "det_10g.onnx")).path == pack / "det_10g.onnx"


def test_detector_errors_say_what_to_do(pack, tmp_path):
    empty = face.InsightFaceDetector(scrfd_onnx(tmp_path / "none.onnx", []))
    with pytest.raises(face.FaceNotFound, match="blank.png: no face found in it"):
        face.detect_and_align(np.zeros((64, 64, 3), np.uint8), empty, 112, "blank.png")
    with pytest.raises(face.FaceModelError, match="no insightface model pack at .*buffalo_l.*cascade"):
        face.resolve_detector(str(tmp_path / "buffalo_l"))
    with pytest.raises(face.FaceModelError, match="reads it as ArcFaceONNX, not SCRFD; expected a model such as "
                                                  "det_10g.onnx"):
        face.resolve_detector(str(pack / "w600k_r50.onnx"))
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(face.FaceModelError, match="bad.onnx: could not be loaded"):
        face.resolve_detector(str(tmp_path / "bad.onnx"))
    assert face.resolve_detector("none") is None


def test_astronaut_is_found_and_aligned_by_the_built_in_cascade():
    from skimage import data

    photo = data.astronaut()  # a real photo that ships inside the scikit-image wheel
    aligned = face.detect_and_align(photo, face.resolve_detector("cascade"), 112)
    assert aligned.faces_found == 1 and aligned.crop.shape == (112, 112, 3)
    # the hand-read eye centres land within 3 px of the template's eyes (the crop sits on the face)
    assert np.abs(face.apply(aligned.matrix, ASTRONAUT_EYES) - face.TEMPLATE_112[:2]).max() <= 3.0
    with pytest.raises(face.FaceNotFound, match="no face found"):
        face.detect_and_align(np.full((200, 200, 3), 128, np.uint8), face.CascadeDetector(), 112)
