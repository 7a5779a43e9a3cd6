"""export.evaluate end to end on a small run (the full benchmark is not a test: see the README)."""
import json

from client import spec
from export import evaluate


def test_evaluate_small_run_writes_consistent_report(built, tmp_path):
    out = tmp_path / "eval"
    evaluate.main(["--scenes", "8", "--distractors", "40", "--no-photoset", "--out", str(out), "--seed", "5"])
    m = json.loads((out / "metrics.json").read_text())
    assert (out / "report.md").read_text().startswith("# Retrieval evaluation")
    assert (out / "examples.png").stat().st_size > 1000
    s = m["setup"]
    assert s["distractors"] == 40 and s["gallery"] >= 40 + s["held_out_products"]
    assert s["query_objects"] >= 8
    assert s["query_box_jitter"] == spec.QUERY_BOX_JITTER  # detected query crops described as the search ensemble does
    for by_filter in m["retrieval"].values():
        for by_boxes in by_filter.values():
            for r in by_boxes.values():
                assert r["n"] == s["query_objects"]
                assert 0 <= r["R@1"] <= r["R@5"] <= r["R@20"] <= 1
    trained = m["retrieval"]["trained embedder, float"]["no filter"]["ground truth"]
    assert trained["R@20"] >= 0.3, trained  # held-out drawn products among ~200 catalog images: far above chance (0.1)
    assert 0 <= m["detector"]["ap50"] <= 1 and m["detector"]["objects"] == s["query_objects"]
    fp = m["detector_false_positives"]["all"]  # the valid rows that match no product, counted as the precision counts them
    assert fp["products"] == s["query_objects"] and fp["precision"] == m["detector"]["precision_at_threshold"]
    assert sum(fp[k] for k in ("on the background", "part of a product", "loose or between products")) == \
        round(fp["valid rows"] * (1 - fp["precision"]))
    assert set(m["per_transform"]) >= {"background", "scale", "rotation", "light", "blur", "jpeg", "occlusion"}
    # the objects client.search reports (select_rows) next to the valid rows it reported before
    assert set(m["retrieval"]["trained embedder, float"]["no filter"]) == {"detected", evaluate.VALID_ONLY, evaluate.GT}
    policy, before = m["objects_reported"]["client policy (select_rows)"], m["objects_reported"][evaluate.VALID_ONLY]
    for r in (policy, before):
        assert 0 <= r["products with a box IoU>=0.7"] <= r["products with a box IoU>=0.5"] <= 1
        assert r["recall (one box per product, IoU>=0.5)"] <= r["products with a box IoU>=0.5"]
    assert policy["objects per photo"] >= 1
    sweep = m["selection_sweep"]
    client = sweep["the client's (weaker rows by score + catalog cosine)"]  # weak rows chosen by their catalog cosine
    assert {k: client[k] for k in policy} == policy
    assert sweep["every detection row"]["products with a box IoU>=0.5"] >= policy["products with a box IoU>=0.5"]
    assert sweep["valid rows only (before)"]["R@1"] == m["retrieval"]["trained embedder, float"][evaluate.POLICY][evaluate.VALID_ONLY]["R@1"]
    views = m["catalog_views"]
    assert views["best detection + whole image"]["points"] >= views["best detection only"]["points"] == s["gallery"]
    synthetic = views["best detection + whole image + synthetic views"]  # what client.catalog.points_for stores
    assert synthetic["points"] == views["best detection + whole image"]["points"] + len(s["catalog_synthetic_views"]) * s["gallery"]
    assert s["catalog_points"] == synthetic["points"] and s["catalog_whole_image"]
    for name in ("best detection + whole image", "best detection + whole image + synthetic views"):  # both re-ranked
        assert {"detected boxes, re-ranked", "ground truth boxes, re-ranked"} <= set(views[name])
    assert synthetic["detected boxes, re-ranked"] == m["headline"]["detected boxes, re-ranked (client.search)"]
    # detector recall by object size and background (export/eval_misses.py), in the report too
    misses = m["detector_misses"]
    assert {"object size (scale)", "background", "background clutter", "product"} <= set(misses)
    for split in misses.values():
        assert sum(b["n"] for b in split.values()) == s["query_objects"]
        for b in split.values():
            assert 0 <= b["IoU>=0.7 valid"] <= b["recall valid"] <= b["recall any of K rows"] <= 1
    assert "### Detector misses by object size and background" in (out / "report.md").read_text()
