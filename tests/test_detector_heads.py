"""The detector's heads served as their mean (export/models.py: HeadEnsemble, RefinerEnsemble; TrainConfig.det_heads):
what the mean is, how a build trains the members, how a heads file keeps them, and that the graph exports."""
from types import SimpleNamespace

import numpy as np
import torch

from client import spec
from export import train
from export.models import BoxRefiner, Detector, DetectorHead, HeadEnsemble, RefinerEnsemble


def _maps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 8, 10, 10, generator=g), torch.randn(2, 12, 5, 5, generator=g)


def test_the_head_ensemble_is_the_mean_of_its_heads_probabilities_sizes_and_offsets():
    torch.manual_seed(0)
    heads = [DetectorHead(8, 12, width=16).eval() for _ in range(2)]
    f16, f32 = _maps()
    with torch.no_grad():
        outs = [h(f16, f32) for h in heads]
        heat, size, off = HeadEnsemble(heads)(f16, f32)
        alone = HeadEnsemble(heads[:1])(f16, f32)
    want = (torch.sigmoid(outs[0][0]) + torch.sigmoid(outs[1][0])) / 2
    np.testing.assert_allclose(torch.sigmoid(heat).numpy(), want.numpy(), atol=1e-6)
    np.testing.assert_allclose(size.numpy(), ((outs[0][1] + outs[1][1]) / 2).numpy(), atol=1e-6)
    np.testing.assert_allclose(off.numpy(), ((outs[0][2] + outs[1][2]) / 2).numpy(), atol=1e-6)
    assert not np.allclose(outs[0][1].numpy(), outs[1][1].numpy(), atol=1e-3)  # the members do differ
    for a, b in zip(alone, outs[0]):  # one member: its own output, untouched
        assert torch.equal(a, b)


def test_the_refiner_ensemble_moves_a_box_to_the_mean_of_its_refiners_boxes():
    torch.manual_seed(0)
    refs = [BoxRefiner(8, 12, width=8, hidden=16).eval() for _ in range(2)]
    for r in refs:
        torch.nn.init.normal_(r.mlp[-1].weight, std=0.05)
    f16, f32 = _maps(1)
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.6], [0.4, 0.4, 0.9, 0.8]]]).repeat(2, 1, 1)
    with torch.no_grad():
        moved = [r(f16, f32, boxes) for r in refs]
        mean = RefinerEnsemble(refs)(f16, f32, boxes)
    np.testing.assert_allclose(mean.numpy(), ((moved[0] + moved[1]) / 2).numpy(), atol=1e-6)
    assert not np.allclose(moved[0].numpy(), moved[1].numpy(), atol=1e-4)


def _stage_data(n: int = 12) -> SimpleNamespace:
    """A tiny stand-in for build.TrainingData: random stride-16/32 maps of the real backbone's widths, one box each."""
    det = Detector(pretrained=False)
    rng = np.random.default_rng(0)
    side = spec.DET_SIZE // 16
    boxes = [np.array([[0.1 + 0.02 * i, 0.2, 0.5 + 0.02 * i, 0.7]], np.float32) for i in range(n)]
    return SimpleNamespace(f16=rng.normal(size=(n, det.backbone.c16, side, side)).astype(np.float16),
                           f32=rng.normal(size=(n, det.backbone.c32, side // 2, side // 2)).astype(np.float16), f8=None,
                           det=SimpleNamespace(boxes=boxes, val=np.arange(n) >= n - 4))


def test_the_build_trains_each_head_as_a_one_head_build_with_its_own_seed():
    """build.detector_stage with det_heads 2: member i is what a one-head build with seed + i trains (so the first is
    the head a one-head build gives), each with its refiner; the log keeps each head's curve and validation."""
    from export.build import detector_stage

    data = _stage_data()
    cfg = train.TrainConfig(det_epochs=1, det_refine_epochs=1, batch=8, det_heads=2)
    log: dict = {}
    det = detector_stage(data, cfg, log)
    assert len(det.head.members) == len(det.refiner.members) == 2
    assert len(log["detector_curve"]) == len(log["refiner_curve"]) == len(log["detector_val_members"]) == 2
    for i in range(2):
        one = detector_stage(data, train.TrainConfig(det_epochs=1, det_refine_epochs=1, batch=8, seed=i), {})
        assert len(one.head.members) == 1
        for a, b in ((det.head.members[i], one.head.members[0]), (det.refiner.members[i], one.refiner.members[0])):
            assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    a, b = (m.state_dict()["heatmap.weight"] for m in det.head.members)
    assert not torch.equal(a, b)  # two seeds, two heads


def test_a_two_head_detector_exports_to_onnx_and_loads_back_from_its_heads(tmp_path):
    from export.build import export_detector
    from export.checkpoint import Heads

    torch.manual_seed(0)
    det = Detector(heads=2).eval()  # the pretrained backbone: a random one's tiny maps tie the scores, and onnxruntime
    for h, r in zip(det.head.members, det.refiner.members):  # and torch would then pick other rows
        torch.nn.init.normal_(h.heatmap.weight, std=0.2)
        torch.nn.init.normal_(r.mlp[-1].weight, std=0.05)  # refiners that move boxes
    rng = np.random.default_rng(0)

    def img(n, side):
        return rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8)

    with torch.no_grad():
        assert export_detector(det, tmp_path / "detector.onnx", img) < 1e-4
    heads = Heads(det.head.state_dict(), {}, [], {}, {}, torch.zeros(1), None, {}, det.refiner.state_dict())
    back = heads.detector_model(pretrained=False)
    assert len(back.head.members) == len(back.refiner.members) == 2
    for a, b in ((back.head, det.head), (back.refiner, det.refiner)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_a_heads_file_written_before_the_ensemble_loads_as_one_head():
    """A heads file of one DetectorHead / BoxRefiner state (no ``members.`` prefix) gives a one-member detector with
    those weights."""
    from export.checkpoint import Heads

    torch.manual_seed(0)
    one = Detector(pretrained=False).eval()
    head, refiner = one.head.members[0].state_dict(), one.refiner.members[0].state_dict()
    back = Heads(head, {}, [], {}, {}, torch.zeros(1), None, {}, refiner).detector_model(pretrained=False)
    assert len(back.head.members) == 1 and len(back.refiner.members) == 1
    assert all(torch.equal(v, head[k]) for k, v in back.head.members[0].state_dict().items())
    assert all(torch.equal(v, refiner[k]) for k, v in back.refiner.members[0].state_dict().items())
