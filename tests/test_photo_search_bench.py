"""bench.photo_search (issue 9's checks run through the user's commands): how it scores a photo, and one small run
end to end against the session's tritonserver."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.photo_search import SPLITS, by_transform, on_product, score_photo, summarise
from client import spec

ROOT = Path(__file__).resolve().parent.parent

TRUTH = {"photo": "p.jpg", "objects": [{"product_id": "a", "box": [0, 0, 100, 100], "transform": {}},
                                       {"product_id": "b", "box": [200, 0, 300, 100], "transform": {}},
                                       {"product_id": "c", "box": [0, 200, 100, 300], "transform": {}}]}


def _obj(box, ids):
    return {"box": box, "results": [{"product_id": i} for i in ids]}


def test_a_product_counts_where_the_object_that_overlaps_it_most_ranks_it():
    report = {"objects": [
        _obj([0, 0, 100, 100], ["a", "x"]),          # a: exact box, first
        _obj([205, 0, 300, 95], ["x", "y", "b"]),    # b: boxed (IoU 0.9), third
        _obj([0, 240, 100, 340], ["c"]),             # c: IoU 0.43, not boxed: a miss however it ranks
        _obj([500, 500, 600, 600], ["a"]),           # on no product
        _obj(None, ["b"]),                           # the whole image: no box
    ]}
    a, b, c = score_photo(report, TRUTH)
    assert (a["boxed"], a["tight"], a["rank"], a["top1"], a["top5"]) == (True, True, 1, True, True)
    assert (b["boxed"], b["rank"], b["top1"], b["top5"]) == (True, 3, False, True)
    assert (c["boxed"], c["rank"], c["top1"], c["top5"]) == (False, None, False, False)
    assert on_product(report, TRUTH) == [True, True, False, False, False]
    s = summarise([a, b, c], on_product(report, TRUTH), [1, 7, 2], photos=1)
    assert (s["top1"], s["top5"], s["boxed"], s["top1_given_box"]) == (0.333, 0.667, 0.667, 0.5)
    assert (s["objects_per_photo"], s["precision_of_reported_objects"]) == (5, 0.4)
    assert (s["baseline_gt_top1"], s["baseline_gt_top5"]) == (0.333, 0.667)


def test_the_split_by_transform_counts_each_product_in_its_bin():
    rows = [{"boxed": True, "top1": True, "transform": {"scale": 0.12, "blur": 1.7, "rotation": -20.0}},
            {"boxed": True, "top1": False, "transform": {"scale": 0.13, "noise": 5.0, "rotation": 3.0}},
            {"boxed": False, "top1": False, "transform": {"scale": 0.45, "blur": 0.6, "light": 0.6, "occlusion": 0.2}}]
    t = by_transform(rows, base=[1, 4, 1])
    assert list(t) == list(SPLITS)
    assert t["size (of the short side)"] == {
        "< 0.15": {"products": 2, "boxed": 1.0, "top1": 0.5, "top1_given_box": 0.5, "baseline_gt_top1": 0.5},
        ">= 0.4": {"products": 1, "boxed": 0.0, "top1": 0.0, "top1_given_box": None, "baseline_gt_top1": 1.0}}
    assert list(t["blur (Gaussian sigma, px)"]) == ["sharp", "< 1", ">= 1.5"]  # the split's order, empty bins left out
    assert [m["products"] for m in t["blur (Gaussian sigma, px)"].values()] == [1, 1, 1]
    assert t["rotation"][">= 15 deg"]["top1"] == 1.0 and t["rotation"]["< 15 deg"]["products"] == 2
    assert t["light"]["dark < 0.75"]["boxed"] == 0.0 and t["occlusion"]["partly hidden"]["products"] == 1
    assert "baseline_gt_top1" not in by_transform(rows, None)["noise"]["noisy"]


def test_no_object_reported_is_a_miss():
    rows = score_photo({"objects": []}, TRUTH)
    assert [r["boxed"] or r["top5"] for r in rows] == [False] * 3


@pytest.mark.integration
def test_the_benchmark_runs_the_users_commands_end_to_end(triton, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "bench.photo_search", "--photos", "3", "--hard-photos", "0", "--all-held-out",
                          "--triton-url", triton.grpc_url, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((out / "photo_search.json").read_text())
    assert list(result["checks"]) == ["pairs"]
    assert result["embedder_id"].startswith(f"v{spec.EMBEDDER_VERSION}-")  # the models that answered, in the report
    c = result["checks"]["pairs"]
    m = c["summary"]
    assert m["photos"] == 3 and 3 <= m["products"] == len(c["rows"]) <= 6
    assert 0 <= m["top1"] <= m["top5"] <= m["boxed"] <= 1 and m["objects_per_photo"] > 0
    assert c["catalog_images"] > m["products"] and c["index_images_per_second"] > 0
    if (ROOT / "data" / "build" / "backbone.onnx").exists():
        assert 0 <= m["baseline_gt_top1"] <= m["baseline_gt_top5"] <= 1
    assert (out / "pairs.png").stat().st_size > 10_000 and (out / "by_transform.png").stat().st_size > 10_000
    assert sum(b["products"] for b in c["by_transform"]["blur (Gaussian sigma, px)"].values()) == m["products"]
    md = (out / "photo_search.md").read_text()
    assert "| pairs | 3 |" in md and result["embedder_id"] in md and "**pairs, by how the product was shown**" in md
