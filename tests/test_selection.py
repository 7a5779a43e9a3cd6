"""Which rows of the ensemble's outputs a search reports (client.search.select_rows) and a catalog image
stores (client.catalog.catalog_rows, and its synthetic views): pure functions, no server."""
from __future__ import annotations

import numpy as np
import pytest

from client import spec
from client.catalog import catalog_rows
from client.result import ImageResult
from client.search import (EXTRA_CANDIDATES, EXTRA_MIN_SCORE, EXTRA_OBJECTS, candidate_rows, catalog_match,
                           select_objects, select_rows, weak_candidates)

K = spec.MAX_OBJECTS
WHOLE = (0.0, 0.0, 640.0, 480.0)
FAR = [(500 + 10 * i, 400, 510 + 10 * i, 410) for i in range(K)]  # tiny, apart from each other and the boxes below


def outputs(dets: list[tuple[tuple, float]]) -> dict[str, np.ndarray]:
    """Ensemble outputs with these (box, score) detections first (sorted by score, as the detector gives them),
    weak far-away filler rows after them, and the whole image last; valid as the crop graph marks it."""
    dets = sorted(dets, key=lambda d: -d[1]) + [(FAR[i], 0.01) for i in range(K - len(dets))]
    boxes = np.array([b for b, _ in dets] + [WHOLE], np.float32)
    scores = np.array([s for _, s in dets] + [spec.WHOLE_IMAGE_SCORE], np.float32)
    valid = scores >= spec.SCORE_THRESHOLD
    valid[K] = not valid[:K].any()
    n = K + 1
    return {spec.BOXES.name: boxes, spec.SCORES.name: scores, spec.VALID.name: valid,
            spec.FINE_CLASS.name: np.array([b"f"] * n, object), spec.CATEGORY.name: np.array([b"c"] * n, object),
            spec.CATEGORY_SCORE.name: np.ones(n, np.float32),
            spec.EMBEDDINGS.name: np.eye(n, spec.EMBED_DIM, dtype=np.float32),
            spec.EMBEDDER_ID.name: np.array([b"v1-test"], object)}


A, A_SHIFTED = (100, 100, 200, 200), (105, 102, 205, 198)  # IoU ~0.86: one object found twice
B, C = (300, 100, 400, 220), (100, 300, 180, 380)


def test_two_overlapping_weak_boxes_give_one_object():
    out = outputs([(A, 0.2), (A_SHIFTED, 0.18)])
    assert select_rows(out) == [0]


def test_a_strong_box_comes_before_a_weak_one_and_its_duplicates_are_dropped():
    out = outputs([(B, 0.9), (A, 0.2), (B, 0.5)])  # row order by score: B 0.9, B 0.5 (duplicate, valid), A 0.2
    assert select_rows(out) == [0, 2]
    objects = select_objects(ImageResult.from_outputs(out))
    assert [o.valid for o in objects] == [True, False] and objects[0].score > objects[1].score


def test_nothing_valid_gives_the_best_weak_rows_and_at_most_extra_of_them():
    out = outputs([(A, 0.25), (B, 0.2), (C, 0.15)])
    assert not out[spec.VALID.name][:K].any()
    assert select_rows(out) == [0, 1, 2][:EXTRA_OBJECTS]
    assert select_rows(out, extra=3) == [0, 1, 2]
    assert select_rows(out, extra=0) == [K]  # the whole image, as before


def test_nothing_above_the_floor_gives_the_whole_image():
    out = outputs([(A, EXTRA_MIN_SCORE / 2)])
    assert select_rows(out) == [K]
    result = ImageResult.from_outputs(out)
    assert [o.whole_image for o in select_objects(result)] == [True] and result.objects == [result.whole]


def test_extra_rows_do_not_count_against_valid_ones():
    out = outputs([(A, 0.9), (B, 0.8), (C, 0.7), (FAR[0], 0.2), (FAR[2], 0.15), (FAR[4], 0.12)])
    assert select_rows(out, extra=2) == [0, 1, 2, 3, 4]
    assert select_rows(out, extra=0) == [0, 1, 2]


def test_the_image_result_and_the_raw_outputs_give_the_same_rows():
    out = outputs([(A, 0.6), (A_SHIFTED, 0.4), (B, 0.2), (C, 0.05)])
    result = ImageResult.from_outputs(out)
    assert select_rows(result) == select_rows(out) == [0, 2]
    assert [o.row for o in result.objects] == [0, 1]  # objects: the valid rows, as before
    assert len(result.rows) == K + 1 and result.whole.whole_image


def test_the_graph_passes_on_more_weak_candidates_than_a_search_reports():
    weak = [(A, 0.28), (B, 0.25), (C, 0.2), (FAR[0], 0.15), (FAR[2], 0.12), (FAR[4], 0.11)]
    out = outputs([((10, 10, 60, 60), 0.9)] + weak)
    assert EXTRA_OBJECTS < EXTRA_CANDIDATES < len(weak)
    assert candidate_rows(out) == list(range(1 + EXTRA_CANDIDATES))
    assert weak_candidates(out) == list(range(1, 1 + EXTRA_CANDIDATES))
    assert select_rows(out) == list(range(1 + EXTRA_OBJECTS))  # without the catalog: the best-scored, as before


