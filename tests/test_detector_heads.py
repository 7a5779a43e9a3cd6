"""The detector's heads served as their mean (export/models.py: HeadEnsemble, RefinerEnsemble; TrainConfig.det_heads),
on one trunk or several (DetectorBackbones; TrainConfig.det_backbones): what the mean is, how a build trains the
members, how a heads file keeps them, and that the graph exports."""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from client import spec
from export import train
from export.models import LITE0, Backbone, BoxRefiner, Detector, DetectorBackbones, DetectorHead, HeadEnsemble, RefinerEnsemble

LITE2 = "efficientnet-lite2"


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


def _stage_data(n: int = 12, trunks: tuple[str, ...] = (LITE0,)) -> SimpleNamespace:
    """A tiny stand-in for build.TrainingData: random stride-16/32 maps of each trunk's real widths, one box each."""
    rng = np.random.default_rng(0)
    side = spec.DET_SIZE // 16
    boxes = [np.array([[0.1 + 0.02 * i, 0.2, 0.5 + 0.02 * i, 0.7]], np.float32) for i in range(n)]
    maps = {}
    for name in trunks:
        t = Backbone(pretrained=False, name=name)
        maps[name] = (rng.normal(size=(n, t.c16, side, side)).astype(np.float16),
                      rng.normal(size=(n, t.c32, side // 2, side // 2)).astype(np.float16), None)
    f16, f32, _ = maps[trunks[0]]
    return SimpleNamespace(f16=f16, f32=f32, f8=None, maps=maps.__getitem__,
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
    x16, x32 = torch.from_numpy(data.f16[:2]).float(), torch.from_numpy(data.f32[:2]).float()
    with torch.no_grad():  # the served head is the mean of both (not the first alone)
        want = sum(torch.sigmoid(m(x16, x32)[0]) for m in det.head.members) / 2
        np.testing.assert_allclose(torch.sigmoid(det.head(x16, x32)[0]).numpy(), want.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="3 channel spans for 2 ensemble members"):
        HeadEnsemble(list(det.head.members), [None] * 3)


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


def test_each_member_of_a_two_trunk_detector_reads_only_its_own_trunks_channels():
    """DetectorBackbones concatenates its trunks' maps; with its spans, the ensembles give each member its own
    trunk's channels: the mean of what each member gives on its trunk's maps alone."""
    torch.manual_seed(0)
    trunks = DetectorBackbones((LITE0, LITE2), pretrained=False).eval()
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        _, f16, f32 = trunks.detector_maps(x)
        own = [t.detector_maps(x)[1:] for t in trunks.trunks]
    assert f16.shape[1] == trunks.c16 == sum(t.c16 for t in trunks.trunks) and f32.shape[1] == trunks.c32
    assert torch.equal(f16, torch.cat([o[0] for o in own], 1)) and torch.equal(f32, torch.cat([o[1] for o in own], 1))
    heads = [DetectorHead(t.c16, t.c32, width=16).eval() for t in trunks.trunks]
    refs = [BoxRefiner(t.c16, t.c32, width=8, hidden=16).eval() for t in trunks.trunks]
    for r in refs:
        torch.nn.init.normal_(r.mlp[-1].weight, std=0.05)
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.6]]])
    with torch.no_grad():
        heat, size, _ = HeadEnsemble(heads, trunks.spans)(f16, f32)
        alone = [h(*o) for h, o in zip(heads, own)]
        moved = RefinerEnsemble(refs, trunks.spans)(f16, f32, boxes)
        moved_alone = [r(*o, boxes) for r, o in zip(refs, own)]
    want = (torch.sigmoid(alone[0][0]) + torch.sigmoid(alone[1][0])) / 2
    np.testing.assert_allclose(torch.sigmoid(heat).numpy(), want.numpy(), atol=1e-6)
    np.testing.assert_allclose(size.numpy(), ((alone[0][1] + alone[1][1]) / 2).numpy(), atol=1e-6)
    np.testing.assert_allclose(moved.numpy(), ((moved_alone[0] + moved_alone[1]) / 2).numpy(), atol=1e-6)


