"""export.evaluate end to end on a small run (the full benchmark is not a test: see the README)."""
import json

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
    for by_filter in m["retrieval"].values():
        for by_boxes in by_filter.values():
            for r in by_boxes.values():
                assert r["n"] == s["query_objects"]
                assert 0 <= r["R@1"] <= r["R@5"] <= r["R@20"] <= 1
    trained = m["retrieval"]["trained embedder, float"]["no filter"]["ground truth"]
    assert trained["R@20"] >= 0.3, trained  # held-out drawn products among ~200 catalog images: far above chance (0.1)
    assert 0 <= m["detector"]["ap50"] <= 1 and m["detector"]["objects"] == s["query_objects"]
    assert set(m["per_transform"]) >= {"background", "scale", "rotation", "light", "blur", "jpeg", "occlusion"}
