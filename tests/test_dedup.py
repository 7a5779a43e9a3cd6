"""client.dedup (methods, flow, CLI, compare, hash index): hand-made near-duplicates of skimage.data photos.

Thresholds are the calibrated ones (client/dedup/thresholds.json); the cnn tests use a real tritonserver.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from client import dedup as dd
from client.dedup.__main__ import main as dedup_main
from client.dedup.hashindex import HammingIndex, brute_force_pairs, hamming
from client.dedup.thresholds import load_thresholds
from client.imaging import encode_jpeg

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "immunohistochemistry", "hubble_deep_field"]
VARIANTS = {  # name -> transform; "flip" only for methods that should survive it
    "small": lambda im: im.resize((im.width // 2, im.height // 2), Image.LANCZOS),
    "q25": None,  # JPEG quality 25
    "bright": lambda im: ImageEnhance.Brightness(im).enhance(1.25),
    "crop": lambda im: im.crop((int(im.width * 0.03), int(im.height * 0.03), int(im.width * 0.97), int(im.height * 0.97))),
    "flip": ImageOps.mirror,
}


def _photo(name: str) -> Image.Image:
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    img.thumbnail((400, 400))
    return img.convert("RGB")


@pytest.fixture(scope="module")
def originals():
    return {n: _photo(n) for n in PHOTOS}


def _folder(tmp_path, originals, photos, variants):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for n in photos:
        im = originals[n]
        (tmp_path / f"{n}.jpg").write_bytes(encode_jpeg(im))
        for v in variants:
            data = encode_jpeg(im, 25) if v == "q25" else encode_jpeg(VARIANTS[v](im))
            (tmp_path / f"{n}__{v}.jpg").write_bytes(data)
    return tmp_path


def _expected(photos, variants):
    return sorted(sorted([f"{n}.jpg"] + [f"{n}__{v}.jpg" for v in variants]) for n in photos)


def _names(result):
    return sorted(sorted(p.rsplit("/", 1)[-1] for p in g.images) for g in result.groups)


@pytest.mark.parametrize("method,variants", [
    ("phash", ["small", "q25", "bright"]),
    ("dhash", ["small", "q25", "bright"]),
    ("ahash", ["small", "q25", "bright"]),
    ("whash", ["small", "q25", "bright"]),
    ("ssim", ["small", "q25"]),
    ("pixel_cosine", ["small", "q25", "bright"]),
    ("pixel_euclid", ["small", "q25"]),
])
def test_local_methods_group_copies_and_keep_distinct_photos_apart(tmp_path, originals, method, variants):
    photos = PHOTOS[:6]
    folder = _folder(tmp_path / "img", originals, photos, variants)
    thr = load_thresholds().get(method)
    res = dd.dedup(folder, method, thr, store_path=tmp_path / "idx", show_progress=False)
    assert _names(res) == _expected(photos, variants)
    assert res.errors == []


@pytest.mark.integration
def test_cnn_groups_copies_and_keeps_distinct_photos_apart(tmp_path, originals, client):
    variants = ["small", "q25", "bright", "crop", "flip"]
    folder = _folder(tmp_path / "img", originals, PHOTOS, variants)
    thr = None  # the calibrated rule (embedding + geometric check in the uncertain band)
    res = dd.dedup(folder, "cnn", thr, client=client, store_path=tmp_path / "idx", show_progress=False)
    assert "candidate" in res.settings
    assert _names(res) == _expected(PHOTOS, variants)
    assert not any("__small" in g.keep or "__crop" in g.keep for g in res.groups)  # the largest resolution is kept
    # a second run reuses every stored feature; a new copy is found without being added
    again = dd.dedup(folder, "cnn", thr, client=client, store_path=tmp_path / "idx", show_progress=False)
    assert again.encoded == 0 and _names(again) == _names(res)
    new = tmp_path / "new.jpg"
    new.write_bytes(encode_jpeg(originals["rocket"].rotate(3), 60))
    found, errors = dd.check([new], folder, "cnn", thr, client=client, store_path=tmp_path / "idx")
    assert errors == [] and {p.rsplit("/", 1)[-1].split("__")[0].removesuffix(".jpg") for p, _ in found[str(new)]} == {"rocket"}


@pytest.mark.integration
def test_cnn_encodes_the_ensembles_whole_image_row_through_the_served_steps(originals, client):
    """dedup asks preprocess -> crop -> embedder for row K only; the vector is the ensemble's, bit for bit."""
    from client.dedup.cnn import CNN, WholeImageEncoder

    items = [(n, encode_jpeg(originals[n])) for n in ("coffee", "rocket", "coins")] + [("broken.jpg", b"not an image")]
    encoder = WholeImageEncoder(client)
    assert encoder.available()
    vec, ident = encoder.embed(items[0][1], "coffee")
    assert ident == client.embedder_id()
    feats, errors = CNN(client).encode(items)
    for name, data in items[:3]:
        assert np.array_equal(feats[name], client.infer(data, name).image_embedding)
    assert np.array_equal(vec, feats["coffee"])
    assert [n for n, _ in errors] == ["broken.jpg"] and "cannot decode image" in errors[0][1]


