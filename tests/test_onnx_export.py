"""The served ONNX files against eager torch (rebuilt from the trained heads), on two input shapes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from client import imaging, spec

ROOT = Path(__file__).resolve().parent.parent
HEADS = ROOT / "data" / "build" / "heads_quick.pt"


@pytest.fixture(scope="module")
def torch_models(built):
    torch = pytest.importorskip("torch")
    if not HEADS.exists():
        pytest.skip(f"{HEADS} missing (models were built elsewhere)")
    from export.checkpoint import Heads

    return (torch, *Heads.load(HEADS).models())


def _session(built, name):
    return ort.InferenceSession(str(spec.onnx_file(built, name)), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 3])
def test_detector_and_embedder_match_torch(built, torch_models, batch):
    torch, det, _, emb = torch_models
    rng = np.random.default_rng(batch)
    x = rng.integers(0, 256, (batch, 3, spec.DET_SIZE, spec.DET_SIZE), dtype=np.uint8)
    src = rng.integers(0, 256, (batch, 3, spec.CROP_SOURCE_SIZE, spec.CROP_SOURCE_SIZE), dtype=np.uint8)
    boxes, scores = _session(built, spec.DETECTOR.name).run(None, {spec.DET_IMAGE.name: x, spec.DET_SOURCE.name: src})
    with torch.no_grad():
        tb, ts = det(torch.from_numpy(x), torch.from_numpy(src))
    assert boxes.shape == (batch, spec.MAX_OBJECTS, 4)
    np.testing.assert_allclose(boxes, tb.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, ts.numpy(), atol=1e-4)
    c = rng.integers(0, 256, (batch + 4, 3, spec.CROP_SIZE, spec.CROP_SIZE), dtype=np.uint8)
    feats, = _session(built, spec.BACKBONE.name).run(None, {spec.CROPS.name: c})  # the shared backbone pass
    e, emb_id = _session(built, spec.EMBEDDER.name).run(None, {spec.FEATURES.name: feats, spec.CROPS.name: c})
    with torch.no_grad():
        np.testing.assert_allclose(e, emb(torch.from_numpy(c)).numpy(), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert emb_id.shape == spec.EMBEDDER_ID.dims and emb_id[0].startswith(f"v{spec.EMBEDDER_VERSION}-")


@pytest.mark.parametrize("batch", [1, spec.NUM_ROWS])
def test_classifier_names_match_torch_indices(built, torch_models, batch):
    torch, _, cls, _ = torch_models
    c = np.random.default_rng(0).integers(0, 256, (batch, 3, spec.CROP_SIZE, spec.CROP_SIZE), dtype=np.uint8)
    feats, = _session(built, spec.BACKBONE.name).run(None, {spec.CROPS.name: c})
    fine, cat, score = _session(built, spec.CLASSIFIER.name).run(None, {spec.FEATURES.name: feats})
    with torch.no_grad():
        f, k, s = cls(torch.from_numpy(c))
    assert list(fine) == [cls.fine_classes[i] for i in f] and list(cat) == [cls.categories[i] for i in k]
    np.testing.assert_allclose(score, s.numpy(), atol=1e-5)


def test_the_category_follows_the_most_likely_fine_class_even_when_another_category_sums_more():
    """Summed probabilities favour a category of many fine classes; the served category is the argmax fine class's
    (the criterion the merge optimised), with that category's summed probability as its score."""
    torch = pytest.importorskip("torch")
    from export.models import Classifier

    cls = Classifier(["a", "b", "c", "d"], {"a": "X", "b": "Y", "c": "Y", "d": "Y"}, pretrained=False)
    probs = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.1, 0.5, 0.3, 0.1]])
    fine, cat, score = cls.decide(probs.log())
    assert fine.tolist() == [0, 1] and [cls.categories[i] for i in cat] == ["X", "Y"]
    np.testing.assert_allclose(score.numpy(), [0.4, 0.9], atol=1e-6)


def test_served_category_is_the_merge_of_the_served_fine_class(built, demo):
    """On the served ONNX files: ambiguous inputs (the mean of two catalog images' pooled vectors, where the summed
    probabilities and the argmax fine class disagree most often) get their fine class's category."""
    from PIL import Image

    from export.onnx_export import read_metadata

    merge = json.loads(read_metadata(spec.onnx_file(built, spec.CLASSIFIER.name))["merge_map"])
    files = imaging.list_images(demo / "catalog")[:20]
    c = np.stack([imaging.to_chw(Image.open(f).convert("RGB").resize((spec.CROP_SIZE,) * 2)) for f in files])
    feats, = _session(built, spec.BACKBONE.name).run(None, {spec.CROPS.name: c})
    i, j = np.triu_indices(len(feats), 1)
    fine, cat, score = _session(built, spec.CLASSIFIER.name).run(None, {spec.FEATURES.name: (feats[i] + feats[j]) / 2})
    assert len(fine) == len(i) and [merge[f] for f in fine] == list(cat)
    assert ((score > 0) & (score <= 1 + 1e-6)).all()


