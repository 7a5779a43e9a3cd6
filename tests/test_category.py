"""When a search is narrowed to the object's category (client/category.py) and export.evaluate's vectorised copy of
that rule. On a real server and store: tests/test_integration.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from client import category as narrowing
from client import spec
from export.eval_ranks import CATEGORY, CATEGORY_SCORE, EMBEDDINGS, GROUP, GT, Described, agreement, query_rows


def test_neighbour_share_weights_the_best_neighbours_by_similarity():
    assert narrowing.neighbour_share("a", []) == 0.0
    assert narrowing.neighbour_share("a", [(0.9, "a")]) == 1.0
    # two equally close neighbours, one of each: half
    assert narrowing.neighbour_share("a", [(0.8, "b"), (0.8, "a")]) == pytest.approx(0.5)
    # one TEMPERATURE below the best counts e^-1 as much, whatever the order given
    share = narrowing.neighbour_share("a", [(0.8 - narrowing.TEMPERATURE, "b"), (0.8, "a")])
    assert share == pytest.approx(1 / (1 + math.exp(-1)))
    # only the best NEIGHBOURS vote: a sixth, closer-to-nothing neighbour of the category changes nothing
    five = [(0.9 - 0.01 * i, "b") for i in range(narrowing.NEIGHBOURS)]
    assert narrowing.neighbour_share("a", five + [(0.5, "a")]) == 0.0


def test_narrowing_needs_the_classifier_and_the_neighbours_to_agree():
    agree = [(0.9, "shoes"), (0.88, "shoes"), (0.85, "shoes")]
    against = [(0.9, "bags"), (0.88, "bags"), (0.85, "shoes")]
    assert narrowing.narrow_to("shoes", 0.9, agree) == "shoes"
    assert narrowing.narrow_to("shoes", 0.99, against) is None  # a sure classifier alone does not narrow
    assert narrowing.narrow_to("shoes", 0.5, agree) is None  # nor do the neighbours alone: (0.5 + 1) / 2 < 0.8
    # a catalog indexed with its own names (--category-from-folders) never holds the classifier's
    assert narrowing.narrow_to("shoes", 1.0, [(0.9, "folder_a"), (0.8, "folder_b")]) is None
    assert narrowing.agreement(spec.CATEGORY_FILTER_MIN_SCORE, spec.CATEGORY_FILTER_MIN_SCORE) == pytest.approx(spec.CATEGORY_FILTER_MIN_SCORE)


def _described(seed: int = 0, n_items: int = 40, n_queries: int = 60, dim: int = 16) -> Described:
    rng = np.random.default_rng(seed)
    cats = np.array(["a", "b", "c"])
    item_cat = cats[rng.integers(0, 3, n_items)]
    views = rng.integers(1, 3, n_items)  # one or two points per catalog image, as client.catalog stores them
    group = np.repeat(np.arange(n_items), views)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    gallery = {EMBEDDINGS: unit(rng.normal(size=(len(group), dim))), GROUP: group, CATEGORY: item_cat[group]}
    target = rng.integers(0, n_items, n_queries)
    q = unit(gallery[EMBEDDINGS][np.searchsorted(group, target)] + 0.8 * rng.normal(size=(n_queries, dim)))
    gt = {EMBEDDINGS: q, CATEGORY: cats[rng.integers(0, 3, n_queries)], CATEGORY_SCORE: rng.uniform(0.3, 1.0, n_queries)}
    return Described(gallery, gt, None, target, {})


def test_the_evaluation_narrows_exactly_the_searches_the_client_narrows():
    d = _described()
    got = agreement(d, GT)
    g, groups = d.gallery, d.gallery[GROUP]
    for i, qv in enumerate(d.gt[EMBEDDINGS]):
        sims = g[EMBEDDINGS] @ qv
        best = {int(k): float(sims[groups == k].max()) for k in np.unique(groups)}  # the store's grouped search
        neighbours = [(s, d.item_category()[k]) for k, s in best.items()]
        share = narrowing.neighbour_share(d.gt[CATEGORY][i], neighbours)
        assert got[i] == pytest.approx(narrowing.agreement(d.gt[CATEGORY_SCORE][i], share), abs=1e-6)
    _, _, _, allowed = query_rows(d, GT, spec.CATEGORY_FILTER_MIN_SCORE)
    narrowed = got >= spec.CATEGORY_FILTER_MIN_SCORE
    assert 0 < narrowed.sum() < len(narrowed), "the random set has both kinds"
    assert allowed[~narrowed].all()
    assert (allowed[narrowed] == (g[CATEGORY][None, :] == d.gt[CATEGORY][narrowed][:, None])).all()
