import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from client import imaging, spec
from client.search import candidate_rows
from export.crop_graph import build_crop_model, build_whole_crop_model


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def crop():
    return _session(build_crop_model())


@pytest.fixture(scope="module")
def every_row():
    return _session(build_crop_model(every_row=True))


def _feed(img, boxes, scores):
    _, src, size = imaging.letterbox(img)
    b = np.zeros((1, spec.MAX_OBJECTS, 4), np.float32)
    s = np.zeros((1, spec.MAX_OBJECTS), np.float32)
    if len(boxes):
        b[0, :len(boxes)] = boxes
    s[0, :len(scores)] = scores
    return {"crop_source": src, "det_boxes": b, "det_scores": s, "image_size": size}


def _run(session, feed):
    return dict(zip(["crops", "boxes", "scores", "valid"], session.run(None, feed)))


def test_boxes_map_to_original_pixels_and_crops_cut_the_right_region(crop):
    img = Image.new("RGB", (800, 400), "white")
    img.paste((255, 0, 0), (0, 0, 200, 200))  # red square top-left
    out = _run(crop, _feed(img, [[0, 0, 0.25, 0.25]], [0.9]))
    assert out["crops"].shape == (2, 3, spec.CROP_SIZE, spec.CROP_SIZE)  # the detection, then the whole image
    np.testing.assert_allclose(out["boxes"][0], [0, 0, 200, 200], atol=1e-3)
    np.testing.assert_allclose(out["boxes"][-1], [0, 0, 800, 400], atol=1e-3)  # whole image row
    red = out["crops"][0].reshape(3, -1).mean(1)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    assert out["valid"].tolist() == [True, False]


def test_zero_detections_make_the_whole_image_the_one_object(crop):
    out = _run(crop, _feed(Image.new("RGB", (300, 500), "gray"), [], []))
    assert out["valid"].tolist() == [True] and out["crops"].shape[0] == 1
    assert out["scores"][-1] == spec.WHOLE_IMAGE_SCORE


def test_boxes_are_clipped_to_the_image_not_the_padding(crop):
    out = _run(crop, _feed(Image.new("RGB", (400, 200)), [[0.5, 0.2, 1.0, 1.0]], [0.5]))
    np.testing.assert_allclose(out["boxes"][0], [200, 80, 400, 200], atol=1e-3)


def test_the_row_policy_keeps_valid_rows_the_weaker_candidates_and_drops_duplicates(crop):
    a, b, c = [0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.7, 0.7], [0.1, 0.6, 0.3, 0.9]
    dup = [0.11, 0.11, 0.31, 0.31]  # IoU with a: 0.82
    far = [[0.7, 0.1, 0.8, 0.2], [0.8, 0.8, 0.9, 0.9], [0.4, 0.1, 0.5, 0.2], [0.85, 0.4, 0.95, 0.5]]
    boxes = [a, dup, b, c, *far]
    scores = [0.9, 0.8, 0.6, 0.25, 0.2, 0.15, 0.12, 0.11]  # c and the far ones are weak: one more than the graph passes on
    assert spec.EXTRA_CANDIDATES == 4  # the expected rows below
    out = _run(crop, _feed(Image.new("RGB", (500, 500)), boxes, scores))
    np.testing.assert_allclose(out["scores"], [0.9, 0.6, 0.25, 0.2, 0.15, 0.12, spec.WHOLE_IMAGE_SCORE])
    assert out["valid"].tolist() == [True, True, False, False, False, False, False]
    np.testing.assert_allclose(out["boxes"][:6] / 500, [a, b, c, *far[:3]], atol=1e-5)


def test_the_served_graph_selects_exactly_what_candidate_rows_selects(crop, every_row):
    """The crop graph's NonMaxSuppression + ranks against client.search.candidate_rows (the policy in Python) on
    random detections with clusters of duplicates, images taller than wide, boxes in the padding."""
    rng = np.random.default_rng(0)
    img = Image.new("RGB", (640, 480), "white")
    for t in range(400):
        centre, size = rng.uniform(0.1, 0.9, (spec.MAX_OBJECTS, 2)), rng.uniform(0.02, 0.5, (spec.MAX_OBJECTS, 2))
        if t % 3 == 0:  # a cluster of near-duplicates, as the detector's max-pool peaks give
            centre[1:4], size[1:4] = centre[0] + rng.normal(0, 0.02, (3, 2)), size[0]
        boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).clip(0, 1)
        scores = np.sort(rng.uniform(0, 0.12 if t % 5 == 0 else 0.6, spec.MAX_OBJECTS))[::-1]
        feed = _feed(img, boxes, scores)
        full, got = _run(every_row, feed), _run(crop, feed)
        rows = candidate_rows(full)
        whole = len(full["scores"]) - 1
        want = [r for r in rows if r != whole] + [whole]
        np.testing.assert_array_equal(got["crops"], full["crops"][want])
        np.testing.assert_array_equal(got["valid"], full["valid"][want])
        np.testing.assert_allclose(got["boxes"], full["boxes"][want], atol=1e-4)
        np.testing.assert_allclose(got["scores"], full["scores"][want])


