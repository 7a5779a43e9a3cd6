"""Against a real tritonserver (bundled binary) and the real embedded Qdrant engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client import category as narrowing
from client import imaging, rerank, spec
from client.catalog import CATALOG_VIEWS, CATALOG_WHOLE_IMAGE, describe, index_folder
from client.search import EXTRA_OBJECTS, search_image, select_objects
from client.store import QdrantStore
from client.triton import BadImage, ModelNotReady, RetrievalClient, ServerUnavailable
from deploy.check_demo import box_iou
from deploy.local import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def indexed(client, demo, tmp_path_factory):
    path = tmp_path_factory.mktemp("qdrant")
    with QdrantStore(path=path) as store:
        report = index_folder(demo / "catalog", client, store, category_from_folders=True)
    return path, report


def test_catalog_is_indexed_once_per_image(indexed, demo):
    path, report = indexed
    n = len(list((demo / "catalog").rglob("*.jpg")))
    assert report.indexed == n and report.skipped == []
    views = len(CATALOG_VIEWS)
    with QdrantStore(path=path) as store:  # client.catalog.points_for: best detection (+ the whole image), synthetic views
        assert n * (1 + views) <= store.count() <= n * (1 + CATALOG_WHOLE_IMAGE + views)


def test_each_catalog_image_stores_its_synthetic_views_from_the_whole_image_ensemble(client, indexed, demo):
    image = sorted((demo / "catalog").rglob("*.jpg"))[0]
    data = image.read_bytes()
    with QdrantStore(path=indexed[0]) as store:
        stored = store.image_points(str(image))
    synthetic = [p for p in stored if p.get("synthetic_view")]
    assert [p["synthetic_view"] for p in sorted(synthetic, key=lambda p: p["object"])] == list(CATALOG_VIEWS)
    assert len(stored) == stored[0]["image_points"] and [p["object"] for p in sorted(stored, key=lambda p: p["object"])] == list(range(len(stored)))
    assert all(p["whole_image"] and p["category"] == stored[0]["category"] for p in synthetic)
    result = client.infer(data, image.name)
    # the detector-free ensemble gives the retrieval ensemble's whole-image row for the same bytes
    assert np.allclose(client.whole_image_embedding(data), result.whole.embedding, atol=1e-4)
    described = describe(client, data, image.name)
    whole = result.whole.embedding
    cos = [float(v @ whole) for _, v in described.views]
    assert [label for label, _ in described.views] == list(CATALOG_VIEWS)
    assert all(0.5 < c < 0.9999 for c in cos), cos  # the same product, seen otherwise
    assert float(described.views[0][1] @ described.views[1][1]) < 0.9999  # turned one way and the other


def test_each_product_in_generated_scenes_is_in_its_objects_top5(client, indexed, demo):
    truth = json.loads((demo / "queries" / "truth.json").read_text())
    found, total, lines = 0, 0, []
    with QdrantStore(path=indexed[0]) as store:
        for name, t in truth.items():
            objects = search_image((demo / "queries" / name).read_bytes(), client, store, top_k=5)
            for obj in t["objects"]:
                total += 1
                match = max(objects, key=lambda o: box_iou(o.box, obj["box"]))
                ids = [r["product_id"] for r in match.results]
                ok = box_iou(match.box, obj["box"]) >= 0.5 and obj["product_id"] in ids
                found += ok
                lines.append(f"{name} {obj['product_id']}: {'ok' if ok else 'MISSED'} iou={box_iou(match.box, obj['box']):.2f} top5={ids}")
    print("\n".join(lines))
    assert total >= 15
    # a floor for this small generated set, not a quality bar (export.evaluate measures quality); quick profile: 16/18
    assert found / total >= 0.8, "\n".join(lines)


def test_searches_narrow_to_a_category_only_where_the_classifier_and_the_catalog_agree(client, indexed, demo, tmp_path):
    """client/category.py on a real server and store. A catalog with the classifier's categories: an object's search is
    narrowed exactly when narrow_to says so from the object and its nearest products in the whole catalog, and then
    lists only products of that category. A catalog with its own category names (folders): never narrowed."""
    queries = sorted((demo / "queries").glob("*.jpg"))
    with QdrantStore(path=indexed[0]) as store:
        assert all(o.searched_in is None for q in queries for o in search_image(q.read_bytes(), client, store, top_k=3))
    narrowed, whole = [], []
    with QdrantStore(path=tmp_path / "q") as store:
        index_folder(demo / "catalog", client, store)  # each product stored under the classifier's category
        for q in queries:
            data = q.read_bytes()
            for obj, found in zip(select_objects(client.infer(data)), search_image(data, client, store, top_k=5)):
                neighbours = [(h.score, h.category) for h in store.search(obj.embedding, top_k=narrowing.NEIGHBOURS)]
                assert found.searched_in == narrowing.narrow_to(obj.category, obj.category_score, neighbours)
                if found.searched_in is None:
                    whole.append(found)
                    continue
                narrowed.append(found)
                assert {store.get_product(r["product_id"])[0]["category"] for r in found.results} == {found.searched_in}
    print(f"{len(narrowed)} objects searched in their category, {len(whole)} in the whole catalog")
    assert narrowed, "the classifier and the catalog agree on some demo object"


def test_reranking_reorders_the_cosine_candidates_and_can_be_turned_off(client, indexed, demo):
    """search_image re-ranks the cosine ranking's best rerank.CANDIDATES with the keypoints client.index stored;
    geometric=False (client.search --no-rerank) is the cosine ranking itself."""
    truth = json.loads((demo / "queries" / "truth.json").read_text())
    true_inliers, chance, first = [], [], {"cosine": 0, "re-ranked": 0}
    with QdrantStore(path=indexed[0]) as store:
        for q in sorted((demo / "queries").glob("*.jpg")):
            data = q.read_bytes()
            plain = search_image(data, client, store, top_k=rerank.CANDIDATES, geometric=False)
            geo = search_image(data, client, store, top_k=rerank.CANDIDATES)
            assert [o.box for o in plain] == [o.box for o in geo]
            for p, g in zip(plain, geo):
                assert all(set(r) == {"product_id", "path", "score"} for r in p.results)
                scores = [r["score"] for r in p.results]
                assert scores == sorted(scores, reverse=True)
                # the same candidates, each with its own cosine, in another order
                assert {r["product_id"]: r["score"] for r in p.results} == pytest.approx({r["product_id"]: r["cosine"] for r in g.results}, abs=1e-4)
                for r in g.results:
                    assert r["score"] == pytest.approx(rerank.fused(r["cosine"], r["inliers"]), abs=2e-4)
                assert [r["score"] for r in g.results] == sorted((r["score"] for r in g.results), reverse=True)
                t = max(truth[q.name]["objects"], key=lambda t: box_iou(t["box"], g.box))
                inliers = {r["product_id"]: r["inliers"] for r in g.results}
                if not g.valid or box_iou(t["box"], g.box) < 0.5 or t["product_id"] not in inliers:
                    continue
                true_inliers.append(inliers.pop(t["product_id"]))
                chance.append(max(inliers.values()))  # the best an unrelated candidate of this very box gets
                first["cosine"] += p.results[0]["product_id"] == t["product_id"]
                first["re-ranked"] += g.results[0]["product_id"] == t["product_id"]
    # the demo's products are the catalog's own pictures pasted on photos: a textured product's layout agrees
    # with its own catalog image more than with any unrelated candidate's (plain ones, a can or a disc, have
    # no keypoints to agree on), and re-ranking puts no fewer products first than the cosine ranking
    above = sum(n > c for n, c in zip(true_inliers, chance))
    summary = f"{above} of {len(true_inliers)} true products above every unrelated candidate: {list(zip(true_inliers, chance))}; first {first}"
    print(summary)
    assert len(true_inliers) >= sum(len(t["objects"]) for t in truth.values()) / 2, summary
    assert above > 2 * len(true_inliers) / 3, summary
    assert first["re-ranked"] >= first["cosine"], summary


def test_ensemble_equals_running_the_onnx_files_directly(client, built, demo):
    from export.pipeline import Pipeline

    data = (demo / "queries" / "scene_1.jpg").read_bytes()
    pipeline = Pipeline(built)
    raw, ref = client.outputs(data, "scene_1.jpg"), pipeline.outputs(data)
    assert set(raw) == set(ref) == {t.name for t in spec.ENSEMBLE_OUTPUTS}
    np.testing.assert_allclose(raw[spec.BOXES.name], ref[spec.BOXES.name], atol=1e-3)  # every row
    np.testing.assert_array_equal(raw[spec.VALID.name], ref[spec.VALID.name])
    np.testing.assert_allclose(raw[spec.EMBEDDINGS.name], ref[spec.EMBEDDINGS.name], atol=1e-5)
    np.testing.assert_allclose(raw[spec.CATEGORY_SCORE.name], ref[spec.CATEGORY_SCORE.name], atol=1e-5)
    assert [c.decode() for c in raw[spec.CATEGORY.name]] == [_text(c) for c in ref[spec.CATEGORY.name]]
    valid = ref[spec.VALID.name]
    assert 2 <= len(valid) <= spec.NUM_ROWS and valid[:-1].any() and not valid[-1]  # detections, so no whole-image row
    got = client.infer(data, "scene_1.jpg")
    want = pipeline.infer(data)
    assert [o.whole_image for o in got.objects] == [o.whole_image for o in want.objects]
    np.testing.assert_allclose([o.box for o in got.objects], [o.box for o in want.objects], atol=1e-3)
    np.testing.assert_allclose([o.score for o in got.objects], [o.score for o in want.objects], atol=1e-5)
    np.testing.assert_allclose([o.embedding for o in got.objects], [o.embedding for o in want.objects], atol=1e-5)
    np.testing.assert_allclose(got.image_embedding, want.image_embedding, atol=1e-5)
    np.testing.assert_allclose([o.category_score for o in got.objects], [o.category_score for o in want.objects], atol=1e-5)
    assert [o.category for o in got.objects] == [o.category for o in want.objects]
    assert [o.fine_class for o in got.objects] == [o.fine_class for o in want.objects]
    assert got.embedder_id == want.embedder_id == client.embedder_id()
    assert got.objects and not any(o.whole_image for o in got.objects)


def test_the_catalog_ensemble_is_the_search_ensemble_without_box_jitter(client, built, demo):
    """client.catalog indexes through retrieval_catalog (features of each row's own crop); searches go through
    retrieval (each detection row's features averaged over its jitter crops). The same boxes, rows and
    whole-image row (bit for bit, so dedup is unchanged); the detection rows' embeddings differ."""
    from client.result import ImageResult
    from export.pipeline import Pipeline

    data = (demo / "queries" / "scene_1.jpg").read_bytes()
    pipeline = Pipeline(built)
    search, catalog = client.infer(data, "scene_1.jpg"), client.infer_catalog(data, "scene_1.jpg")
    want = ImageResult.from_outputs(pipeline.outputs(data, spec.CATALOG_ENSEMBLE))
    np.testing.assert_allclose([o.embedding for o in catalog.objects], [o.embedding for o in want.objects], atol=1e-5)
    np.testing.assert_allclose([o.box for o in search.objects], [o.box for o in catalog.objects], atol=1e-3)
    np.testing.assert_array_equal(search.image_embedding, catalog.image_embedding)
    moved = [float(np.dot(a.embedding, b.embedding)) for a, b in zip(search.objects, catalog.objects) if not a.whole_image]
    assert moved and all(0.8 < m < 1 - 1e-6 for m in moved), moved  # near, not equal: the jitter changes each detection row
    described = describe(client, data, "scene_1.jpg", with_views=False)
    np.testing.assert_allclose([o.embedding for o in described.result.objects], [o.embedding for o in catalog.objects], atol=1e-6)


def test_a_server_without_the_catalog_ensemble_says_how_to_fix_it(triton, demo):
    with RetrievalClient(triton.grpc_url, retry_seconds=0) as c:
        c.catalog_model = "retrieval_catalog_missing"  # as on a server whose repository predates the ensemble
        with pytest.raises(ModelNotReady, match="predates it; run `python -m export.build`"):
            c.infer_catalog((demo / "queries" / "scene_1.jpg").read_bytes(), "scene_1.jpg")


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def test_blank_image_gives_one_whole_image_object(client):
    result = client.infer(imaging.encode_jpeg(Image.new("RGB", (500, 300), (128, 128, 128))), "blank.jpg")
    assert len(result.objects) == 1 and result.objects[0].whole_image
    assert result.objects[0].box == (0.0, 0.0, 500.0, 300.0)
    assert np.isclose(np.linalg.norm(result.image_embedding), 1.0, atol=1e-4)


def test_undecodable_bytes_reach_the_caller_as_invalid_argument(client):
    with pytest.raises(BadImage, match=r"broken\.jpg: .*preprocess: cannot decode image") as err:
        client.infer(b"\xff\xd8\xff garbage", "broken.jpg")
    assert "INVALID_ARG" in str(err.value.__cause__.status())


def test_bad_files_are_skipped_and_reported_the_rest_is_indexed_with_or_without_synthetic_views(client, demo, tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    good = sorted((demo / "catalog").rglob("*.jpg"))[:3]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    with QdrantStore(path=tmp_path / "q") as store:
        report = index_folder(folder, client, store)
        assert report.indexed == 3 and 3 * (1 + len(CATALOG_VIEWS)) <= store.count() <= 3 * (1 + CATALOG_WHOLE_IMAGE + len(CATALOG_VIEWS))
        reasons = dict(report.skipped)
        assert set(reasons) == {str(folder / "corrupt.jpg"), str(folder / "empty.png")}
        assert "cannot decode" in reasons[str(folder / "corrupt.jpg")] and "empty" in reasons[str(folder / "empty.png")]
        # without synthetic views: each image is sent again and keeps only its own points; then it is unchanged
        plain = index_folder(folder, client, store, synthetic=False)
        assert plain.indexed == 3 and plain.unchanged == 0 and 3 <= store.count() <= 3 * (1 + CATALOG_WHOLE_IMAGE)
        assert not any(p.get("synthetic_view") for g in good for p in store.image_points(str(folder / g.name)))
        assert index_folder(folder, client, store, synthetic=False).unchanged == 3
        assert index_folder(folder, client, store).unchanged == 0  # and with them again: sent again
        assert 3 * (1 + len(CATALOG_VIEWS)) <= store.count()


def test_server_down_is_a_clear_error():
    with pytest.raises(ServerUnavailable, match="cannot reach Triton at 127.0.0.1:"):
        RetrievalClient(f"127.0.0.1:{free_port()}", timeout=5)


def test_search_cli_prints_the_json_contract_and_a_gallery(triton, indexed, demo, tmp_path):
    env = dict(os.environ, TRITON_URL=triton.grpc_url, QDRANT_PATH=str(indexed[0]))
    page = tmp_path / "g.html"
    out = subprocess.run([sys.executable, "-m", "client.search", str(demo / "queries" / "scene_1.jpg"), "--json", "--top-k", "3",
                          "--html", str(page)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    objects = doc["objects"]  # the three products' valid boxes first, then at most EXTRA_OBJECTS weaker ones
    assert 3 <= len(objects) <= 3 + EXTRA_OBJECTS and [o["valid"] for o in objects[:3]] == [True] * 3
    assert [o["score"] for o in objects] == sorted((o["score"] for o in objects), reverse=True)
    for obj in doc["objects"]:
        assert len(obj["box"]) == 4 and isinstance(obj["score"], float) and obj["category"]
        assert 1 <= len(obj["results"]) <= 3
        # re-ranked (client/rerank.py): the fused score first, with the cosine and the inliers behind it; the demo
        # catalog was indexed with its keypoints, so every result has an inlier count
        assert set(obj["results"][0]) == {"product_id", "path", "score", "cosine", "inliers"}
        assert [r["score"] for r in obj["results"]] == sorted((r["score"] for r in obj["results"]), reverse=True)
        for r in obj["results"]:
            assert isinstance(r["inliers"], int) and r["inliers"] >= 0
            assert r["score"] == pytest.approx(rerank.fused(r["cosine"], r["inliers"]), abs=2e-4)
    gallery = page.read_text()
    n_results = sum(len(o["results"]) for o in doc["objects"])
    assert gallery.count("data:image/jpeg;base64,") == 1 + n_results  # the query plus one thumbnail per result
    assert all(r["product_id"] in gallery for o in doc["objects"] for r in o["results"])


def test_index_cli_reports_skips_with_exit_status_3(triton, demo, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    src = sorted((demo / "catalog").rglob("*.jpg"))[0]
    (folder / src.name).write_bytes(src.read_bytes())
    (folder / "bad.jpg").write_bytes(b"nope")
    env = dict(os.environ, TRITON_URL=triton.grpc_url, QDRANT_PATH=str(tmp_path / "q"))
    out = subprocess.run([sys.executable, "-m", "client.index", str(folder)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 3, out.stderr
    assert f"skipped {folder / 'bad.jpg'}: preprocess: cannot decode" in out.stderr
    assert "indexed 1 of 2 images" in out.stdout
