"""The detector head's and the embedder's training loops on cached features (what export.build runs, on tiny inputs)."""
from dataclasses import replace

import numpy as np
import torch

from export import train
from export.models import DetectorHead, Embedder


def _trained_head(cfg: train.TrainConfig) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    f16 = rng.normal(size=(16, 8, 10, 10)).astype(np.float16)
    f32 = rng.normal(size=(16, 12, 5, 5)).astype(np.float16)
    boxes = [np.array([[0.1 + 0.02 * i, 0.2, 0.5 + 0.02 * i, 0.7]], np.float32) for i in range(16)]
    torch.manual_seed(0)
    head = DetectorHead(8, 12, width=16)
    log = train.train_detector(head, f16, f32, boxes, np.arange(16), cfg)
    assert len(log) == cfg.det_epochs and all(np.isfinite(e["loss"]) for e in log)
    return head.state_dict()


def test_feature_dropout_is_on_by_default_seeded_and_applied():
    cfg = train.TrainConfig(det_epochs=2, batch=8)
    assert 0 < cfg.det_feature_dropout < 1
    a, b = _trained_head(cfg), _trained_head(cfg)
    assert all(torch.equal(a[k], b[k]) for k in a), "the same seed must give the same head (builds are reproducible)"
    c = _trained_head(replace(cfg, det_feature_dropout=0.0))
    assert not all(torch.equal(a[k], c[k]) for k in a), "dropout changed nothing: it is not applied"


def _trained_embedder(cfg: train.TrainConfig) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    product = np.repeat(np.arange(64), 5)  # >= 256 rows: the PCA initialises a 256-d projection
    feats = (rng.normal(size=(64, 1280))[product] + 0.5 * rng.normal(size=(320, 1280))).astype(np.float32)
    is_catalog = np.tile([True, False, False, False, False], 64)
    torch.manual_seed(0)
    emb = Embedder(pretrained=False)
    train.pca_init(emb.proj, emb.center, feats)
    train.train_embedder(emb, feats, product, is_catalog, product % 2, cfg)
    return {k: v.clone() for k, v in emb.proj.state_dict().items()}


def test_embedder_feature_dropout_is_on_by_default_seeded_and_applied():
    cfg = train.TrainConfig(emb_epochs=2)
    assert 0 < cfg.emb_feature_dropout < 1
    a, b = _trained_embedder(cfg), _trained_embedder(cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _trained_embedder(replace(cfg, emb_feature_dropout=0.0))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _stride8_scenes(n: int, rng: np.random.Generator):
    """Maps where only the stride-8 ones show the object (channel 0 = 1 inside its box); the others are noise."""
    f8 = rng.normal(0, 0.3, (n, 4, 20, 20)).astype(np.float16)
    f16 = rng.normal(size=(n, 8, 10, 10)).astype(np.float16)
    f32 = rng.normal(size=(n, 12, 5, 5)).astype(np.float16)
    c = (np.arange(20) + 0.5) / 20
    boxes = []
    for i in range(n):
        x1, y1 = rng.uniform(0.05, 0.55, 2)
        x2, y2 = x1 + rng.uniform(0.2, 0.4), y1 + rng.uniform(0.2, 0.4)
        f8[i, 0] = (c[:, None] >= y1) & (c[:, None] <= y2) & (c[None] >= x1) & (c[None] <= x2)
        boxes.append(np.array([[x1, y1, x2, y2]], np.float32))
    return f8, f16, f32, boxes


def test_a_head_that_reads_stride8_maps_finds_objects_only_they_show():
    """DetectorHead(c8=...) with train_detector(f8=...) and run_detector_head(f8=...): the stride-8 maps reach the
    head in training (flipped with the others and the targets) and at test time; a head without them cannot do it."""
    from client.imaging import box_iou

    f8, f16, f32, boxes = _stride8_scenes(96, np.random.default_rng(0))
    cfg = train.TrainConfig(det_epochs=30, batch=8, lr=3e-3, det_feature_dropout=0.0)
    train_idx, test_idx = np.arange(80), np.arange(80, 96)
    ious = {}
    for c8 in (4, 0):
        torch.manual_seed(0)
        head = DetectorHead(8, 12, width=16, c8=c8)
        train.train_detector(head, f16, f32, boxes, train_idx, cfg, f8=f8 if c8 else None)
        pb, _ = train.run_detector_head(head, f16, f32, test_idx, f8=f8 if c8 else None)
        ious[c8] = np.mean([box_iou(pb[j][:1], boxes[i])[0, 0] for j, i in enumerate(test_idx)])
    assert ious[4] > 0.5 and ious[4] > ious[0] + 0.3, ious
