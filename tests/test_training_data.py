"""Product split, generated query transforms and the heads checkpoint (the category merge: test_merge.py)."""
import numpy as np
import pytest

from client import spec
from export import dataset
from export.products import product_split, synthetic_products
from export.scenes import Backgrounds, detector_scene, make_scene, uneven_light, vary


def test_held_out_products_never_reach_training():
    sources = dataset.load_sources(dataset.DataConfig(synthetic_per_class=10))
    train_ids = {p.product_id for p in sources.products}
    test_ids = {p.product_id for p in sources.held_out}
    assert test_ids and train_ids and not train_ids & test_ids
    assert all(product_split(i) == "test" for i in test_ids)
    assert 0.1 < len(test_ids) / (len(test_ids) + len(train_ids)) < 0.3
    # stable: the same ids are held out on every run and in every profile
    again = dataset.load_sources(dataset.DataConfig(synthetic_per_class=4))
    assert {p.product_id for p in again.held_out} == {i for i in test_ids if int(i.rsplit("_", 1)[1]) < 4}


def test_scene_objects_record_their_transforms():
    products = synthetic_products(2)
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(40):
        scene = make_scene(products, Backgrounds(), rng)
        for o in scene.objects:
            assert {"scale", "rotation", "light", "jpeg"} <= set(o.transform)
            seen |= set(o.transform)
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= scene.image.width and 0 <= y1 < y2 <= scene.image.height
    assert {"perspective", "colour", "blur", "noise", "contrast", "occlusion"} <= seen


def test_uneven_light_darkens_the_photo_along_a_direction_and_is_off_by_default():
    from PIL import Image

    grey = Image.new("RGB", (200, 120), (150, 150, 150))
    for seed in range(5):
        lit, ratio = uneven_light(grey, np.random.default_rng(seed))
        v = np.asarray(lit, np.float32)[..., 0]
        assert lit.size == grey.size and 0.3 < ratio <= 0.8
        assert v.max() > 150 and v.min() < 0.85 * 150  # one side brighter than the photo was, another darker
        assert abs(v.min() / v.max() - ratio) < 0.02
    products = synthetic_products(2)
    # off (the default) draws nothing from the generator: the scenes every evaluation made before are unchanged
    a = make_scene(products, Backgrounds(), np.random.default_rng(8))
    b = make_scene(products, Backgrounds(), np.random.default_rng(8), uneven_light_p=0.0)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    c = make_scene(products, Backgrounds(), np.random.default_rng(8), uneven_light_p=1.0)
    assert c.objects and all(0 < o.transform["uneven_light"] < 1 for o in c.objects)
    assert "uneven_light" not in a.objects[0].transform


def test_detector_scenes_show_varied_products_and_pseudo_objects():
    products = synthetic_products(2)
    rng = np.random.default_rng(5)
    kinds, scales = set(), []
    for _ in range(30):
        scene = detector_scene(products, Backgrounds(), rng)
        assert 1 <= len(scene.objects) <= 3
        scales += [o.transform["scale"] for o in scene.objects]
        for o in scene.objects:
            kinds.add("pseudo" if o.product_id == "pseudo" else "product")
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= scene.image.width and 0 <= y1 < y2 <= scene.image.height
    assert kinds == {"pseudo", "product"}
    # small objects (scenes.SMALL_RANGE) as well as large ones
    assert min(scales) < 0.15 and max(scales) > 0.5 and all(0.08 <= s <= 0.8 for s in scales)
    # a varied product keeps its identity and its shape's alpha; most draws change its pixels
    p = products[0]
    changed = 0
    for seed in range(20):
        v = vary(p, np.random.default_rng(seed))
        assert v.product_id == p.product_id and v.cutout.mode == "RGBA"
        assert v.cutout.getchannel("A").getbbox() is not None
        changed += v.cutout.size != p.cutout.size or np.abs(np.asarray(v.cutout, float) - np.asarray(p.cutout, float)).mean() > 1
    assert changed >= 12  # 7/8 of draws vary something; a mirrored symmetric drawing may not change