def test_every_onnx_file_carries_its_metadata(built):
    from export.onnx_export import read_metadata

    for m in spec.ONNX_MODELS:
        meta = read_metadata(spec.onnx_file(built, m.name))
        assert meta["model"] == m.name and meta["embedding_dim"] == str(spec.EMBED_DIM)
        assert json.loads(meta["normalization"])["mean"] == list(spec.MEAN)
    meta = read_metadata(spec.onnx_file(built, spec.CLASSIFIER.name))
    merge = json.loads(meta["merge_map"])
    assert set(json.loads(meta["fine_classes"])) == set(merge) and set(merge.values()) == set(json.loads(meta["categories"]))


def test_onnx_io_names_are_the_spec(built):
    for m in spec.ONNX_MODELS:
        s = _session(built, m.name)
        assert [i.name for i in s.get_inputs()] == [t.name for t in m.inputs]
        assert [o.name for o in s.get_outputs()] == [t.name for t in m.outputs]


def test_embedder_id_is_the_hash_of_its_weights_in_graph_and_metadata(built):
    import onnx

    from export.onnx_export import read_metadata, weights_id

    path = spec.onnx_file(built, spec.EMBEDDER.name)
    features = onnx.load(str(spec.onnx_file(built, spec.BACKBONE.name)))
    emb_id, = _session(built, spec.EMBEDDER.name).run([spec.EMBEDDER_ID.name], {
        spec.FEATURES.name: np.zeros((1, spec.FEATURE_DIM), np.float32),
        spec.CROPS.name: np.zeros((1, 3, spec.CROP_SIZE, spec.CROP_SIZE), np.uint8)})
    # the embedding function is the backbone and the head: the id hashes both graphs' weights
    assert emb_id.tolist() == [read_metadata(path)[spec.EMBEDDER_ID.name]] == [weights_id(features, onnx.load(str(path)))]
    changed = onnx.load(str(path))
    w = next(i for i in changed.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    assert weights_id(features, changed) != emb_id[0]  # other weights, another id


def test_served_detector_flip_test_is_mirror_symmetric(torch_models):
    """The served detector averages its maps over the photo and its mirror image: on a mirrored photo its scores are
    the same and, before the box refiner (which looks at the photo's own maps), its boxes are exactly the mirrored
    boxes; and it differs from the detector without the flip test (it does average something). The second test
    scale is off here: it looks at the photo alone."""
    torch, det, _, _ = torch_models
    assert det.flip_test
    x = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (2, 3, spec.DET_SIZE, spec.DET_SIZE), dtype=np.uint8))
    refiner, second = det.refiner, det.second_scale
    try:
        with torch.no_grad():
            det.refiner, det.second_scale = None, 0
            boxes, scores = det(x)
            mboxes, mscores = det(x.flip(3))
            det.flip_test = False
            plain_boxes, plain_scores = det(x)
    finally:
        det.refiner, det.flip_test, det.second_scale = refiner, True, second
    np.testing.assert_allclose(mscores.numpy(), scores.numpy(), atol=1e-5)
    mirrored = torch.stack([1 - boxes[..., 2], boxes[..., 1], 1 - boxes[..., 0], boxes[..., 3]], -1)
    np.testing.assert_allclose(mboxes.numpy(), mirrored.numpy(), atol=1e-4)
    assert not np.allclose(scores.numpy(), plain_scores.numpy(), atol=1e-4)
    assert not np.allclose(boxes.numpy(), plain_boxes.numpy(), atol=1e-4)


def test_merge_boxes_keeps_the_best_of_each_object():
    """Greedy suppression over two candidate sets: in score order, a box overlapping a kept one by more than the
    threshold scores 0; the best k come out in score order, from either set."""
    torch = pytest.importorskip("torch")
    from export.models import merge_boxes

    b1 = torch.tensor([[[0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9], [0.11, 0.1, 0.41, 0.4]]])
    s1 = torch.tensor([[0.9, 0.2, 0.5]])  # the third is the first again, weaker
    b2 = torch.tensor([[[0.6, 0.61, 0.9, 0.9], [0.0, 0.5, 0.2, 0.9], [0.1, 0.1, 0.4, 0.42]]])
    s2 = torch.tensor([[0.3, 0.25, 0.95]])  # the first is object 2 again, stronger; the third object 1, strongest
    boxes, scores = merge_boxes(b1, s1, b2, s2, k=4)
    np.testing.assert_allclose(scores[0].numpy(), [0.95, 0.3, 0.25, 0.0])
    np.testing.assert_allclose(boxes[0, :3].numpy(), [[0.1, 0.1, 0.4, 0.42], [0.6, 0.61, 0.9, 0.9], [0.0, 0.5, 0.2, 0.9]])
    boxes, scores = merge_boxes(b1, s1, b2, s2 * 0, k=3)  # a second set scored 0 leaves the first's own best per object
    np.testing.assert_allclose(scores[0].numpy(), [0.9, 0.2, 0.0])
    np.testing.assert_allclose(boxes[0, :2].numpy(), b1[0, :2].numpy())


