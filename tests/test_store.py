"""The store against every engine it supports: the embedded qdrant-edge folder and a Qdrant server
(qdrant-client's in-process ``:memory:`` mode implements the server API). The same assertions run on
both, and both must give the same answers (a congruence test, as qdrant-client's tests/congruence_tests)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from client import spec
from client.store import CatalogPoint, DedupStore, QdrantStore, StoreError, Where, dedup_point_id, open_engine, point_id
from client.store.edge import EdgeEngine
from client.store.server import ServerEngine

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ["edge", "server"]
# qdrant-client's in-process mode ignores payload indexes; an unreachable server has no version to check
pytestmark = [pytest.mark.filterwarnings("ignore:Payload indexes have no effect"),
              pytest.mark.filterwarnings("ignore:Failed to obtain server version")]


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch):
    for var in ("QDRANT_URL", "QDRANT_PATH", "QDRANT_API_KEY", "DEDUP_PATH"):
        monkeypatch.delenv(var, raising=False)


def make_engine(kind: str, folder: Path):
    return open_engine(path=folder) if kind == "edge" else ServerEngine(QdrantClient(location=":memory:"))


def _vec(seed, dim=8):
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _point(i, category="watches", path=None, sha=None, vec=None, product=None):
    return CatalogPoint(vector=_vec(i) if vec is None else vec, product_id=product or f"p{i}", category=category,
                        fine_category=category + "_x", path=path or f"/cat/p{i}.jpg", sha256=sha or f"sha{i}", box=(0, 0, 10, 10))


@pytest.fixture(params=ENGINES)
def kind(request):
    return request.param


@pytest.fixture
def store(kind, tmp_path):
    with QdrantStore(engine=make_engine(kind, tmp_path / "q")) as s:
        s.ensure(8)
        yield s


# products ---------------------------------------------------------------------------------------------

def test_reindexing_never_duplicates(store):
    pts = [_point(i) for i in range(10)]
    store.upsert(pts)
    store.upsert(pts)
    assert store.count() == 10
    assert point_id("p1", "p1.jpg", 0) == pts[1].id


def test_changed_file_replaces_its_old_point(store):
    store.upsert([_point(1, sha="old")])
    store.upsert([_point(1, sha="new")])
    assert store.count() == 1
    assert store.search(_vec(1), top_k=1)[0].payload["sha256"] == "new"


def test_changed_file_with_fewer_objects_loses_the_others(store):
    store.upsert([CatalogPoint(**{**_point(1, sha="old").__dict__, "object_index": k}) for k in range(3)])
    assert store.count() == 3
    store.upsert([_point(1, sha="new")])
    assert store.count() == 1


def test_byte_identical_images_of_two_products_stay_two_points(store):
    twin = _vec(7)
    a = _point(1, path="/cat/a/x.jpg", sha="same", vec=twin, product="a")
    b = _point(2, path="/cat/b/y.jpg", sha="same", vec=twin, product="b")
    store.upsert([a, b])
    store.upsert([a, b])
    assert a.id != b.id and store.count() == 2
    assert {h.product_id for h in store.search(twin, top_k=5)} == {"a", "b"}


def test_point_ids_are_per_product_and_view_not_per_content():
    p = _point(1, sha="s")
    assert p.id == point_id("p1", "p1.jpg", 0) == _point(1, sha="other").id
    assert CatalogPoint(**{**p.__dict__, "view": "shop/p1.jpg"}).id == point_id("p1", "shop/p1.jpg", 0) != p.id
    assert point_id("p1", "p1.jpg", 1) != p.id and point_id("p2", "p1.jpg", 0) != p.id


def test_category_filter_and_one_hit_per_product(store):
    store.upsert([_point(i, category="watches" if i < 5 else "drinks") for i in range(10)])
    # a second image of product p0, nearly identical vector
    store.upsert([_point(100, path="/cat/p0_b.jpg", sha="b", vec=_vec(0) + 0.01, product="p0")])
    hits = store.search(_vec(0), top_k=3)
    assert [h.product_id for h in hits][0] == "p0" and len({h.product_id for h in hits}) == 3
    assert all(h.category == "drinks" for h in store.search(_vec(0), category="drinks", top_k=5))
    assert store.count("drinks") == 5


def test_one_hit_per_product_when_every_product_has_many_views(store):
    # 3 products x 20 near-identical views: the 12 nearest points belong to at most 3 products
    store.upsert([_point(1000 + 20 * p + v, path=f"/cat/p{p}_{v}.jpg", vec=_vec(p) + 0.001 * v, product=f"p{p}")
                  for p in range(3) for v in range(20)])
    hits = store.search(_vec(0), top_k=5)
    assert [h.product_id for h in hits][0] == "p0" and sorted(h.product_id for h in hits) == ["p0", "p1", "p2"]


def test_get_and_delete_one_product(store):
    store.upsert([_point(1, path="/cat/b.jpg", product="shoe"), _point(2, path="/cat/a.jpg", product="shoe"),
                  _point(3, category="bags", product="bag")])
    assert [p["path"] for p in store.get_product("shoe")] == ["/cat/a.jpg", "/cat/b.jpg"]
    assert store.get_product("nope") == [] and store.delete_product("nope") == 0
    assert store.categories() == {"bags": 1, "watches": 1}
    assert store.delete_product("shoe") == 2
    assert store.get_product("shoe") == [] and [p["product_id"] for p in store.get_product("bag")] == ["bag"]
    assert store.count() == 1


def test_collection_is_versioned_behind_an_alias(store):
    assert store.collection == spec.collection_name()
    assert store.aliases() == {"products": spec.collection_name()}


def test_recreate_empties_the_collection_and_keeps_the_alias(store):
    store.upsert([_point(i) for i in range(3)])
    store.ensure(8, recreate=True)
    assert store.count() == 0 and store.aliases() == {"products": spec.collection_name()}


def test_dimension_mismatch_is_refused(store):
    with pytest.raises(StoreError, match="8-d vectors but the model gives 16-d"):
        store.ensure(16)


# collections per embedder, the alias, the embedder guard ---------------------------------------------

def _indexed(engine, embedder, points, dim=8, live=True):
    store = QdrantStore(engine=engine, embedder_id=embedder)
    store.ensure(dim, live=live)
    store.upsert(points)
    return store


def test_each_embedder_writes_its_own_collection_recording_its_id(kind, tmp_path):
    engine = make_engine(kind, tmp_path / "q")
    a = _indexed(engine, "v1-aaaa", [_point(i) for i in range(3)])
    assert a.collection == "products_v1-aaaa" and engine.metadata(a.collection) == {"embedder_id": "v1-aaaa"}
    assert a.live() == "products_v1-aaaa"  # the first catalog goes live at once
    b = _indexed(engine, "v1-bbbb", [_point(i, vec=-_vec(i)) for i in range(2)], live=False)
    assert b.live() == "products_v1-aaaa" and b.count() == 2 and a.count() == 3  # the alias still serves a
    assert engine.collections() == ["products_v1-aaaa", "products_v1-bbbb"]
    reader = QdrantStore(engine=engine)  # a search reads through the alias, at every call
    assert reader.collection == "products" and reader.count() == 3
    engine.set_alias("products", b.collection)
    assert reader.count() == 2 and reader.search(-_vec(1), top_k=1)[0].product_id == "p1"
    reader.optimize()  # through the alias too: the collection it points at is optimised, nothing else written
    assert engine.collections() == ["products_v1-aaaa", "products_v1-bbbb"] and reader.count() == 2
    engine.set_metadata(b.collection, {"previous": a.collection})
    assert engine.metadata("products") == {"embedder_id": "v1-bbbb", "previous": "products_v1-aaaa"}
    engine.close()


def test_indexing_for_another_embedder_than_the_live_one_is_refused_before_writing(kind, tmp_path):
    engine = make_engine(kind, tmp_path / "q")
    _indexed(engine, "v1-aaaa", [_point(i) for i in range(3)])
    store = QdrantStore(engine=engine, embedder_id="v1-bbbb")
    with pytest.raises(StoreError, match=r"built with embedder v1-aaaa \(8-d vectors\) but the server runs embedder "
                                         r"v1-bbbb: re-index with `python -m client.rollout index DIR`"):
        store.ensure(8)
    assert engine.collections() == ["products_v1-aaaa"]  # nothing created
    engine.close()


def test_search_refuses_a_catalog_of_another_embedder_or_vector_size(kind, tmp_path):
    engine = make_engine(kind, tmp_path / "q")
    _indexed(engine, "v1-aaaa", [_point(i) for i in range(3)])
    reader = QdrantStore(engine=engine)
    reader.check_embedder("v1-aaaa", 8)
    with pytest.raises(StoreError, match=r"built with embedder v1-aaaa \(8-d vectors\) but the server runs embedder "
                                         r"v1-bbbb \(8-d\): re-index with `python -m client.rollout index DIR`, then"):
        reader.check_embedder("v1-bbbb", 8)
    with pytest.raises(StoreError, match=r"\(8-d vectors\) but the server runs embedder v1-aaaa \(16-d\)"):
        reader.check_embedder("v1-aaaa", 16)
    _indexed(engine, "v1-bbbb", [_point(1)], live=False)  # rolled out but not switched: say so
    with pytest.raises(StoreError, match=r"products_v1-bbbb is indexed \(1 points\); make it live with `python -m client.rollout switch`"):
        reader.check_embedder("v1-bbbb", 8)
    engine.close()


def test_a_catalog_that_records_no_embedder_is_refused(kind, tmp_path):
    engine = make_engine(kind, tmp_path / "q")
    with QdrantStore(engine=engine) as old:  # as indexed before collections recorded their embedder
        old.ensure(8)
        old.upsert([_point(1)])
        with pytest.raises(StoreError, match="an embedder it does not record"):
            old.check_embedder("v1-aaaa", 8)
        with pytest.raises(StoreError, match="re-index with `python -m client.rollout index DIR`"):
            QdrantStore(engine=engine, embedder_id="v1-aaaa").ensure(8)


def test_an_empty_placeholder_collection_hands_the_alias_over(kind, tmp_path):
    engine = make_engine(kind, tmp_path / "q")
    engine.create("products_v1", 8, "cosine", ())  # as deploy/k8s/create_collection.py leaves it
    engine.set_alias("products", "products_v1")
    store = _indexed(engine, "v1-aaaa", [_point(1)])
    assert store.live() == "products_v1-aaaa"
    engine.close()


def test_image_points_are_found_by_path(store):
    store.upsert([CatalogPoint(**{**_point(1, path="/cat/a.jpg").__dict__, "object_index": k, "extra": {"image_points": 2}})
                  for k in range(2)] + [_point(2, path="/cat/b.jpg")])
    assert sorted(p["object"] for p in store.image_points("/cat/a.jpg")) == [0, 1]
    assert store.image_points("/cat/none.jpg") == []


def test_an_image_written_again_with_fewer_points_keeps_none_of_its_old_ones(store):
    def points(path, n, sha="s"):
        return [CatalogPoint(**{**_point(1, path=path, sha=sha).__dict__, "object_index": k, "extra": {"image_points": n}})
                for k in range(n)]

    store.upsert(points("/cat/a.jpg", 5) + points("/cat/b.jpg", 5) + points("/cat/c.jpg", 2))
    store.upsert(points("/cat/a.jpg", 2) + points("/cat/b.jpg", 3))  # e.g. indexed again without synthetic views
    assert sorted(p["object"] for p in store.image_points("/cat/a.jpg")) == [0, 1]
    assert sorted(p["object"] for p in store.image_points("/cat/b.jpg")) == [0, 1, 2]
    assert sorted(p["object"] for p in store.image_points("/cat/c.jpg")) == [0, 1]  # not written again: untouched
    assert store.count() == 7


def test_url_and_path_together_are_refused(tmp_path, monkeypatch):
    with pytest.raises(StoreError, match="not both"):
        QdrantStore(url="http://127.0.0.1:6333", path=tmp_path)
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:6333")
    with pytest.raises(StoreError, match="QDRANT_URL is set .* not both"):
        QdrantStore(path=tmp_path)


def test_an_api_key_without_a_server_is_refused(tmp_path):
    with pytest.raises(StoreError, match="API key applies to a Qdrant server"):
        QdrantStore(path=tmp_path, api_key="secret")


def test_unreachable_server_is_a_clear_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError, match=f"cannot reach Qdrant at http://127.0.0.1:{port}"):
        QdrantStore(url=f"http://127.0.0.1:{port}")


# the embedded folder ----------------------------------------------------------------------------------

def test_embedded_store_persists_across_reopen(tmp_path):
    with QdrantStore(path=tmp_path / "q") as s:
        s.ensure(8)
        s.upsert([_point(i) for i in range(4)])
    with QdrantStore(path=tmp_path / "q") as s:
        assert s.exists() and s.count() == 4 and s.aliases() == {"products": spec.collection_name()}
        assert s.search(_vec(2), top_k=1)[0].product_id == "p2"


def test_second_store_on_same_folder_gets_a_clear_error(tmp_path):
    with QdrantStore(path=tmp_path / "q"):
        with pytest.raises(StoreError, match="in use by another process"):
            QdrantStore(path=tmp_path / "q")
    QdrantStore(path=tmp_path / "q").close()  # released on close


def test_second_process_on_same_folder_gets_a_clear_error(tmp_path):
    script = ("import sys\nfrom client.store import QdrantStore, StoreError\n"
              "try:\n    QdrantStore(path=sys.argv[1])\nexcept StoreError as exc:\n    print(exc)\n    sys.exit(3)\n")
    with QdrantStore(path=tmp_path / "q") as s:
        s.ensure(8)
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "q")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 3, out.stderr
    assert f"embedded Qdrant at {tmp_path / 'q'} is in use by another process" in out.stdout


def test_a_shard_whose_segments_were_deleted_is_refused(tmp_path):
    import shutil

    with QdrantStore(path=tmp_path / "q") as s:
        s.ensure(8)
        s.upsert([_point(i) for i in range(3)])
    shutil.rmtree(tmp_path / "q" / spec.collection_name() / "segments")
    with QdrantStore(path=tmp_path / "q") as s, pytest.raises(StoreError, match="segments/ is missing but 3 points"):
        s.count()


# congruence: the same answers from every engine --------------------------------------------------------

N, DIM, PRODUCTS, CATEGORIES = 500, 16, 160, ("c0", "c1", "c2", "c3")


def _dataset(seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(N, DIM)).astype(np.float32)
    ids = [point_id(f"p{i % PRODUCTS}", f"v{i}.jpg", 0) for i in range(N)]
    payloads = [{"product_id": f"p{i % PRODUCTS}", "category": CATEGORIES[(i % PRODUCTS) % 4], "path": f"v{i}.jpg",
                 "n": i} for i in range(N)]
    return ids, vecs, payloads, rng.normal(size=(6, DIM)).astype(np.float32)


def _same(a, b):
    assert [h.id for h in a] == [h.id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
    assert [h.payload for h in a] == [h.payload for h in b]


@pytest.mark.parametrize("distance", ["cosine", "dot", "euclid"])
def test_engines_give_the_same_answers(tmp_path, distance):
    ids, vecs, payloads, queries = _dataset()
    engines = [make_engine(k, tmp_path / k) for k in ENGINES]
    try:
        for e in engines:
            e.create("c", DIM, distance, ("product_id", "category", "path"))
            e.upsert("c", ids, vecs, payloads, batch=128)
        edge, server = engines
        wheres = [None, Where(must={"category": ["c1"]}), Where(must={"category": ["c0", "c2"]}, must_not={"product_id": ["p0", "p2"]}),
                  Where(must_not={"category": ["c3"]})]
        scores = [h.score for h in server.query("c", queries[0], limit=N)]
        threshold = float(np.median(scores))  # half the points pass, whichever way the distance sorts
        for where in wheres:
            assert edge.count("c", where) == server.count("c", where)
            scrolled = [[r.id for r in e.scroll("c", where=where, batch=64)] for e in engines]
            assert scrolled[0] == scrolled[1] and len(scrolled[0]) == edge.count("c", where)
            for q in queries:
                _same(edge.query("c", q, limit=10, where=where), server.query("c", q, limit=10, where=where))
                _same(edge.query("c", q, limit=N, where=where, threshold=threshold),
                      server.query("c", q, limit=N, where=where, threshold=threshold))
                for k in (1, 5, 30, PRODUCTS):  # PRODUCTS: more groups than a filter leaves
                    _same(edge.query_groups("c", q, group_by="product_id", limit=k, where=where),
                          server.query_groups("c", q, group_by="product_id", limit=k, where=where))
            for a, b in zip(edge.query_batch("c", queries, limit=7, where=where, threshold=threshold, with_payload=False),
                            server.query_batch("c", queries, limit=7, where=where, threshold=threshold, with_payload=False)):
                _same(a, b)
        assert len(edge.query("c", queries[0], limit=N, threshold=threshold)) in range(N // 2 - 1, N // 2 + 2)
        rec = {e: {r.id: (r.payload, r.vector) for r in e.scroll("c", with_vectors=True, batch=64)} for e in engines}
        assert rec[edge].keys() == rec[server].keys() == set(ids)
        for i in ids:
            assert rec[edge][i][0] == rec[server][i][0]
            np.testing.assert_allclose(rec[edge][i][1], rec[server][i][1], atol=1e-5)
        gone = Where(must={"category": ["c1"]}, must_not={"product_id": ["p1"]})
        for e in engines:
            e.delete_where("c", gone)
            e.delete("c", ids[:3])
        assert edge.count("c") == server.count("c") == N - 3 - sum(p["category"] == "c1" and p["product_id"] != "p1" for p in payloads[3:])
        assert [r.id for r in edge.scroll("c")] == [r.id for r in server.scroll("c")]
    finally:
        for e in engines:
            e.close()


@pytest.mark.parametrize("kind", ENGINES)
def test_aliases_switch_and_follow_a_dropped_collection(kind, tmp_path):
    engine = make_engine(kind, tmp_path / "q")
    try:
        for c in ("a", "b"):
            engine.create(c, 4)
        engine.set_alias("x", "a")
        engine.set_alias("x", "b")
        engine.set_alias("y", "a")
        assert engine.aliases() == {"x": "b", "y": "a"}
        engine.drop("b")
        assert engine.aliases() == {"y": "a"} and not engine.exists("b") and engine.exists("a")
        assert engine.vector_size("a") == 4
    finally:
        engine.close()


# dedup features ---------------------------------------------------------------------------------------

@pytest.fixture
def dedup(kind, tmp_path):
    engine = None if kind == "edge" else ServerEngine(QdrantClient(location=":memory:"))
    with DedupStore("set-1", "cnn", 8, "cosine", path=tmp_path / "d" if engine is None else None, engine=engine) as s:
        yield s


def test_dedup_store_methods(dedup):
    assert dedup.collection == "dedup_set-1_cnn" and dedup.count() == 0
    paths = [f"/img/{i}.jpg" for i in range(6)]
    ids = [dedup_point_id(p) for p in paths]
    vecs = np.stack([_vec(i) for i in range(5)] + [_vec(0) + 0.05])
    dedup.upsert(ids, vecs * 3, [{"path": p, "sha256": f"s{i}"} for i, p in enumerate(paths)], batch=4)
    assert dedup.count() == 6
    recs = {pid: (payload, vec) for pid, payload, vec in dedup.records(with_vectors=True, batch=4)}
    assert recs.keys() == set(ids) and recs[ids[2]][0] == {"path": paths[2], "sha256": "s2"}
    np.testing.assert_allclose(recs[ids[2]][1], _vec(2), atol=1e-5)  # cosine: stored normalised
    assert all(vec is None for _, _, vec in dedup.records())
    near = dedup.neighbours(np.stack([_vec(0), _vec(3)]), limit=4, threshold=0.99, batch=1)
    assert [i for i, _ in near[0]] == [ids[0], ids[5]] and near[0][0][1] == pytest.approx(1.0, abs=1e-5)
    assert [i for i, _ in near[1]] == [ids[3]]
    dedup.delete([ids[5]])
    dedup.delete([])
    dedup.optimize()
    assert dedup.count() == 5 and [i for i, _ in dedup.neighbours(_vec(0)[None], limit=4, threshold=0.99)[0]] == [ids[0]]
    assert dedup.neighbours(np.zeros((0, 8), np.float32), limit=4, threshold=0.5) == []


def test_dedup_store_persists_and_refuses_another_dimension(tmp_path):
    with DedupStore("x", "phash", 8, "dot", path=tmp_path) as s:
        s.upsert([dedup_point_id("a")], _vec(1)[None], [{"path": "a"}])
        assert s.where == str(tmp_path / "dedup_x_phash")
    with DedupStore("x", "phash", 8, "dot", path=tmp_path) as s:
        assert s.count() == 1
    with pytest.raises(StoreError, match="holds 8-d vectors, this method gives 16-d"):
        DedupStore("x", "phash", 16, "dot", path=tmp_path)
    DedupStore("x", "phash", 8, "dot", path=tmp_path).close()  # the refused open released the folder


def test_dedup_store_refuses_bad_arguments(tmp_path):
    with pytest.raises(StoreError, match="unknown distance 'manhattan'"):
        DedupStore("x", "cnn", 8, "manhattan", path=tmp_path)
    with pytest.raises(StoreError, match="collection name 'a/b'"):
        DedupStore("a/b", "cnn", 8, path=tmp_path)


def test_embedded_engine_is_qdrant_edge(tmp_path):
    with QdrantStore(path=tmp_path / "q") as s:
        assert isinstance(s.engine, EdgeEngine) and s.where == str(tmp_path / "q")