def test_detector_scenes_leave_the_crops_as_they_were():
    sources = dataset.load_sources(dataset.DataConfig(synthetic_per_class=1))
    sources.products = sources.products[:6]
    base = dict(synthetic_per_class=1, scenes=4, catalog_views=2)
    det0, crops0 = dataset.generate(dataset.DataConfig(**base), sources)
    det1, crops1 = dataset.generate(dataset.DataConfig(**base, detector_scenes=3), sources)
    assert np.array_equal(crops0.crops, crops1.crops) and np.array_equal(crops0.product, crops1.product)
    assert len(det1.images) == len(det0.images) + 3 and not det1.val[4:].any()
    assert np.array_equal(det0.images[:4], det1.images[:4])


needs_fork = pytest.mark.skipif(not dataset.can_fork(), reason="needs fork and 2+ usable CPUs")


@needs_fork
def test_detector_scenes_drawn_in_another_process_are_the_same(monkeypatch):
    """The build draws the detector-only scenes in a forked process while it draws the others (own random stream),
    then cuts the catalog views on two threads: the images, boxes, split and crops are those drawn in one process
    on one thread, in the same order."""
    sources = dataset.load_sources(dataset.DataConfig(synthetic_per_class=1))
    sources.products = sources.products[:6]
    cfg = dataset.DataConfig(synthetic_per_class=1, scenes=4, detector_scenes=5, catalog_views=3)
    forks, made_on = [], []

    class Spy(dataset.DetectorScenes):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            forks.append(self.proc is not None)

    class Cutter(dataset.CropCutter):
        def __init__(self, threads: int = 1):
            super().__init__(threads)
            made_on.append(threads)
    monkeypatch.setattr(dataset, "DetectorScenes", Spy)
    monkeypatch.setattr(dataset, "CropCutter", Cutter)
    made = {}
    for name, fork_min in (("here", 10 ** 9), ("forked", 1)):
        monkeypatch.setattr(dataset, "FORK_MIN_SCENES", fork_min)
        made[name] = dataset.generate(cfg, sources)
    assert forks == [False, True] and made_on == [1, 1, 2]  # the cutters' threads
    (d0, c0), (d1, c1) = made["here"], made["forked"]
    assert np.array_equal(d0.images, d1.images) and np.array_equal(d0.val, d1.val)
    assert [b.tolist() for b in d0.boxes] == [b.tolist() for b in d1.boxes]
    assert np.array_equal(c0.crops, c1.crops) and np.array_equal(c0.product, c1.product)
    assert len(d1.images) == 4 + 5 + 3 and d1.images[4:9].any()


@needs_fork
@pytest.mark.parametrize("where, error, match, n_detector", [
    # the other process fails: its error is raised here, with its traceback
    ("detector_scene", RuntimeError, "drawing the detector scenes failed(.|\n)*no such background: beach.jpg", 3),
    # the build's own scenes fail while the other process still draws: it is stopped, not left running
    ("make_scene", OSError, "no such background: beach.jpg", 400),
])
def test_a_failure_on_either_side_is_raised_and_leaves_no_process(monkeypatch, where, error, match, n_detector):
    import multiprocessing

    sources = dataset.load_sources(dataset.DataConfig(synthetic_per_class=1))
    sources.products = sources.products[:6]
    monkeypatch.setattr(dataset, "FORK_MIN_SCENES", 1)

    def broken(*a, **k):
        raise OSError("no such background: beach.jpg")
    monkeypatch.setattr(dataset, where, broken)
    with pytest.raises(error, match=match):
        dataset.generate(dataset.DataConfig(synthetic_per_class=1, scenes=2, detector_scenes=n_detector, catalog_views=1), sources)
    assert not multiprocessing.active_children()