def test_the_build_trains_each_trunks_heads_on_that_trunks_maps():
    """build.detector_stage with det_backbones (Lite0, Lite2): the Lite2 member is what a Lite2-only build trains on
    the Lite2 maps, and the served detector runs both trunks."""
    from export.build import detector_stage

    data = _stage_data(trunks=(LITE0, LITE2))
    cfg = dict(det_epochs=1, det_refine_epochs=1, batch=8, det_heads=2)
    log: dict = {}
    det = detector_stage(data, train.TrainConfig(**cfg, det_backbones=(LITE0, LITE2)), log)
    assert det.backbone.names == (LITE0, LITE2) and len(det.head.members) == len(det.refiner.members) == 4
    assert det.head.spans == det.refiner.spans == [det.backbone.spans[j // 2] for j in range(4)]
    assert len(log["detector_curve"]) == len(log["detector_val_members"]) == 4
    for t, name in enumerate((LITE0, LITE2)):
        one = detector_stage(data, train.TrainConfig(**cfg, det_backbones=(name,)), {})
        assert one.backbone.names == (name,) and len(one.head.members) == 2
        for i in range(2):  # member 2t + i: seed i on trunk t, as that trunk's own build trains it
            pairs = ((det.head.members[2 * t + i], one.head.members[i]), (det.refiner.members[2 * t + i], one.refiner.members[i]))
            for a, b in pairs:
                assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_a_two_trunk_detector_exports_to_onnx_and_its_heads_file_keeps_its_trunks(tmp_path):
    from export.build import export_detector
    from export.checkpoint import Heads
    from export.onnx_export import read_metadata

    torch.manual_seed(0)
    det = Detector(backbones=(LITE0, LITE2)).eval()  # pretrained trunks, as in the first ONNX test above
    for h, r in zip(det.head.members, det.refiner.members):
        torch.nn.init.normal_(h.heatmap.weight, std=0.2)
        torch.nn.init.normal_(r.mlp[-1].weight, std=0.05)
    rng = np.random.default_rng(0)

    def img(n, side):
        return rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8)

    with torch.no_grad():
        assert export_detector(det, tmp_path / "detector.onnx", img) < 1e-4
    assert LITE2 in read_metadata(tmp_path / "detector.onnx")["backbone"]
    Heads(det.head.state_dict(), {}, [], {}, {}, torch.zeros(1), None, {}, det.refiner.state_dict(),
          detector_backbones=det.backbone.names).save(tmp_path / "heads.pt")
    back = Heads.load(tmp_path / "heads.pt").detector_model(pretrained=False)
    assert back.backbone.names == (LITE0, LITE2) and back.head.spans == det.head.spans
    for a, b in ((back.head, det.head), (back.refiner, det.refiner)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_the_second_scale_of_a_two_trunk_detector_reads_the_first_trunk_alone():
    """models.SECOND_SCALE_TRUNKS = 1: the photo (and its mirror) go through both trunks and all four members, the
    512-px second look through Lite0 and its two members only. Changing the Lite2 members changes the first scale's
    heatmap, not the second's; the detector's boxes still come from both."""
    from export.models import SECOND_SCALE_TRUNKS

    assert SECOND_SCALE_TRUNKS == 1
    torch.manual_seed(0)
    det = Detector(pretrained=False, heads=2, backbones=(LITE0, LITE2)).eval()
    assert det.second_trunks == 1 and det.second_members == 2 and Detector(pretrained=False).second_members is None
    x = torch.randint(0, 256, (1, 3, spec.DET_SIZE, spec.DET_SIZE), dtype=torch.uint8)
    src = torch.randint(0, 256, (1, 3, spec.CROP_SOURCE_SIZE, spec.CROP_SOURCE_SIZE), dtype=torch.uint8)
    with torch.no_grad():
        before = det.scales(x, src)
        for h in det.head.members[2:]:
            torch.nn.init.normal_(h.heatmap.weight, std=0.5)
        after = det.scales(x, src)
    assert before[1][0].shape[1] == det.backbone.trunks[0].c16  # the second scale's maps: Lite0's channels only
    assert not torch.equal(before[0][2], after[0][2]) and torch.equal(before[1][2], after[1][2])


def test_a_kept_detector_brings_its_validation_from_the_same_data_and_needs_no_maps(monkeypatch):
    """--retrain of another head keeps the detector: if its build validated it on the same data (the same features
    key in both logs), build.detector_stage takes its curves and validation from the heads file's log instead of
    validating again, so train_heads asks prepare_data for no trunk's maps (a two-trunk detector's second trunk costs
    1.2 GB of maps, made again if missing). On other data, or without a logged key, it is validated again."""
    from export import build
    from export.checkpoint import Heads

    torch.manual_seed(0)
    kept = Detector(pretrained=False, heads=2, backbones=(LITE0, LITE2)).eval()
    val = {"ap50": 0.9, "recall_at_threshold": 0.8}
    log = {"data": {"features_key": "k1"}, "detector_curve": [[1.0]], "refiner_curve": [[2.0]], "detector_val": val,
           "detector_val_members": [val] * 4}
    old = Heads(kept.head.state_dict(), {}, [], {}, {}, torch.zeros(1), None, log, kept.refiner.state_dict(),
                detector_backbones=kept.backbone.names)
    monkeypatch.setattr(Heads, "detector_model", lambda self: kept)

    class NoMaps:  # a TrainingData whose maps must not be read
        det = SimpleNamespace(val=np.array([True]), boxes=[np.zeros((0, 4), np.float32)])

        def maps(self, name):
            raise AssertionError(f"the kept detector read the {name} maps")

    got: dict = {"data": {"features_key": "k1"}}
    det = build.detector_stage(NoMaps(), train.TrainConfig(det_backbones=(LITE0, LITE2)), got, old, retrain=("classifier",))
    assert det is kept and got["detector_val"] == val and got["detector_val_members"] == [val] * 4
    assert got["detector_curve"] == [[1.0]] and got["refiner_curve"] == [[2.0]]
    with pytest.raises(AssertionError, match="read the efficientnet-lite0 maps"):  # other data: validated again
        build.detector_stage(NoMaps(), train.TrainConfig(), {"data": {"features_key": "k2"}}, old, retrain=("classifier",))

    class Loaded(Exception):
        pass

    def prepare_data(dcfg, build_dir, log, backbones, validated_on=None):  # what train_heads asks for, then stop
        raise Loaded(tuple(backbones), validated_on)

    monkeypatch.setattr(build, "prepare_data", prepare_data)
    cfg = train.TrainConfig(det_backbones=(LITE0,))
    no_key = replace(old, log={k: v for k, v in log.items() if k != "data"})
    for retrain, heads, want in ((("classifier",), old, ((LITE0, LITE2), "k1")), (("detector",), old, ((LITE0,), None)),
                                 ((), None, ((LITE0,), None)), (("embedder",), no_key, ((LITE0, LITE2), None))):
        with pytest.raises(Loaded) as asked:
            build.train_heads(None, cfg, None, {}, heads, retrain)
        assert asked.value.args == want


def test_with_stride8_maps_each_trunks_member_reads_its_own_stride8_channels():
    """A two-trunk detector that reads stride-8 maps (models.STRIDE8, off in the shipped build): the concatenated
    stride-8 maps are sliced per trunk like the others, so each head and refiner sees only its trunk's three maps."""
    torch.manual_seed(0)
    trunks = DetectorBackbones((LITE0, LITE2), pretrained=False).eval()
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        f8, f16, f32 = trunks.detector_maps(x, with8=True)
        own = [t.detector_maps(x, True) for t in trunks.trunks]
    assert f8.shape[1] == trunks.c8 == sum(t.c8 for t in trunks.trunks) and torch.equal(f8, torch.cat([o[0] for o in own], 1))
    heads = [DetectorHead(t.c16, t.c32, width=16, c8=t.c8).eval() for t in trunks.trunks]
    refs = [BoxRefiner(t.c16, t.c32, width=8, hidden=16, c8=t.c8).eval() for t in trunks.trunks]
    for h, r in zip(heads, refs):
        torch.nn.init.normal_(h.lat8.weight, std=0.5)  # the stride-8 maps move the output
        torch.nn.init.normal_(r.mlp[-1].weight, std=0.05)
    boxes = torch.tensor([[[0.1, 0.2, 0.5, 0.6]]])
    with torch.no_grad():
        heat, size, _ = HeadEnsemble(heads, trunks.spans)(f16, f32, f8)
        alone = [h(o[1], o[2], o[0]) for h, o in zip(heads, own)]
        moved = RefinerEnsemble(refs, trunks.spans)(f16, f32, boxes, f8)
        moved_alone = [r(o[1], o[2], boxes, o[0]) for r, o in zip(refs, own)]
        without8 = heads[0](own[0][1], own[0][2], torch.zeros_like(own[0][0]))
    assert not torch.allclose(without8[0], alone[0][0])  # the stride-8 maps are read at all
    want = (torch.sigmoid(alone[0][0]) + torch.sigmoid(alone[1][0])) / 2
    np.testing.assert_allclose(torch.sigmoid(heat).numpy(), want.numpy(), atol=1e-6)
    np.testing.assert_allclose(size.numpy(), ((alone[0][1] + alone[1][1]) / 2).numpy(), atol=1e-6)
    np.testing.assert_allclose(moved.numpy(), ((moved_alone[0] + moved_alone[1]) / 2).numpy(), atol=1e-6)
