import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from client import imaging, spec
from export.crop_graph import build_crop_model


@pytest.fixture(scope="module")
def crop():
    return ort.InferenceSession(build_crop_model().SerializeToString(), providers=["CPUExecutionProvider"])


def _run(crop, img, boxes, scores):
    _, src, size = imaging.letterbox(img)
    b = np.zeros((1, spec.MAX_OBJECTS, 4), np.float32)
    s = np.zeros((1, spec.MAX_OBJECTS), np.float32)
    if len(boxes):
        b[0, :len(boxes)] = boxes
    s[0, :len(scores)] = scores
    return dict(zip(["crops", "boxes", "scores", "valid"], crop.run(None, {"crop_source": src, "det_boxes": b, "det_scores": s, "image_size": size})))


def test_boxes_map_to_original_pixels_and_crops_cut_the_right_region(crop):
    img = Image.new("RGB", (800, 400), "white")
    img.paste((255, 0, 0), (0, 0, 200, 200))  # red square top-left
    out = _run(crop, img, [[0, 0, 0.25, 0.25]], [0.9])
    assert out["crops"].shape == (spec.NUM_ROWS, 3, spec.CROP_SIZE, spec.CROP_SIZE)
    np.testing.assert_allclose(out["boxes"][0], [0, 0, 200, 200], atol=1e-3)
    np.testing.assert_allclose(out["boxes"][-1], [0, 0, 800, 400], atol=1e-3)  # whole image row
    red = out["crops"][0].reshape(3, -1).mean(1)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    assert out["valid"].tolist() == [True] + [False] * (spec.NUM_ROWS - 1)


def test_zero_detections_make_the_whole_image_the_one_object(crop):
    out = _run(crop, Image.new("RGB", (300, 500), "gray"), [], [])
    assert out["valid"].tolist() == [False] * spec.MAX_OBJECTS + [True]
    assert out["scores"][-1] == spec.WHOLE_IMAGE_SCORE


def test_boxes_are_clipped_to_the_image_not_the_padding(crop):
    out = _run(crop, Image.new("RGB", (400, 200)), [[0.5, 0.2, 1.0, 1.0]], [0.5])
    np.testing.assert_allclose(out["boxes"][0], [200, 80, 400, 200], atol=1e-3)
