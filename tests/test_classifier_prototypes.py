"""The classifier's prototypes: each fine class's mean direction, mixed with the linear head's probabilities."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import models  # noqa: E402
from export.checkpoint import Heads  # noqa: E402
from export.models import Classifier, class_prototypes, mixed_probs  # noqa: E402


def test_prototypes_are_the_normalised_mean_direction_of_each_class_and_zero_without_crops():
    pooled = torch.tensor([[3.0, 0, 0], [0, 1.0, 0], [0, 0, 5.0], [0, 0, 1.0]])
    p = class_prototypes(pooled, torch.tensor([0, 0, 2, 2]), 4)
    # class 0: the mean of two unit vectors at right angles, whatever their lengths were
    np.testing.assert_allclose(p[0].numpy(), [2 ** -0.5, 2 ** -0.5, 0], atol=1e-6)
    np.testing.assert_allclose(p[2].numpy(), [0, 0, 1], atol=1e-6)
    assert not p[1].any() and not p[3].any()


def test_the_mix_is_the_heads_softmax_and_the_prototypes_softmax_at_their_weights():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    protos = torch.eye(3)
    pooled = torch.tensor([[0.0, 0.0, 4.0], [0.1, 0.2, 7.0]])
    np.testing.assert_allclose(mixed_probs(logits, pooled, None).numpy(), torch.softmax(logits, 1).numpy())
    np.testing.assert_allclose(mixed_probs(logits, None, protos).numpy(), torch.softmax(logits, 1).numpy())
    got = mixed_probs(logits, pooled, protos)
    near = torch.softmax(torch.nn.functional.normalize(pooled, dim=1) @ protos.t() / models.PROTOTYPE_TAU, 1)
    want = (1 - models.PROTOTYPE_WEIGHT) * torch.softmax(logits, 1) + models.PROTOTYPE_WEIGHT * near
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, atol=1e-6)
    # by hand, the first row: softmax(2, 0, 0) = (0.7870, 0.1065, 0.1065); the crop points at prototype 2 (cosines
    # 0, 0, 1 at tau 0.05: all of the prototypes' mass on class 2); 0.7 x the head + 0.3 x that
    np.testing.assert_allclose(got[0].numpy(), [0.5509, 0.0745, 0.3745], atol=2e-4)
    # flat logits: the class whose prototype the crop points at wins; a head that is sure of itself still wins
    assert got.argmax(1).tolist() == [0, 2]


def test_a_classifier_decides_with_its_prototypes_and_keeps_them_through_its_heads_file(tmp_path):
    fine, merge = ["a", "b", "c"], {"a": "X", "b": "Y", "c": "Y"}
    protos = torch.nn.functional.normalize(torch.rand(3, 1280, generator=torch.Generator().manual_seed(0)), dim=1)
    cls = Classifier(fine, merge, pretrained=False, prototypes=protos).eval()
    with torch.no_grad():
        cls.head[1].weight.zero_(); cls.head[1].bias.zero_()  # a head with no opinion: the prototypes decide
    pooled = protos[[2, 0]] * 3
    with torch.no_grad():
        f, k, s = cls.decide(cls.head(pooled), pooled)
    assert f.tolist() == [2, 0] and [cls.categories[i] for i in k] == ["Y", "X"]
    # the served step (ClassifierHead, what the ONNX file is exported from) decides the same way
    with torch.no_grad():
        served = models.ClassifierHead(cls)(pooled)
    assert all(torch.equal(a, b) for a, b in zip(served, (f, k, s)))
    with pytest.raises(ValueError, match="pooled vectors"):  # never the head alone by omission
        cls.decide(cls.head(pooled))

    heads = Heads({}, cls.head.state_dict(), fine, merge, {}, torch.zeros(1), None, {}, None, cls.prototypes)
    heads.save(tmp_path / "heads.pt")
    back = Heads.load(tmp_path / "heads.pt").classifier_model(pretrained=False)
    assert torch.equal(back.prototypes, cls.prototypes)
    assert back.decide(back.head(pooled), pooled)[0].tolist() == [2, 0]


def test_a_heads_file_written_before_the_prototypes_loads_as_the_head_alone(tmp_path):
    fine, merge = ["a", "b"], {"a": "X", "b": "Y"}
    cls = Classifier(fine, merge, pretrained=False)
    heads = Heads({}, cls.head.state_dict(), fine, merge, {}, torch.zeros(1), None, {})
    heads.save(tmp_path / "heads.pt")
    raw = torch.load(tmp_path / "heads.pt", weights_only=False)
    del raw["classifier_prototypes"]  # as written before 2026-12-06's prototypes
    torch.save(raw, tmp_path / "old.pt")
    back = Heads.load(tmp_path / "old.pt").classifier_model(pretrained=False)
    assert back.prototypes is None
    logits = torch.tensor([[0.3, 0.1]])
    assert back.decide(logits, torch.ones(1, 1280))[0].tolist() == [0]


def test_prototypes_of_another_shape_are_refused():
    with pytest.raises(ValueError, match="prototypes of shape"):
        Classifier(["a", "b"], {"a": "X", "b": "Y"}, pretrained=False, prototypes=torch.zeros(3, 1280))
