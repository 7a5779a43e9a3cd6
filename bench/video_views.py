"""The view statistics behind client/video.py's tracking constants: python -m bench.video_views [--seeds 7 11].

On generated clips of held-out products (the same generator and settings as ``bench.video_search``; by default
``--clips 60 --two-products 0.6`` with seeds 7 and 11), every sampled frame goes through the ensemble and each
reported object (``client.search.select_objects``) is a *view*; a view belongs to a product when its box overlaps
the product's true box in that frame by IoU >= 0.5 (the best one per product and frame), else it is clutter.
Prints and writes (data/bench/video/view_stats.{md,json}):

- cosine of two views of one product in two frames (all, and both frames clear), and of a view to the mean of
  the product's other clear views (clear views, and per kind of degraded frame);
- cosine of views of two products of one clip, and of a view to another product's or a clutter object's mean;
- box IoU of one product's views in consecutive sampled frames, and of a product's view with the other objects'
  views in the next sampled frame.

Needs no store; a tritonserver is started on free ports unless --triton-url.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

from bench.video_search import OUT, video_backgrounds

MATCH_IOU = 0.5


def clip_views(path: Path, truth: dict, client, frames: int) -> list[dict]:
    """Every reported object of the clip's sampled frames: frame, product id (None: clutter), box, embedding,
    and the frame's degradation ("" when clear)."""
    from client import video, videoframes
    from client.imaging import box_iou

    out = []
    for f in videoframes.iter_frames(path, skip_similar=0.0, indices=videoframes.sample_indices(truth["frame_count"], frames)):
        views, _ = video._views(f, client.infer(f.data, f"frame {f.index}"))
        if not views:
            continue
        boxes = np.array([v.obj.box for v in views], np.float32)
        owner: list[str | None] = [None] * len(views)
        for o in truth["objects"]:
            ious = box_iou(np.array([o["boxes"][f.index]], np.float32), boxes)[0]
            k = int(ious.argmax())
            if ious[k] >= MATCH_IOU and owner[k] is None:
                owner[k] = o["product_id"]
        kind = truth["degraded"].get(str(f.index), "")
        out += [{"frame": f.index, "product": owner[k], "box": boxes[k], "emb": views[k].obj.embedding, "kind": kind}
                for k in range(len(views))]
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def clip_stats(views: list[dict], acc: dict) -> None:
    """Adds this clip's cosines and IoUs to the lists in ``acc``."""
    from client.imaging import box_iou

    prods = sorted({v["product"] for v in views if v["product"]})
    frames = sorted({v["frame"] for v in views})
    for p in prods:
        mine = [v for v in views if v["product"] == p]
        for i, a in enumerate(mine):
            for b in mine[i + 1:]:
                c = float(a["emb"] @ b["emb"])
                acc["same product, two frames"].append(c)
                if not a["kind"] and not b["kind"]:
                    acc["same product, two clear frames"].append(c)
            others = [b["emb"] for b in mine if b is not a and not b["kind"]]
            if others:
                key = "clear view to its product's other clear views" if not a["kind"] else f"{a['kind']} view to its product's clear views"
                acc.setdefault(key, []).append(float(a["emb"] @ _unit(np.mean(others, 0))))
        # means of the other objects: other products, and clutter as one group per clip
        other_means = [_unit(np.mean([v["emb"] for v in views if v["product"] == q], 0)) for q in prods if q != p]
        clutter = [v["emb"] for v in views if v["product"] is None]
        if clutter:
            other_means.append(_unit(np.mean(clutter, 0)))
        for a in mine:
            acc["view to another product's or clutter's mean"] += [float(a["emb"] @ m) for m in other_means]
            for b in views:
                if b["product"] and b["product"] != p and b["frame"] == a["frame"]:
                    acc["views of two products, one frame"].append(float(a["emb"] @ b["emb"]))
        # boxes one sampled frame apart
        for f, g in zip(frames, frames[1:]):
            now = [v for v in mine if v["frame"] == f]
            nxt = [v for v in views if v["frame"] == g]
            if not now:
                continue
            for v in nxt:
                iou = float(box_iou(now[0]["box"][None], v["box"][None])[0, 0])
                acc["box IoU, same product, next sampled frame" if v["product"] == p
                    else "box IoU, another object, next sampled frame"].append(iou)


def summary(acc: dict) -> dict:
    return {k: {"n": len(v), "p5": round(float(np.percentile(v, 5)), 3), "p25": round(float(np.percentile(v, 25)), 3),
                "median": round(float(np.median(v)), 3), "p95": round(float(np.percentile(v, 95)), 3)}
            for k, v in sorted(acc.items()) if v}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=60, help="clips per seed")
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--two-products", type=float, default=0.6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 11])
    ap.add_argument("--no-photoset", action="store_true")
    ap.add_argument("--triton-url", default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from client.triton import RetrievalClient
    from export import repository
    from export.evaluate import load_setup
    from export.video_clips import make_clips

    src = load_setup(SimpleNamespace(repository=repository.REPOSITORY, no_photoset=args.no_photoset, synthetic_per_class=None)).sources
    work = Path(tempfile.mkdtemp(prefix="video_views_"))
    server, url = None, args.triton_url
    acc: dict[str, list[float]] = {k: [] for k in (
        "same product, two frames", "same product, two clear frames", "views of two products, one frame",
        "view to another product's or clutter's mean", "box IoU, same product, next sampled frame",
        "box IoU, another object, next sampled frame")}
    n_clips = n_products = 0
    try:
        if not url:
            from deploy.local import LocalTriton, free_port

            server = LocalTriton(work / "triton", repository.REPOSITORY)
            url = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=300).grpc_url
        with RetrievalClient(url) as client:
            for seed in args.seeds:
                out = work / f"clips_{seed}"
                clips = make_clips(out, src.held_out, video_backgrounds(src), args.clips, seed=seed, two_share=args.two_products,
                                   size=(640, 360), seconds=4.0, fps=10, degraded_share=0.3)  # bench.video_search's defaults
                truths = json.loads((out / "truth.json").read_text())
                for c, t in zip(tqdm(clips, desc=f"clips, seed {seed}", unit="clip"), truths):
                    clip_stats(clip_views(Path(c.path), t, client, args.frames), acc)
                    n_clips += 1
                    n_products += len(t["objects"])
    finally:
        if server is not None:
            server.down()
        shutil.rmtree(work, ignore_errors=True)
    s = summary(acc)
    cmd = "python -m bench.video_views " + " ".join(f"--{k} {v}" for k, v in (("clips", args.clips), ("two-products", args.two_products))) \
        + " --seeds " + " ".join(map(str, args.seeds))
    lines = [f"# Views of products in clips ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"{n_clips} clips, {n_products} products, {args.frames} frames sampled each. `{cmd}`", "",
             "| statistic | n | 5 % | 25 % | median | 95 % |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {v['p5']:.3f} | {v['p25']:.3f} | {v['median']:.3f} | {v['p95']:.3f} |" for k, v in s.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "view_stats.json").write_text(json.dumps({"clips": n_clips, "products": n_products, "stats": s}, indent=1))
    (args.out / "view_stats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
