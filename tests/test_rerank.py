"""Geometric re-ranking (client/rerank.py): keypoints survive the payload, a photographed product's own
catalog image wins over products that look alike to the embedding, and the store keeps the keypoints out of
every read but the one that asks for them."""
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from qdrant_client import QdrantClient

from client import rerank
from client.catalog import image_keypoints
from client.geometry import NO_KEYPOINTS
from client.store import CatalogPoint, QdrantStore, open_engine
from client.store.engine import HEAVY_FIELDS
from client.store.server import ServerEngine

pytestmark = [pytest.mark.filterwarnings("ignore:Payload indexes have no effect")]


def product(seed: int, size=(400, 300)) -> Image.Image:
    """A product on white: a box printed with random shapes and lines (a stand-in for labels and logos)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle((40, 30, size[0] - 40, size[1] - 30), fill=(200, 190, 170), outline=(0, 0, 0), width=3)
    for _ in range(40):
        x, y = rng.integers(50, size[0] - 70), rng.integers(40, size[1] - 60)
        w, h = rng.integers(8, 40, 2)
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        [d.rectangle, d.ellipse][int(rng.integers(2))]((x, y, x + w, y + h), fill=colour)
        d.line((x, y, x + int(rng.integers(-30, 30)), y + int(rng.integers(-30, 30))), fill=(0, 0, 0), width=2)
    return img


def photographed(img: Image.Image, seed: int = 0) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The product turned, sheared, darker and softer, pasted on a cluttered background: (photo, its box)."""
    rng = np.random.default_rng(100 + seed)
    obj = img.rotate(12, expand=True, fillcolor=(255, 255, 255), resample=Image.Resampling.BICUBIC)
    obj = obj.transform(obj.size, Image.Transform.AFFINE, (1, 0.15, -20, 0, 1, 0), fillcolor=(255, 255, 255),
                        resample=Image.Resampling.BICUBIC)
    obj = ImageEnhance.Brightness(obj.resize((obj.width * 3 // 4, obj.height * 3 // 4))).enhance(0.7).filter(ImageFilter.GaussianBlur(0.8))
    bg = Image.fromarray(rng.integers(60, 200, (480, 640, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))
    x, y = 150, 90
    bg.paste(obj, (x, y))
    return bg, (x, y, x + obj.width, y + obj.height)


def test_pack_round_trip_and_bad_payloads():
    kp = rerank.catalog_keypoints(product(1))
    assert 50 <= len(kp[0]) <= rerank.ORB.keypoints
    pos, desc = rerank.unpack(rerank.pack(kp))
    assert np.array_equal(desc, kp[1]) and np.abs(pos - kp[0]).max() <= 1 / 32
    assert len(rerank.pack(kp)) < 20_000  # a payload string, once per catalog image
    for bad in ("", "not base64!", rerank.pack(kp)[:-8], "AA==" + rerank.pack(kp)):
        got = rerank.unpack(bad)
        assert len(got[0]) == 0 and len(got[1]) == 0
    assert rerank.unpack(rerank.pack(NO_KEYPOINTS))[0].shape == (0, 2)


def test_the_photographed_product_moves_to_the_top():
    catalog = [product(s) for s in range(6)]
    stored = [[rerank.unpack(rerank.pack(rerank.catalog_keypoints(c)))] for c in catalog]
    photo, box = photographed(catalog[4])
    query = rerank.query_keypoints(photo, box)
    # the embedding ranks it fourth (cosines close together, as for look-alike products)
    cosines = [0.80, 0.79, 0.78, 0.77, 0.76, 0.75]
    order = [0, 1, 2, 4, 3, 5]
    got = rerank.rerank([cosines[i] for i in range(6)], [stored[j] for j in order], query)
    assert order[got[0].index] == 4, [(order[r.index], r.inliers) for r in got]
    true = next(r for r in got if order[r.index] == 4)
    others = [r.inliers for r in got if order[r.index] != 4]
    assert true.inliers >= rerank.INLIER_CAP and max(others) < true.inliers / 2
    assert true.score == pytest.approx(rerank.fused(0.77, true.inliers))
    # the box matters: the same photo without it still finds it (the whole image)
    assert order[rerank.rerank(cosines, [stored[j] for j in order], rerank.query_keypoints(photo))[0].index] == 4


def test_chance_inliers_do_not_push_down_a_product_without_keypoints():
    """Unrelated images share a few RANSAC inliers by chance; a product indexed without keypoints is scored
    with CHANCE_INLIERS, so unrelated products do not overtake it on chance matches alone."""
    photo, box = photographed(product(30))
    query = rerank.query_keypoints(photo, box)
    unrelated = [[rerank.catalog_keypoints(product(s))] for s in range(31, 37)]
    got = rerank.rerank([0.80] + [0.79] * 6, [[]] + unrelated, query)
    chance = [r.inliers for r in got if r.inliers is not None]
    assert max(chance) < rerank.INLIER_CAP // 2 and np.median(chance) <= rerank.CHANCE_INLIERS + 1
    assert got[0].index == 0 and got[0].inliers is None


def test_rerank_hits_scores_only_the_candidates():
    from client.store import Hit

    hits = [Hit(f"p{i}", "", 0.9 - 0.005 * i, "c", {}) for i in range(rerank.CANDIDATES + 5)]
    kp = rerank.catalog_keypoints(product(8))
    photo, box = photographed(product(8))
    last = hits[rerank.CANDIDATES - 1].product_id  # the 20th by cosine is the photographed product
    got = rerank.rerank_hits(hits, rerank.query_keypoints(photo, box), lambda ids: {last: [kp]} if last in ids else {})
    assert got[0].product_id == last and got[0].payload["inliers"] >= rerank.INLIER_CAP
    assert [h.product_id for h in got[rerank.CANDIDATES:]] == [f"p{i}" for i in range(rerank.CANDIDATES, rerank.CANDIDATES + 5)]
    assert all(h.payload["inliers"] is None and h.score == h.payload["cosine"] for h in got[rerank.CANDIDATES:])


def test_full_agreement_keeps_the_cosine_order():
    img = product(7)
    kp = rerank.catalog_keypoints(img)
    photo, box = photographed(img)
    query = rerank.query_keypoints(photo, box)
    # two catalog images of one layout (colour variants look alike in grey): both agree, cosine decides
    got = rerank.rerank([0.9, 0.8, 0.7], [[kp], [kp], []], query)
    assert [r.index for r in got] == [0, 1, 2]
    assert got[0].inliers == got[1].inliers >= rerank.INLIER_CAP
    # no stored keypoints: scored with what an unrelated image gets by chance, reported as None
    assert got[2].inliers is None and got[2].score == pytest.approx(rerank.fused(0.7, rerank.CHANCE_INLIERS))
    # a query without keypoints (a flat crop) leaves the cosine order
    flat = rerank.query_keypoints(Image.new("RGB", (100, 100), "grey"))
    assert [r.index for r in rerank.rerank([0.9, 0.8], [[kp], [kp]], flat)] == [0, 1]


@pytest.mark.parametrize("kind", ["edge", "server"])
def test_store_keeps_keypoints_on_the_first_point_and_out_of_reads(kind, tmp_path):
    assert rerank.FIELD in HEAVY_FIELDS
    engine = open_engine(path=tmp_path / "q") if kind == "edge" else ServerEngine(QdrantClient(location=":memory:"))
    text = rerank.pack(rerank.catalog_keypoints(product(3)))
    rng = np.random.default_rng(0)

    def point(pid, k, keypoints=None):
        v = rng.normal(size=8).astype(np.float32)
        return CatalogPoint(vector=v / np.linalg.norm(v), product_id=pid, category="c", fine_category="c", path=f"/cat/{pid}.jpg",
                            sha256=pid, box=(0, 0, 1, 1), object_index=k, extra={rerank.FIELD: keypoints} if keypoints else {})

    with QdrantStore(engine=engine) as store:
        store.ensure(8)
        store.upsert([point("a", 0, text), point("a", 1), point("b", 0), point("b", 1)])
        hits = store.search(np.ones(8, np.float32), top_k=5)
        assert {h.product_id for h in hits} == {"a", "b"} and all(rerank.FIELD not in h.payload for h in hits)
        assert all(rerank.FIELD not in p for p in store.get_product("a") + store.image_points("/cat/a.jpg"))
        assert store.categories() == {"c": 2}
        got = store.keypoints(["a", "b", "missing"])
        assert set(got) == {"a"} and len(got["a"]) == 1
        assert np.array_equal(got["a"][0][1], rerank.unpack(text)[1])
        assert store.keypoints([]) == {}


def test_catalog_keypoints_of_bytes(tmp_path):
    path = tmp_path / "p.png"
    product(5).save(path)
    text = image_keypoints(path.read_bytes())
    assert text and len(rerank.unpack(text)[0]) > 50
    assert image_keypoints(b"not an image") is None


def test_an_image_indexed_without_keypoints_or_synthetic_views_is_sent_again(tmp_path):
    """client.index's resume check: an image stored before keypoints or the synthetic views existed is not
    'unchanged'."""
    from client.catalog import CATALOG_VIEWS, is_stored

    with QdrantStore(engine=open_engine(path=tmp_path / "q")) as store:
        store.ensure(8)
        v = np.ones(8, np.float32) / np.sqrt(8)
        old = CatalogPoint(vector=v, product_id="a", category="c", fine_category="c", path="/cat/a.jpg", sha256="s",
                           box=(0, 0, 1, 1), extra={"image_points": 1})
        store.upsert([old])
        assert not is_stored(store, "/cat/a.jpg", "s")
        text = rerank.pack(rerank.catalog_keypoints(product(2)))
        first = CatalogPoint(**{**old.__dict__, "extra": {"image_points": 1, rerank.FIELD: text, "keypoints_n": 300}})
        store.upsert([first])
        assert not is_stored(store, "/cat/a.jpg", "s")  # keypoints, but no synthetic views
        n, asked = 1 + len(CATALOG_VIEWS), list(CATALOG_VIEWS)
        views = [CatalogPoint(**{**old.__dict__, "object_index": 1 + j,
                                 "extra": {"image_points": n, "synthetic_view": label, "synthetic_views": asked}})
                 for j, label in enumerate(CATALOG_VIEWS)]
        head = CatalogPoint(**{**first.__dict__, "extra": {**first.extra, "image_points": n, "synthetic_views": asked}})
        store.upsert([head, *views[:-1]])
        assert not is_stored(store, "/cat/a.jpg", "s")  # one view missing
        store.upsert([head, *views])  # an image's points are written together (QdrantStore.upsert)
        assert is_stored(store, "/cat/a.jpg", "s") and not is_stored(store, "/cat/a.jpg", "other")
        assert not is_stored(store, "/cat/a.jpg", "s", views=())  # asked for without views: sent again
        # a strip too thin for views asks for them all the same: stored with none, and then not sent again
        strip = CatalogPoint(**{**first.__dict__, "extra": {**first.extra, "synthetic_views": asked}})
        store.upsert([strip])
        assert is_stored(store, "/cat/a.jpg", "s")