def test_geometric_check_is_decided_in_a_batch_and_finds_copies_not_lookalikes(tmp_path, originals):
    """verify(): many inliers between a photo and its copies (mirror included), few between distinct photos."""
    from client.dedup.cnn import CnnRule, GeometricCheck, orb_features, verify

    coffee, rocket = originals["coffee"], originals["rocket"]
    copy = coffee.crop((40, 30, coffee.width - 20, coffee.height - 10)).rotate(8, resample=Image.BILINEAR)
    a, b, m, other = (orb_features(im) for im in (coffee, copy, ImageOps.mirror(coffee), rocket))
    k = load_thresholds().extra["cnn"]["min_inliers"]
    assert verify(a, b) >= 3 * k and verify(a, m) >= 3 * k and verify(a, other) < k
    paths = []
    for name, im in (("coffee", coffee), ("copy", copy), ("rocket", rocket)):
        paths.append(str(tmp_path / f"{name}.jpg"))
        im.save(paths[-1], quality=92)
    stats: dict = {}
    check = GeometricCheck(CnnRule(0.9, 0.4, k), paths, stats, workers=2)
    assert check([(0, 1, 0.6), (0, 2, 0.6), (1, 2, 0.95), (0, 2, 0.3)]) == [True, False, True, False]
    assert stats == {"pairs_checked": 2, "images_orb": 3}


@pytest.mark.integration
def test_compare_reports_every_measure(originals, client):
    from client.dedup import METHODS
    from client.dedup.compare import compare

    a = encode_jpeg(originals["coffee"])
    exact, same = compare(a, encode_jpeg(originals["coffee"], 30), client=client)
    assert not exact and [m.method for m in same] == list(METHODS)
    assert all(m.duplicate for m in same), [(m.method, m.score, m.threshold) for m in same if not m.duplicate]
    _, other = compare(a, encode_jpeg(originals["rocket"]), client=client)
    assert not any(m.duplicate for m in other), [(m.method, m.score) for m in other if m.duplicate]
    assert compare(a, a)[0] is True


def test_exact_copies_by_content_hash(tmp_path, originals):
    folder = tmp_path / "img"
    (folder / "sub").mkdir(parents=True)
    data = encode_jpeg(originals["astronaut"])
    for p in ["a.jpg", "b.jpg", "sub/c.jpg"]:
        (folder / p).write_bytes(data)
    (folder / "other.jpg").write_bytes(encode_jpeg(originals["coffee"]))
    res = dd.dedup(folder, "pixel_cosine", 2.0, store_path=tmp_path / "idx", show_progress=False)  # no near pair passes 2.0
    assert len(res.groups) == 1 and res.groups[0].exact and res.groups[0].count == 3


def test_json_output_bad_files_and_dry_run(tmp_path, originals, capsys):
    folder = _folder(tmp_path / "img", originals, PHOTOS[:3], ["small", "q25"])
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    (folder / "empty.png").write_bytes(b"")
    args = [str(folder), "--method", "phash", "--store-path", str(tmp_path / "idx"), "--quiet"]
    assert dedup_main(args + ["--json"]) == 3
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert [sorted(p.rsplit("/", 1)[-1] for p in g["images"]) for g in sorted(out["groups"], key=lambda g: g["keep"])] == \
        _expected(PHOTOS[:3], ["small", "q25"])
    assert all(g["count"] == len(g["images"]) == 3 and g["keep"] == g["images"][0] for g in out["groups"])
    assert {e["path"].rsplit("/", 1)[-1] for e in out["errors"]} == {"broken.jpg", "empty.png"}
    assert "broken.jpg: cannot decode image" in cap.err and "not a known image format" in cap.err
    before = sorted(p.name for p in folder.iterdir())
    assert dedup_main(args + ["--delete"]) == 3
    assert sorted(p.name for p in folder.iterdir()) == before and "dry run" in capsys.readouterr().err
    html = tmp_path / "groups.html"
    assert dedup_main(args + ["--move-to", str(tmp_path / "moved"), "--apply", "--html", str(html)]) == 3
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([f"{n}.jpg" for n in PHOTOS[:3]] + ["broken.jpg", "empty.png"])  # the largest copy is kept
    from client import gallery

    assert len(list((tmp_path / "moved").iterdir())) == 6 and len(gallery.embedded(html.read_text())["report"]["groups"]) == 3


def test_keep_order_prefers_resolution_then_size_then_age():
    f = dd.FileInfo
    infos = [f("b.jpg", "x", 10, 5.0, 100, 100), f("a.jpg", "y", 10, 1.0, 100, 100), f("c.jpg", "z", 99, 0.0, 50, 50)]
    assert [i.path for i in dd.keep_order(infos)] == ["a.jpg", "b.jpg", "c.jpg"]


