"""Product split, generated query transforms and the heads checkpoint (the category merge: test_merge.py)."""
import numpy as np
import pytest

from export import dataset
from export.products import product_split, synthetic_products
from export.scenes import Backgrounds, make_scene


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


def test_heads_round_trip_and_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    from export.checkpoint import CheckpointError, Heads

    heads = Heads({"w": torch.ones(2)}, {"v": torch.zeros(3)}, ["a", "b"], {"a": "x", "b": "x"}, {"p": torch.eye(2)},
                  torch.arange(4.0), None, {"profile": "test"})
    heads.save(tmp_path / "heads.pt")
    back = Heads.load(tmp_path / "heads.pt")
    assert back.fine_classes == ["a", "b"] and back.merge == heads.merge and back.log == {"profile": "test"}
    assert torch.equal(back.embedder_center, heads.embedder_center) and back.embedder_tuned_head is None
    with pytest.raises(CheckpointError, match=r"nothing\.pt: no trained heads"):
        Heads.load(tmp_path / "nothing.pt")
    torch.save({"detector": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: not a heads file .*missing \['classifier'"):
        Heads.load(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pt: not a heads file"):
        Heads.load(tmp_path / "text.pt")
