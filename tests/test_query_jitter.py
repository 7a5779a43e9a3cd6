"""The search side's box jitter (spec.QUERY_BOX_JITTER): the ``query_features`` model and the two object ensembles.
The crop graph's jitter crops are tested in tests/test_crop_graph.py, the served ensembles against each other in
tests/test_integration.py."""
import numpy as np
import pytest
import torch

from client import spec
from export.models import Backbone, QueryFeatures


def test_the_search_and_catalog_ensembles_differ_only_in_the_features_step():
    search, catalog = (next(e for e in spec.ENSEMBLES if e.name == n) for n in (spec.ENSEMBLE, spec.CATALOG_ENSEMBLE))
    assert search.outputs == catalog.outputs and search.inputs == catalog.inputs
    diff = [(a.name, b.name) for a, b in zip(search.steps, catalog.steps) if a != b]
    assert diff == [(spec.QUERY_FEATURES.name, spec.BACKBONE.name)] and len(search.steps) == len(catalog.steps)
    assert spec.JITTER_CROPS in spec.CROP.outputs and spec.QUERY_FEATURES.outputs == spec.BACKBONE.outputs
    assert 0 < spec.QUERY_BOX_JITTER < 0.25


def test_query_features_are_the_mean_of_the_three_crops_and_exact_when_they_are_one():
    torch.manual_seed(0)
    backbone = Backbone(pretrained=False).eval()
    net = QueryFeatures(backbone).eval()
    crops = torch.randint(0, 256, (3, 3, spec.CROP_SIZE, spec.CROP_SIZE), dtype=torch.uint8)
    shrunk = torch.randint(0, 256, (3, 3, spec.CROP_SIZE, spec.CROP_SIZE), dtype=torch.uint8)
    grown = torch.randint(0, 256, (3, 3, spec.CROP_SIZE, spec.CROP_SIZE), dtype=torch.uint8)
    shrunk[2], grown[2] = crops[2], crops[2]  # a row whose jitter crops are its own crop (the whole image)
    with torch.no_grad():
        got = net(crops, torch.cat([shrunk, grown]))
        want = (backbone.pooled(crops) + backbone.pooled(shrunk) + backbone.pooled(grown)) / 3
        assert got.shape == (3, spec.FEATURE_DIM)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(got[2], backbone.pooled(torch.cat([crops, shrunk, grown]))[2])  # a + 0 / 3: bit for bit


def test_the_served_query_features_match_the_features_model(built):
    from export.pipeline import Pipeline

    pipeline = Pipeline(built)
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (4, 3, spec.CROP_SIZE, spec.CROP_SIZE), dtype=np.uint8)
    jitter = rng.integers(0, 256, (8, 3, spec.CROP_SIZE, spec.CROP_SIZE), dtype=np.uint8)
    jitter[3], jitter[7] = crops[3], crops[3]
    got = pipeline.step(spec.QUERY_FEATURES.name, {spec.CROPS.name: crops, spec.JITTER_CROPS.name: jitter})[spec.FEATURES.name]
    plain = lambda x: pipeline.step(spec.BACKBONE.name, {spec.CROPS.name: x})[spec.FEATURES.name]  # noqa: E731
    np.testing.assert_allclose(got, (plain(crops) + plain(jitter[:4]) + plain(jitter[4:])) / 3, atol=1e-4)
    np.testing.assert_array_equal(got[3], plain(crops)[3])  # the plain features step on the same N rows, bit for bit