@pytest.mark.parametrize("radius", [0, 3, 8, 12])
def test_hash_index_matches_brute_force(radius):
    rng = np.random.default_rng(radius)
    base = rng.integers(0, 2**63, size=60, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, size=60, dtype=np.uint64)
    flips = [np.uint64(sum(1 << int(b) for b in rng.choice(64, size=int(rng.integers(0, 14)), replace=False))) for _ in range(240)]
    codes = np.concatenate([base, np.array([base[i % 60] ^ f for i, f in enumerate(flips)], dtype=np.uint64)])
    index = HammingIndex(codes)
    got = set()
    for i, j, d in index.pairs(radius, block=97):
        assert (d == hamming(codes[i], codes[j])).all()
        got |= set(zip(i.tolist(), j.tolist()))
    assert got == brute_force_pairs(codes, radius)
    q = int(codes[7])
    assert sorted(i for i, _ in index.query(q, radius)) == sorted(int(k) for k in np.nonzero(hamming(codes, q) <= radius)[0])


def test_groups_are_direct_copies_of_the_kept_image_unless_transitive():
    f = dd.FileInfo
    files = [f("a.jpg", "1", 30, 0.0, 300, 300), f("b.jpg", "2", 20, 0.0, 200, 200), f("c.jpg", "3", 10, 0.0, 100, 100),
             f("c2.jpg", "3", 10, 1.0, 100, 100), f("d.jpg", "4", 10, 0.0, 50, 50)]
    chain = [(0, 1), (1, 2)]  # a~b, b~c (c2 is an exact copy of c); a and c are not alike
    assert sorted(sorted(g) for g in dd.group_pairs(files, chain)) == [[0, 1], [2, 3]]
    assert sorted(sorted(g) for g in dd.group_pairs(files, chain, transitive=True)) == [[0, 1, 2, 3]]


def test_thresholds_name_the_calibrated_embedder_and_old_files_still_read(tmp_path):
    from client.dedup.thresholds import StaleCalibration

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"embedder_sha256": "109f353f", "methods": {"cnn": {"threshold": 0.8, "candidate": 0.4}}}))
    t = load_thresholds(old)
    assert t.embedder_id is None and t.get("cnn") == 0.8 and t.extra["cnn"] == {"candidate": 0.4}
    assert t.check_embedder("v1-0123abcd")  # unknown id: nothing to check
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"embedder_id": "v1-aaaa", "methods": {"phash": {"threshold": 14}}}))
    t = load_thresholds(new)
    assert t.check_embedder("v1-aaaa")
    with pytest.warns(StaleCalibration, match="v1-aaaa.*v1-bbbb"):
        assert not t.check_embedder("v1-bbbb")
    with pytest.raises(ValueError, match="no calibrated threshold for 'cnn'"):
        t.get("cnn")


def test_thresholds_hold_for_every_embedder_they_were_calibrated_on(tmp_path):
    """Builds of one recipe on other CPUs have other embedder ids; a calibration that gives them exactly the same
    thresholds adds them to the file (bench.dedup_calibrate.write_thresholds), and the check accepts each."""
    from bench.dedup_calibrate import write_thresholds
    from client.dedup.thresholds import StaleCalibration

    path = tmp_path / "thresholds.json"
    cnn = {"threshold": 0.95, "precision": 1.0, "recall": 0.99, "candidate": 0.55, "min_inliers": 6}
    write_thresholds(path, {"cnn": cnn, "phash": {"threshold": 14.0, "precision": 0.99, "recall": 0.7}}, tmp_path, 10, "v2-aaaa")
    first = json.loads(path.read_text())
    assert first["embedder_id"] == "v2-aaaa" and "embedder_ids" not in first
    # another build, the same thresholds (its recall a little different): joins the file, the first run's figures stay
    write_thresholds(path, {"cnn": {**cnn, "recall": 0.98}, "phash": {"threshold": 14.0, "precision": 0.99, "recall": 0.7}},
                     tmp_path, 10, "v2-bbbb")
    both = json.loads(path.read_text())
    assert both["embedder_ids"] == ["v2-aaaa", "v2-bbbb"] and list(both["also_calibrated"]) == ["v2-bbbb"]
    assert both["methods"]["cnn"]["recall"] == 0.99 and both["calibrated"] == first["calibrated"]
    write_thresholds(path, {"cnn": cnn, "phash": {"threshold": 14.0, "precision": 0.99, "recall": 0.7}}, tmp_path, 10, "v2-bbbb")
    assert json.loads(path.read_text())["embedder_ids"] == ["v2-aaaa", "v2-bbbb"]  # no repeat
    t = load_thresholds(path)
    assert t.embedder_ids == ("v2-aaaa", "v2-bbbb") and t.check_embedder("v2-aaaa") and t.check_embedder("v2-bbbb")
    with pytest.warns(StaleCalibration, match="v2-aaaa, v2-bbbb.*v2-cccc"):
        assert not t.check_embedder("v2-cccc")
    # other thresholds: the file starts again with the new embedder alone
    write_thresholds(path, {"cnn": {**cnn, "min_inliers": 7}, "phash": {"threshold": 14.0, "precision": 0.99, "recall": 0.7}},
                     tmp_path, 10, "v2-cccc")
    again = json.loads(path.read_text())
    assert again["embedder_id"] == "v2-cccc" and "embedder_ids" not in again and again["methods"]["cnn"]["min_inliers"] == 7
    assert load_thresholds(path).embedder_ids == ("v2-cccc",)
