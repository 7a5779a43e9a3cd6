"""The embedded store past the size where Qdrant switches from scanning to the HNSW graph, with the settings
bench.store_scale chose (search ef, memory-mapped vectors / ids / keyword indexes), and the benchmark itself
end to end on a small size. Real qdrant-edge shards on disk; answers checked against exact numpy search."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.store_scale import CATEGORIES, K, catalog_points, exact, make_catalog, make_queries, parse_path
from client.store import QdrantStore, Where

ROOT = Path(__file__).resolve().parent.parent
# 256-d vectors: above Qdrant's full-scan threshold (10,000 KB of vectors) a search walks the HNSW graph
N = 12_000


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch):
    for var in ("QDRANT_URL", "QDRANT_PATH", "QDRANT_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def catalog():
    return make_catalog(N, seed=3)


@pytest.fixture(scope="module")
def built(catalog, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale") / "q"
    with QdrantStore(path=folder) as store:
        store.ensure(256)
        for s in range(0, N, 2000):
            store.upsert(catalog_points(catalog, s, min(N, s + 2000)))
        store.optimize()
    return folder


def _rows(catalog, paths):
    starts = np.searchsorted(catalog.product, np.arange(int(catalog.product[-1]) + 1))
    return {int(starts[p]) + v for _, p, v in map(parse_path, paths)}


def test_graph_search_keeps_recall_against_exact(catalog, built):
    assert list(built.glob("products_v*/segments/*/vector_index")), "optimize() built no HNSW index"
    queries, qcat = make_queries(catalog, 60, seed=5)
    truth = exact(catalog, queries, qcat)
    with QdrantStore(path=built) as store:
        plain, filtered, grouped = [], [], []
        for q, (v, c) in enumerate(zip(queries, qcat)):
            hits = store.engine.query(store.collection, v, limit=K)
            plain.append(len(_rows(catalog, [h.payload["path"] for h in hits]) & set(truth["plain"][q].tolist())) / K)
            hits = store.engine.query(store.collection, v, limit=K, where=Where(must={"category": [CATEGORIES[c]]}))
            assert {h.payload["category"] for h in hits} == {CATEGORIES[c]}
            filtered.append(len(_rows(catalog, [h.payload["path"] for h in hits]) & set(truth["filtered"][q].tolist())) / K)
            found = store.search(v, category=CATEGORIES[c], top_k=K)
            products = [int(h.product_id[1:]) for h in found]
            assert len(products) == len(set(products)) == K  # one hit per product
            assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
            grouped.append(len(set(products) & set(truth["grouped"][q])) / K)
    assert np.mean(plain) >= 0.99 and np.mean(filtered) >= 0.99 and np.mean(grouped) >= 0.99, \
        (np.mean(plain), np.mean(filtered), np.mean(grouped))


def test_a_fresh_process_reopens_the_mapped_store_with_every_index(catalog, built):
    """Vectors, point ids and keyword indexes are memory-mapped, not loaded: a new process must still see
    every point and filter on every indexed field."""
    pid, path = parse_path(catalog_points(catalog, 7, 8)[0].path)[1], catalog_points(catalog, 7, 8)[0].path
    code = f"""
import json, sys
from client.store import QdrantStore, Where
with QdrantStore(path={str(built)!r}) as s:
    print(json.dumps({{"count": s.count(), "bags": s.count("bags"),
                      "product": len(s.get_product("p{pid:07d}")),
                      "path": s.engine.count(s.collection, Where(must={{"path": [{path!r}]}}))}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"count": N, "bags": int((catalog.category == 0).sum()),
                   "product": int((catalog.product == pid).sum()), "path": 1}


def test_the_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "bench.store_scale", "--sizes", "2000", "--queries", "20",
                          "--engines", "edge", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert (row["engine"], row["size"], row["count"]) == ("edge", 2000, 2000)
    for kind in ("plain", "filtered", "grouped"):  # 2,000 points are scanned exactly: the answers are exact
        assert row[kind]["recall"] == 1.0 and row[kind]["wrong"] == 0 and row[kind]["n"] == 20
    assert (out / "latency.png").stat().st_size > 10_000
    assert "| edge | 2,000 |" in (out / "report.md").read_text()


def test_benchmark_data_has_the_shape_it_claims():
    cat = make_catalog(30_000, seed=1)
    assert np.allclose(np.linalg.norm(cat.vectors, axis=1), 1, atol=1e-5)
    views = np.bincount(cat.product)
    assert views.min() >= 1 and views.max() <= 3
    shares = np.bincount(cat.category, minlength=len(CATEGORIES)) / len(cat)
    assert abs(shares[0] - 0.35) < 0.02 and shares.min() > 0.01
    assert (cat.category[1:] == cat.category[:-1])[cat.product[1:] == cat.product[:-1]].all()  # a product has one category
    queries, qcat = make_queries(cat, 50)
    sims = queries @ cat.vectors.T
    assert not np.isclose(sims.max(axis=1), 1.0, atol=1e-4).any()  # held out: never a stored vector
    assert (sims.max(axis=1) > 0.75).all()
