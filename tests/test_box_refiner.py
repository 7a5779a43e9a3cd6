"""The detector's box refiner (export/models.py: BoxRefiner, export/train.py: train_refiner) on tiny inputs."""
import numpy as np
import torch
import torch.nn.functional as F

from client import spec
from client.imaging import box_iou
from export import train
from export.models import MERGED_REFINE_STEPS, REFINE_STEPS, BoxRefiner, Detector, decode_peaks, roi_grid


def test_roi_grid_samples_the_cell_centres_of_the_grown_box():
    w = 20
    xs = ((torch.arange(w).float() + 0.5) / w).view(1, 1, 1, w).expand(1, 1, w, w).contiguous()  # value = x position
    box = torch.tensor([[[0.2, 0.3, 0.6, 0.5]]])
    got = F.grid_sample(xs, roi_grid(box, grid=5, grow=1.0), align_corners=False)[0, 0, 0]
    np.testing.assert_allclose(got.numpy(), [0.24, 0.32, 0.40, 0.48, 0.56], atol=1e-5)
    grown = F.grid_sample(xs, roi_grid(box, grid=5, grow=1.5), align_corners=False)[0, 0, 0]
    np.testing.assert_allclose(grown.numpy()[[0, -1]], [0.16, 0.64], atol=1e-5)  # 1.5x the width about the centre


def test_an_untrained_refiner_keeps_its_boxes_and_boxes_stay_ordered_in_the_image():
    torch.manual_seed(0)
    ref = BoxRefiner(4, 6, width=8, hidden=16).eval()
    f16, f32 = torch.randn(2, 4, 10, 10), torch.randn(2, 6, 5, 5)
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], [[0.3, 0.3, 0.4, 0.9], [0.5, 0.1, 0.7, 0.2]]])
    with torch.no_grad():
        np.testing.assert_allclose(ref(f16, f32, boxes).numpy(), boxes.numpy(), atol=1e-6)
        torch.nn.init.normal_(ref.mlp[-1].weight, std=5.0)  # wild moves: still x1 <= x2, y1 <= y2, inside [0, 1]
        out = ref(f16, f32, boxes)
    assert (out[..., 2:] >= out[..., :2]).all() and (out >= 0).all() and (out <= 1).all()


def _scenes(n: int, rng: np.random.Generator):
    """Feature maps that show where one object is (channel 0 = 1 inside its box, on both strides), and its box."""
    f16, f32, gt = np.zeros((n, 4, 16, 16), np.float16), np.zeros((n, 6, 8, 8), np.float16), []
    for i in range(n):
        x1, y1 = rng.uniform(0.05, 0.5, 2)
        x2, y2 = x1 + rng.uniform(0.25, 0.45), y1 + rng.uniform(0.25, 0.45)
        for f, s in ((f16, 16), (f32, 8)):
            c = (np.arange(s) + 0.5) / s
            f[i, 0] = ((c[:, None] >= y1) & (c[:, None] <= y2) & (c[None] >= x1) & (c[None] <= x2))
        f16[i, 1:] = rng.normal(size=(3, 16, 16))
        gt.append(np.array([[x1, y1, x2, y2]], np.float32))
    return f16, f32, gt


def test_the_refiner_learns_to_tighten_loose_boxes_on_unseen_scenes():
    rng = np.random.default_rng(0)
    f16, f32, gt = _scenes(160, rng)
    loose = [np.clip(g + rng.uniform(-0.12, 0.12, g.shape).astype(np.float32) * np.tile(g[:, 2:] - g[:, :2], 2), 0, 1) for g in gt]
    cfg = train.TrainConfig(det_refine_epochs=40, det_feature_dropout=0.0, lr=3e-3)
    torch.manual_seed(0)
    ref = BoxRefiner(4, 6, width=8, hidden=32)
    train_idx, test_idx = np.arange(120), np.arange(120, 160)
    log = train.train_refiner(ref, f16, f32, gt, [loose[i] for i in train_idx], train_idx, cfg, batch=32, progress=False)
    assert log[-1]["loss"] < log[0]["loss"]
    with torch.no_grad():
        out = ref(torch.from_numpy(f16[test_idx]).float(), torch.from_numpy(f32[test_idx]).float(),
                  torch.from_numpy(np.stack([loose[i] for i in test_idx])))
    before = np.mean([box_iou(loose[i], gt[i])[0, 0] for i in test_idx])
    after = np.mean([box_iou(out[j].numpy(), gt[i])[0, 0] for j, i in enumerate(test_idx)])
    assert after > before + 0.05, (before, after)