def test_the_scenes_alone_are_the_scenes_made_with_the_crops(monkeypatch):
    """generate(with_crops=False), which makes another trunk's maps for cached scenes, gives the same scenes (images,
    boxes, split) without cutting or rendering a crop."""
    sources = dataset.load_sources(dataset.DataConfig(synthetic_per_class=1))
    sources.products = sources.products[:6]
    cfg = dataset.DataConfig(synthetic_per_class=1, scenes=5, detector_scenes=2, catalog_views=3)
    det, crops = dataset.generate(cfg, sources)

    def no_cutter():
        raise AssertionError("a crop cutter was made")

    monkeypatch.setattr(dataset, "CropCutter", no_cutter)
    alone, none = dataset.generate(cfg, sources, with_crops=False)
    assert none is None and len(crops.product) > 0
    assert np.array_equal(det.images, alone.images) and np.array_equal(det.val, alone.val)
    assert all(np.array_equal(a, b) for a, b in zip(det.boxes, alone.boxes, strict=True))


def test_heads_round_trip_and_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    from export.checkpoint import CheckpointError, Heads

    heads = Heads({"w": torch.ones(2)}, {"v": torch.zeros(3)}, ["a", "b"], {"a": "x", "b": "x"}, {"p": torch.eye(2)},
                  torch.arange(4.0), None, {"profile": "test"})
    heads.save(tmp_path / "heads.pt")
    back = Heads.load(tmp_path / "heads.pt")
    assert back.fine_classes == ["a", "b"] and back.merge == heads.merge and back.log == {"profile": "test"}
    assert torch.equal(back.embedder_center, heads.embedder_center) and back.embedder_tuned_head is None
    assert back.detector_backbones == ("efficientnet-lite0",)  # a detector of one Lite0 trunk, as every file before
    raw = torch.load(tmp_path / "heads.pt", weights_only=False)
    del raw["detector_backbones"]  # a file written before the detector had more trunks
    torch.save(raw, tmp_path / "old.pt")
    assert Heads.load(tmp_path / "old.pt").detector_backbones == ("efficientnet-lite0",)
    with pytest.raises(CheckpointError, match=r"nothing\.pt: no trained heads"):
        Heads.load(tmp_path / "nothing.pt")
    torch.save({"detector": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a heads file .*missing \['classifier'"):
        Heads.load(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pt: not a heads file"):
        Heads.load(tmp_path / "text.pt")


def test_the_feature_cache_holds_stride8_maps_only_for_a_detector_that_reads_them(tmp_path, monkeypatch):
    """export.build.features on a tiny generated set: the stride-16/32 maps always, the stride-8 maps (under a key
    of their own, so a switch never reuses the other cache) only with models.STRIDE8; a second call reads the cache."""
    from export import build, models

    cfg = dataset.DataConfig(synthetic_per_class=1, scenes=4, detector_scenes=2, catalog_views=2)
    sources = dataset.load_sources(cfg)
    det, _, f16, f32, _, _, f8, more = build.features(cfg, sources, tmp_path)
    n = len(det.val)
    assert f8 is None and f16.shape[0] == f32.shape[0] == n and more == {}
    plain = sorted(tmp_path.glob("features_*.npz"))
    assert len(plain) == 1 and "f8" not in np.load(plain[0]).files
    monkeypatch.setattr(models, "STRIDE8", True)
    _, _, g16, _, _, _, g8, _ = build.features(cfg, sources, tmp_path)
    side = g16.shape[-1] * 2
    assert g8.shape == (n, models.Backbone(pretrained=False).c8, side, side) and np.array_equal(g16, f16)
    with8 = sorted(tmp_path.glob("features_*.npz"))
    assert len(with8) == 1 and with8 != plain  # the other key's cache is replaced, not mixed in
    again = build.features(cfg, sources, tmp_path)[6]
    assert np.array_equal(again, g8)


def test_the_feature_cache_is_keyed_by_the_input_sides(tmp_path, monkeypatch):
    """A detector input of another side (spec.DET_SIZE) makes other scene images and maps: export.build.features
    must not read a cache made at the old side (it once did: the key held no sides). At the shipped sides the key
    is the one caches were always made under."""
    from export import build

    cfg = dataset.DataConfig(synthetic_per_class=1, scenes=4, detector_scenes=2, catalog_views=2)
    sources = dataset.load_sources(cfg)
    assert build.input_sides() == build.KEYLESS_SIZES
    f16 = build.features(cfg, sources, tmp_path)[2]
    first = sorted(tmp_path.glob("features_*.npz"))
    assert f16.shape[-1] == spec.DET_SIZE // 16
    monkeypatch.setattr(spec, "DET_SIZE", spec.DET_SIZE + 64)
    g16 = build.features(cfg, sources, tmp_path)[2]
    assert g16.shape[-1] == spec.DET_SIZE // 16 and sorted(tmp_path.glob("features_*.npz")) != first


def test_the_feature_cache_holds_each_detector_trunks_maps(tmp_path):
    """A detector on two trunks (TrainConfig.det_backbones) trains each trunk's heads on that trunk's maps of the same
    scenes: export.build.features makes the second trunk's maps in a file of their own next to the Lite0 cache (the
    scenes generated again when that cache is already there), leaves the Lite0 maps as they were, and reads both
    caches on the next call."""
    from export import build, models

    lite2 = "efficientnet-lite2"
    cfg = dataset.DataConfig(synthetic_per_class=1, scenes=4, detector_scenes=2, catalog_views=2)
    sources = dataset.load_sources(cfg)
    det, _, f16, f32, _, _, _, more = build.features(cfg, sources, tmp_path)
    assert more == {}
    *_, more = build.features(cfg, sources, tmp_path, (models.LITE0, lite2))
    trunk = models.Backbone(pretrained=False, name=lite2)
    g16, g32, g8 = more[lite2]
    assert g8 is None and g16.shape == (len(det.val), trunk.c16, *f16.shape[-2:])
    assert g32.shape == (len(det.val), trunk.c32, *f32.shape[-2:]) and trunk.c16 != f16.shape[1]
    extra = sorted(tmp_path.glob(f"features_*_{lite2}.npz"))
    assert len(extra) == 1 and len(list(tmp_path.glob("features_*.npz"))) == 2
    stamp = extra[0].stat().st_mtime_ns
    _, _, h16, _, _, _, _, again = build.features(cfg, sources, tmp_path, (models.LITE0, lite2))
    assert np.array_equal(h16, f16) and np.array_equal(again[lite2][0], g16) and extra[0].stat().st_mtime_ns == stamp


def test_data_a_kept_detector_was_validated_on_loads_no_trunk_maps(tmp_path):
    """prepare_data logs its data's features key; given that key as ``validated_on`` (a kept detector validated on
    these scenes by its build), it neither loads nor makes another trunk's maps."""
    from export import build, models

    lite2 = "efficientnet-lite2"
    cfg = dataset.DataConfig(synthetic_per_class=1, scenes=4, detector_scenes=2, catalog_views=2)
    log: dict = {"data": {}}
    data = build.prepare_data(cfg, tmp_path, log, (models.LITE0, lite2), validated_on="another key")
    key = log["data"]["features_key"]
    assert len(key) == 16 and set(data.more_maps) == {lite2}
    for f in tmp_path.glob(f"features_*_{lite2}.npz"):
        f.unlink()
    again = build.prepare_data(cfg, tmp_path, {"data": {}}, (models.LITE0, lite2), validated_on=key)
    assert again.more_maps == {} and not list(tmp_path.glob(f"features_*_{lite2}.npz"))
    assert np.array_equal(again.f16, data.f16)