def test_the_whole_crop_graph_cuts_the_crop_graphs_last_row(crop):
    img = Image.effect_mandelbrot((300, 200), (-2, -1, 1, 1), 50).convert("RGB")
    feed = _feed(img, [[0.1, 0.1, 0.4, 0.4]], [0.8])
    whole, = _session(build_whole_crop_model()).run(None, {"crop_source": feed["crop_source"], "image_size": feed["image_size"]})
    assert whole.shape == (1, 3, spec.CROP_SIZE, spec.CROP_SIZE)
    np.testing.assert_array_equal(whole[0], _run(crop, feed)["crops"][-1])


def test_jitter_crops_are_each_row_cut_at_its_box_shrunk_then_grown(every_row):
    """spec.JITTER_CROPS: the N rows cut at their boxes moved in by QUERY_BOX_JITTER of their sides, then the N
    moved out, clipped to the image; the whole-image row's two are its own crop."""
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    box = np.array([0.2, 0.1, 0.5, 0.4], np.float32)
    run = lambda boxes: dict(zip(["crops", "boxes", "scores", "valid", "jitter_crops"],  # noqa: E731
                                 every_row.run(None, _feed(img, boxes, [0.9] * len(boxes)))))
    out = run([box, [0.0, 0.0, 1.0, 0.9]])  # the second box grows past the image's bottom edge (0.75 of the square)
    n = len(out["crops"])
    assert n == spec.NUM_ROWS and out["jitter_crops"].shape == (2 * n, 3, spec.CROP_SIZE, spec.CROP_SIZE)
    j, d = spec.QUERY_BOX_JITTER, np.concatenate([box[2:] - box[:2]] * 2)
    shrunk, grown = box + d * [j, j, -j, -j], box - d * [j, j, -j, -j]
    np.testing.assert_array_equal(out["jitter_crops"][0], run([shrunk])["crops"][0])
    np.testing.assert_array_equal(out["jitter_crops"][n], run([grown])["crops"][0])
    limits = [0.0, 0.0, 1.0, 0.75]  # 640 x 480 in its 640-px square
    far = np.array([0.0, 0.0, 1.0, 0.9], np.float32)
    np.testing.assert_array_equal(out["jitter_crops"][n + 1], run([np.clip(far - np.concatenate([far[2:] - far[:2]] * 2) * [j, j, -j, -j],
                                                                           0, limits)])["crops"][0])
    for k in (n - 1, 2 * n - 1):
        np.testing.assert_array_equal(out["jitter_crops"][k], out["crops"][-1])
    assert not np.array_equal(out["jitter_crops"][0], out["crops"][0])


def test_the_served_crop_graph_cuts_jitter_crops_for_its_selected_rows_only(crop):
    img = Image.new("RGB", (800, 400), "white")
    out = dict(zip(["crops", "boxes", "scores", "valid", "jitter_crops"],
                   crop.run(None, _feed(img, [[0, 0, 0.25, 0.25], [0.5, 0, 0.75, 0.25]], [0.9, 0.05]))))
    assert len(out["crops"]) == 2 and len(out["jitter_crops"]) == 4  # the weak row dropped; the whole image kept


def test_the_build_keeps_the_crop_graphs_current_without_retraining(tmp_path):
    """`python -m export.build` with every model present still rewrites the crop graphs when client/spec.py's row
    policy or sizes changed them (export.build.write_crop_graphs), and leaves them alone when they are current."""
    from export.build import write_crop_graphs

    assert sorted(write_crop_graphs(tmp_path)) == sorted([spec.CROP.name, spec.WHOLE_CROP.name])
    assert write_crop_graphs(tmp_path) == []
    path = spec.onnx_file(tmp_path, spec.CROP.name)
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # e.g. a graph from before a change of the row policy
    assert write_crop_graphs(tmp_path) == [spec.CROP.name]
    got = _session(onnx.load(str(path)))
    assert [o.name for o in got.get_outputs()] == [t.name for t in spec.CROP.outputs]