def test_tied_rows_come_out_in_the_same_order_in_onnxruntime_as_in_torch(tmp_path):
    """The rows left at score 0 when fewer than k boxes survive (and the non-peak cells of a heatmap) tie: their
    order must not depend on the runtime. It did (torch's topk and onnxruntime's picked different zero rows), and a
    fresh build without the photoset failed the detector's parity check. export.models.stable_topk fixes it."""
    torch = pytest.importorskip("torch")
    from export.models import decode_peaks, merge_boxes, stable_topk

    x = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0, 0.9, 0.0]])
    values, idx = stable_topk(x, 6)
    assert idx.tolist() == [[5, 1, 3, 0, 2, 4]] and torch.equal(values, x[:, [5, 1, 3, 0, 2, 4]])

    class Both(torch.nn.Module):
        def forward(self, heat, size, offset, b2, s2):
            b1, s1 = decode_peaks(heat, size, offset, 8)
            return merge_boxes(b1, s1, b2, s2, 8)

    g = torch.Generator().manual_seed(0)
    heat = torch.zeros(1, 1, 10, 10)
    heat[0, 0, 2, 3], heat[0, 0, 7, 7], heat[0, 0, 2, 4] = 0.8, 0.6, 0.7  # 2 peaks (one cell beside the first): 6 zero rows
    size, offset = torch.rand(1, 2, 10, 10, generator=g) * 0.3 + 0.05, torch.rand(1, 2, 10, 10, generator=g)
    b2 = torch.tensor([[[0.2, 0.1, 0.5, 0.4], [0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]] + [[0.0, 0.0, 0.1, 0.1]] * 5])
    s2 = torch.tensor([[0.3, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]])
    args = (heat, size, offset, b2, s2)
    path = tmp_path / "both.onnx"
    torch.onnx.export(Both(), args, str(path), input_names=["heat", "size", "offset", "b2", "s2"], output_names=["boxes", "scores"],
                      opset_version=spec.ONNX_OPSET, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(["heat", "size", "offset", "b2", "s2"], args)})
    want = [t.numpy() for t in Both()(*args)]
    assert (want[1] == 0).sum() >= 3  # zero rows are there to be ordered
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)


def test_served_detector_second_scale_adds_boxes_without_duplicates(torch_models):
    """The second test scale changes the served detector's rows; its merged rows are in score order and no two of
    those it scores above 0 overlap by more than MERGE_IOU; and the rows the photo's own scale gives that survive
    the merge are still there, with their scores. All of this is checked on the merge itself, before the last
    refinement of the merged boxes (MERGED_REFINE_STEPS, tests/test_box_refiner.py): that step moves boxes, so two
    served rows may then overlap by more than MERGE_IOU, and the crop graph's NonMaxSuppression drops the repeat
    (tests/test_crop_graph.py)."""
    torch, det, _, _ = torch_models
    from export.models import MERGE_IOU

    assert det.second_scale and 0 < det.second_weight < 1
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.integers(0, 256, (3, 3, spec.DET_SIZE, spec.DET_SIZE), dtype=np.uint8))
    second, last = det.second_scale, det.merged_refine_steps
    try:
        with torch.no_grad():
            det.merged_refine_steps = 0
            boxes, scores = det(x)
            det.second_scale = 0
            one_boxes, one_scores = det(x)
    finally:
        det.second_scale, det.merged_refine_steps = second, last
    assert not np.allclose(scores.numpy(), one_scores.numpy(), atol=1e-4)
    for b, s, ob, os_ in zip(boxes.numpy(), scores.numpy(), one_boxes.numpy(), one_scores.numpy()):
        assert np.all(np.diff(s) <= 1e-7)
        live = b[s > 0]
        iou = imaging.box_iou(live, live)
        assert np.all(iou[np.triu_indices(len(live), 1)] <= MERGE_IOU + 1e-6)
        for box, score in zip(ob, os_):  # each first-scale row is kept, or overlaps a kept row that scores higher
            same = np.all(np.abs(b - box) < 1e-6, axis=1) & (np.abs(s - score) < 1e-6)
            near = (imaging.box_iou(box[None], b)[0] > MERGE_IOU) & (s >= score - 1e-6)
            assert same.any() or near.any() or score <= s[-1] + 1e-6