def test_refiner_samples_take_overlapping_detections_and_every_true_box():
    gt = [np.array([[0.1, 0.1, 0.5, 0.5]], np.float32), np.zeros((0, 4), np.float32)]
    props = [np.array([[0.12, 0.1, 0.5, 0.52], [0.7, 0.7, 0.9, 0.9]], np.float32), np.array([[0.1, 0.1, 0.2, 0.2]], np.float32)]
    box, target, image = train.refiner_samples(props, gt, np.array([0, 1]), min_iou=0.4)
    assert len(box) == 2 and (image == 0).all()  # the overlapping detection and the true box; the stray one and the empty scene give none
    np.testing.assert_array_equal(target, np.repeat(gt[0], 2, 0))


def test_the_served_detector_refines_each_box_refine_steps_times():
    """models.REFINE_STEPS: the detector's boxes are the refiner applied to its own output that many times."""
    torch.manual_seed(0)
    det = Detector(pretrained=False, refine_steps=2).eval()
    assert REFINE_STEPS == 2 and Detector(pretrained=False).refine_steps == REFINE_STEPS
    torch.nn.init.normal_(det.refiner.members[0].mlp[-1].weight, std=0.05)  # a refiner that moves boxes
    f16, f32 = torch.randn(1, det.backbone.c16, 20, 20), torch.randn(1, det.backbone.c32, 10, 10)
    prob, size, off = torch.rand(1, 1, 20, 20), torch.rand(1, 2, 20, 20) * 0.3, torch.rand(1, 2, 20, 20)
    with torch.no_grad():
        boxes, scores = det._boxes(f16, f32, prob, size, off)
        peaks, peak_scores = decode_peaks(prob, size, off, det.k)
        once = det.refiner(f16, f32, peaks)
        np.testing.assert_allclose(boxes.numpy(), det.refiner(f16, f32, once).numpy(), atol=1e-6)
    assert not np.allclose(boxes.numpy(), once.numpy(), atol=1e-4)
    np.testing.assert_array_equal(scores.numpy(), peak_scores.numpy())  # refining moves boxes, never rescores them


def _photo_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(det_image, crop_source) of one photo-like image (smooth blobs on a 560x400 canvas) as the client makes them."""
    from PIL import Image, ImageFilter

    from client.imaging import letterbox

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).resize((560, 400), Image.BICUBIC)
    img.paste(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), (300, 150))  # fine detail
    det, src, _ = letterbox(img.filter(ImageFilter.GaussianBlur(0.5)))
    return torch.from_numpy(det), torch.from_numpy(src)


def test_the_merged_boxes_are_refined_once_more_on_the_second_scale():
    """models.MERGED_REFINE_STEPS: after the two scales' boxes are merged, the refiner moves each of them once more on
    the second scale's maps (the crop source resized to SECOND_SCALE); the scores stay those of the merge."""
    torch.manual_seed(0)
    det = Detector(pretrained=False).eval()
    assert MERGED_REFINE_STEPS == 1 and det.merged_refine_steps == MERGED_REFINE_STEPS and det.second_scale
    torch.nn.init.normal_(det.refiner.members[0].mlp[-1].weight, std=0.05)  # a refiner that moves boxes
    x, src = _photo_inputs(3)
    with torch.no_grad():
        boxes, scores = det(x, src)
        det.merged_refine_steps = 0
        merged, merged_scores = det(x, src)
        up = F.interpolate(src.float(), size=(det.second_scale,) * 2, mode="bilinear", align_corners=False)
        _, g16, g32 = det.backbone.detector_maps(up)
        expected = det.refiner(g16, g32, merged)
    np.testing.assert_allclose(boxes.numpy(), expected.numpy(), atol=1e-6)
    assert not np.allclose(boxes.numpy(), merged.numpy(), atol=1e-4)
    np.testing.assert_array_equal(scores.numpy(), merged_scores.numpy())