def test_the_weak_rows_reported_are_those_most_like_a_catalog_product():
    out = outputs([((10, 10, 60, 60), 0.9), (A, 0.28), (B, 0.25), (C, 0.2), (FAR[0], 0.15)])
    # row 3 (C) is much like a catalog product and row 4 somewhat; rows 1 and 2 score higher but look like nothing there
    match = {1: 0.30, 2: 0.35, 3: 0.80, 4: 0.50}
    assert select_rows(out, match=match, extra=2) == [0, 3, 4]  # 1.00 and 0.65 against 0.58 and 0.60
    assert select_rows(out, match=match, extra=2, match_weight=0.0) == [0, 1, 2]  # no weight: by score
    assert select_rows(out, match=match, extra=0) == [0]
    with pytest.raises(ValueError, match=r"no cosine for the weaker candidate rows \[4\]"):
        select_rows(out, match={1: 0.3, 2: 0.3, 3: 0.3})


def test_catalog_match_reads_each_weak_rows_best_cosine_from_the_store(tmp_path):
    from client.store import QdrantStore
    from client.store.products import CatalogPoint

    out = outputs([((10, 10, 60, 60), 0.9), (A, 0.28), (B, 0.25), (C, 0.2)])
    result = ImageResult.from_outputs(out)  # row i's embedding is the unit vector e_i
    with QdrantStore(path=tmp_path / "store", embedder_id="v1-test") as store:
        store.ensure(spec.EMBED_DIM)
        vec = np.zeros(spec.EMBED_DIM, np.float32)
        vec[3] = 1.0  # the catalog's one product looks exactly like row 3
        store.upsert([CatalogPoint(vec, "p3", "c", "f", "/cat/p3.jpg", "x" * 64, (0, 0, 1, 1))])
        assert catalog_match(result, store, extra=len(weak_candidates(result))) is None  # all reported anyway
        match = catalog_match(result, store, extra=2)
        assert set(match) == {1, 2, 3} and match[3] == pytest.approx(1.0) and abs(match[1]) < 1e-6
        assert [o.row for o in select_objects(result, match)] == [0, 3, 1]


def test_bad_policy_arguments_are_refused():
    with pytest.raises(ValueError, match="extra must be >= 0"):
        select_rows(outputs([]), extra=-1)


def test_a_catalog_image_stores_its_best_valid_detection_then_optionally_the_whole_image():
    out = outputs([(A, 0.9), (B, 0.6)])
    assert catalog_rows(out, whole_image=False) == [0]
    assert catalog_rows(out, whole_image=True) == [0, K]
    nothing = outputs([(A, 0.2)])  # no valid detection: the whole image, once
    assert catalog_rows(nothing, whole_image=False) == catalog_rows(nothing, whole_image=True) == [K]
    assert catalog_rows(ImageResult.from_outputs(out)) == catalog_rows(out)


def test_synthetic_views_turn_the_image_both_ways_filling_with_its_border_darken_and_shrink_it():
    from PIL import Image, ImageDraw

    from client.catalog import CATALOG_VIEWS, VIEW_DARKER, VIEW_SIDE, VIEW_SMALL, synthetic_views

    img = Image.new("RGB", (300, 200), (250, 250, 250))
    ImageDraw.Draw(img).rectangle([100, 50, 200, 150], fill=(200, 30, 30))
    views = dict(synthetic_views(img))
    assert list(views) == list(CATALOG_VIEWS)
    plus, minus, dark = views["turned +15"], views["turned -15"], views["darker"]
    assert plus.size == minus.size and plus.width > 300 and plus.height > 200  # expanded, nothing cut off
    assert plus.getpixel((0, 0)) == minus.getpixel((0, 0)) == (250, 250, 250)  # new corners in the border's colour
    assert plus.getpixel((plus.width // 2, plus.height // 2)) == (200, 30, 30)
    assert np.asarray(plus).tobytes() != np.asarray(minus).tobytes()
    a, d = np.asarray(img, np.float32), np.asarray(dark, np.float32)
    assert dark.size == img.size and abs(d.mean() / a.mean() - VIEW_DARKER) < 0.01
    small = views["small"]  # as a product far from the camera: its long side VIEW_SMALL px, the shape kept
    assert small.size == (VIEW_SMALL, round(VIEW_SMALL * 200 / 300)) and small.getpixel((VIEW_SMALL // 2, small.height // 2)) == (200, 30, 30)
    big = dict(synthetic_views(Image.new("RGB", (4000, 1000), (0, 0, 0))))
    assert max(big["darker"].size) == VIEW_SIDE  # a large catalog image is shrunk first
    assert "small" not in dict(synthetic_views(Image.new("RGB", (640, 40))))  # it would be 4 px high: left out
    assert synthetic_views(Image.new("RGB", (60000, 20))) == []  # a strip would shrink below the server's 8 px
