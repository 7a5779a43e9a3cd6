import numpy as np
import pytest

from client.store import CatalogPoint, QdrantStore, StoreError, point_id


def _vec(seed, dim=8):
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _point(i, category="watches", path=None, sha=None, vec=None, product=None):
    return CatalogPoint(vector=_vec(i) if vec is None else vec, product_id=product or f"p{i}", category=category,
                        fine_category=category + "_x", path=path or f"/cat/p{i}.jpg", sha256=sha or f"sha{i}", box=(0, 0, 10, 10))


@pytest.fixture
def store(tmp_path):
    with QdrantStore(path=tmp_path / "q") as s:
        s.ensure(8)
        yield s


def test_reindexing_never_duplicates(store):
    pts = [_point(i) for i in range(10)]
    store.upsert(pts)
    store.upsert(pts)
    assert store.count() == 10
    assert point_id("sha1", 0) == pts[1].id


def test_changed_file_replaces_its_old_point(store):
    store.upsert([_point(1, sha="old")])
    store.upsert([_point(1, sha="new")])
    assert store.count() == 1
    assert store.search(_vec(1), top_k=1)[0].payload["sha256"] == "new"


def test_category_filter_and_one_hit_per_product(store):
    store.upsert([_point(i, category="watches" if i < 5 else "drinks") for i in range(10)])
    # a second image of product p0, nearly identical vector
    store.upsert([_point(100, path="/cat/p0_b.jpg", sha="b", vec=_vec(0) + 0.01, product="p0")])
    hits = store.search(_vec(0), top_k=3)
    assert [h.product_id for h in hits][0] == "p0" and len({h.product_id for h in hits}) == 3
    assert all(h.category == "drinks" for h in store.search(_vec(0), category="drinks", top_k=5))
    assert store.count("drinks") == 5


def test_collection_is_versioned_behind_an_alias(store):
    assert store.collection == "products_v1"
    aliases = {a.alias_name: a.collection_name for a in store.client.get_aliases().aliases}
    assert aliases == {"products": "products_v1"}


def test_second_process_on_same_folder_gets_a_clear_error(tmp_path):
    with QdrantStore(path=tmp_path / "q"):
        with pytest.raises(StoreError, match="in use by another process"):
            QdrantStore(path=tmp_path / "q")


def test_dimension_mismatch_is_refused(store):
    with pytest.raises(StoreError, match="8-d vectors but the model gives 16-d"):
        store.ensure(16)


def test_url_and_path_together_are_refused(tmp_path):
    with pytest.raises(StoreError, match="not both"):
        QdrantStore(url="http://127.0.0.1:6333", path=tmp_path)