def test_the_second_scale_is_resized_from_the_crop_source():
    """models.SECOND_FROM_SOURCE: the second scale's maps come from the 640-px crop source resized to SECOND_SCALE,
    the first scale's from the 320-px det_image; without a crop source (or with ``second_from_source`` off) the
    second scale is det_image upsampled, as before, and the boxes differ (the crop source holds detail the
    320-px input lost)."""
    from export.models import SECOND_FROM_SOURCE

    torch.manual_seed(0)
    det = Detector(pretrained=False).eval()
    assert SECOND_FROM_SOURCE and det.second_from_source and det.second_scale
    x, src = _photo_inputs(4)
    side = (det.second_scale,) * 2
    with torch.no_grad():
        first, second = det.scales(x, src)
        _, want16, want32 = det.backbone.detector_maps(F.interpolate(src.float(), size=side, mode="bilinear", align_corners=False))
        _, first16, _ = det.backbone.detector_maps(torch.cat([x, x.flip(3)]))
        got = det(x, src)
        upsampled = det(x)
        _, up16, _ = det.backbone.detector_maps(F.interpolate(x.float(), size=side, mode="bilinear", align_corners=False))
        det.second_from_source = False
        np.testing.assert_array_equal(det(x, src)[0].numpy(), upsampled[0].numpy())
    for a, b in ((second[0], want16), (second[1], want32), (first[0], first16[:1])):  # random weights: tiny maps, relative
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-4 * float(b.abs().max()))
    assert np.abs(want16 - up16).max() > 0.05 * np.abs(want16).max()  # the two sources do differ (random weights: tiny maps)
    assert not np.allclose(got[0].numpy(), upsampled[0].numpy(), atol=1e-4)


def test_a_stride8_detector_exports_to_onnx_and_loads_back_from_its_heads(tmp_path):
    """models.STRIDE8: a detector whose head and refiner read the stride-8 maps too exports with the served graph's
    steps (flip test, second scale, last refinement) and matches torch in onnxruntime; a heads file holding such a
    head gives that detector back."""
    from export.build import export_detector
    from export.checkpoint import Heads

    torch.manual_seed(0)
    det = Detector(pretrained=False, stride8=True).eval()
    assert det.head.members[0].lat8 is not None and det.refiner.members[0].with8 and not Detector(pretrained=False).stride8
    torch.nn.init.normal_(det.refiner.members[0].mlp[-1].weight, std=0.05)  # a refiner that moves boxes
    torch.nn.init.normal_(det.head.members[0].heatmap.weight, std=2.0)  # scores far apart: an untrained head's near-ties would
    # make onnxruntime and torch pick other rows, which says nothing of the graph
    rng = np.random.default_rng(0)

    def img(n, side):
        return rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8)

    x = torch.from_numpy(img(1, spec.DET_SIZE))
    with torch.no_grad():
        assert export_detector(det, tmp_path / "detector.onnx", img) < 1e-4
        boxes, _ = det(x)
        torch.nn.init.normal_(det.head.members[0].lat8.weight, std=0.5)  # the stride-8 maps reach the boxes
        assert not torch.allclose(det(x)[0], boxes)
    heads = Heads(det.head.state_dict(), {}, [], {}, {}, torch.zeros(1), None, {}, det.refiner.state_dict())
    back = heads.detector_model(pretrained=False)
    assert back.stride8
    for a, b in ((back.head, det.head), (back.refiner, det.refiner)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_a_detector_that_reads_no_crop_source_still_takes_it(tmp_path):
    """spec.DETECTOR's inputs are (det_image, crop_source) whatever the test-time settings: with the second scale off
    or upsampled from det_image (SECOND_FROM_SOURCE False) nothing reads crop_source, yet the exported graph keeps
    it (the generated config.pbtxt names it, and Triton refuses a model without it), and its boxes do not depend on it."""
    import onnxruntime as ort

    from export.onnx_export import export_torch

    rng = np.random.default_rng(0)

    def img(n, side):
        return rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8)

    for name, kw in (("no-second-scale", {"second_scale": 0}), ("upsampled", {"second_from_source": False})):
        torch.manual_seed(0)
        det = Detector(pretrained=False, **kw).eval()
        path = tmp_path / f"{name}.onnx"
        x = img(1, spec.DET_SIZE)
        with torch.no_grad():
            export_torch(det, spec.DETECTOR, path, (torch.from_numpy(x), torch.from_numpy(img(1, spec.CROP_SOURCE_SIZE))))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [t.name for t in spec.DETECTOR.inputs], name
        a = sess.run(None, {spec.DET_IMAGE.name: x, spec.DET_SOURCE.name: img(1, spec.CROP_SOURCE_SIZE)})
        b = sess.run(None, {spec.DET_IMAGE.name: x, spec.DET_SOURCE.name: img(1, spec.CROP_SOURCE_SIZE)})
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
