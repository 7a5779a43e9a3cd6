"""Search by video on clips of held-out products: python -m bench.video_search [--clips 40] [--frames 10].

Issue 11's benchmark (a benchmark that prints numbers, not a test). In one run, on generated clips
(export/video_clips.py: products never trained on, on held-out background photos, camera shake, drifting
light, 30 % badly degraded frames, a share of clips with two products):

- top-1 product accuracy from one frame: the middle frame of the clip, and the average over the sampled
  frames (``client.search.search_image`` on each, as ``client.search`` does it: with its geometric re-ranking;
  the object at the product's true box), versus the vote (``client.video.search_video``, which votes over the
  views' cosine hits: the object whose best view overlaps the product's true box in that frame);
- tracks: per product, how many objects name it at top-1 (two-product clips: both, each once), and the
  objects that match no product (false tracks);
- time: a 10-second 720p clip (30 fps) answered end to end, median of 3 runs, with the breakdown.

The catalog is every product's catalog image (training and held-out products, ``--distractors`` drawn
products more), indexed with the classifier's categories into a temporary embedded store; a tritonserver
is started for the run on free ports (unless --triton-url). Writes data/bench/video/video_search.{json,md,png}
and example.html (the --html report of a two-product clip).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench" / "video"
MATCH_IOU = 0.3  # an object is about a product when its box overlaps the product's true box this much


def write_catalog(folder: Path, products, n_distractors: int, seed: int) -> int:
    from export.products import synthetic_products

    items = list(products)
    if n_distractors:
        per_class = -(-n_distractors // 8)
        items += synthetic_products(per_class, seed=seed + 1000, prefix="distractor_")[:n_distractors]
    for p in items:
        d = folder / p.category
        d.mkdir(parents=True, exist_ok=True)
        p.catalog_image().save(d / f"{p.product_id}.jpg", quality=92)
    return len(items)


def _iou(a, b) -> float:
    from client.imaging import box_iou

    return float(box_iou(a, b)[0, 0]) if a is not None and b is not None else 0.0


def single_frames(path: Path, truth: dict, client, store, frames: int) -> dict:
    """Per product: top-1 correct on each sampled frame (the reported object with the largest overlap with its
    true box there, >= MATCH_IOU), and on the clip's middle frame."""
    from client import videoframes
    from client.search import search_image

    indices = videoframes.sample_indices(truth["frame_count"], frames)
    middle = truth["frame_count"] // 2
    wanted = sorted(set(indices) | {middle})
    hits = {o["product_id"]: {} for o in truth["objects"]}
    for f in videoframes.iter_frames(path, skip_similar=0.0, indices=wanted):
        objects = search_image(f.data, client, store, top_k=1, name=f"frame {f.index}")
        for o in truth["objects"]:
            box = o["boxes"][f.index]
            best = max(objects, key=lambda r: _iou(r.box, box))
            ok = _iou(best.box, box) >= MATCH_IOU and bool(best.results) and best.results[0]["product_id"] == o["product_id"]
            hits[o["product_id"]][f.index] = ok
    return {pid: {"middle": h.get(middle, False), "average": float(np.mean([h.get(i, False) for i in indices]))}
            for pid, h in hits.items()}


def vote_clip(path: Path, truth: dict, client, store, frames: int) -> tuple[dict, dict]:
    """search_video on the clip; per product: correct (the object matched to it by box names it at top-1), and
    how many objects name it at top-1; the report and the number of objects that match no product."""
    from client import video

    rep = video.search_video(path, client, store, frames=frames)
    matched = set()
    per = {}
    for o in truth["objects"]:
        pid = o["product_id"]
        cands = [(k, 1.0 if ob["whole_image"] else _iou(ob["box"], o["boxes"][ob["frame"]])) for k, ob in enumerate(rep["objects"])]
        k, iou = max(cands, key=lambda c: c[1]) if cands else (None, 0.0)
        ok = k is not None and iou >= MATCH_IOU and rep["objects"][k]["results"] and rep["objects"][k]["results"][0]["product_id"] == pid
        if k is not None and iou >= MATCH_IOU:
            matched.add(k)
        per[pid] = {"vote": bool(ok), "reported": sum(1 for ob in rep["objects"] if ob["results"] and ob["results"][0]["product_id"] == pid),
                    "tracked": sum(1 for ob in rep["objects"] if not ob["whole_image"] and _iou(ob["box"], o["boxes"][ob["frame"]]) >= MATCH_IOU)}
    return per, {"report": rep, "unmatched_objects": len(rep["objects"]) - len(matched)}


def timing_run(client, store, products, backgrounds, work: Path, frames: int, runs: int = 3) -> dict:
    from client import video
    from export.video_clips import make_clip

    path = work / "timing_720p_10s.mp4"
    truth = make_clip(path, products[:2], backgrounds, np.random.default_rng(99), size=(1280, 720), seconds=10, fps=30)
    reps = []
    for _ in range(runs):
        t = time.perf_counter()
        rep = video.search_video(path, client, store, frames=frames)
        rep["timing"]["wall"] = round(time.perf_counter() - t, 4)
        reps.append(rep)
    med = sorted(reps, key=lambda r: r["timing"]["wall"])[len(reps) // 2]
    return {"clip": {"size": [1280, 720], "seconds": 10, "fps": 30, "frames": truth.frame_count, "bytes": path.stat().st_size},
            "frames_sampled": frames, "frames_used": len(med["frames_used"]), "runs": [r["timing"] for r in reps], "median": med["timing"]}


def summarise(rows: list[dict]) -> dict:
    def acc(sel, key):
        vals = [r[key] for r in rows if sel(r)]
        return (round(float(np.mean(vals)), 4) if vals else None), len(vals)

    groups = {"all": lambda r: True, "one-product clips": lambda r: r["products_in_clip"] == 1,
              "two-product clips": lambda r: r["products_in_clip"] == 2,
              "real photo cutouts": lambda r: "__" in r["product_id"], "drawn products": lambda r: "__" not in r["product_id"]}
    out = {}
    for name, sel in groups.items():
        (mid, n), (avg, _), (vote, _) = acc(sel, "middle"), acc(sel, "average"), acc(sel, "vote")
        out[name] = {"products": n, "middle_frame": mid, "average_frame": avg, "vote": vote}
    two = {r["clip"] for r in rows if r["products_in_clip"] == 2}

    def share(ok) -> float | None:
        return round(float(np.mean([all(ok(r) for r in rows if r["clip"] == c) for c in two])), 4) if two else None
    out["two-product clips: both products tracked, each by exactly one object"] = share(lambda r: r["tracked"] == 1)
    out["two-product clips: both products named, each by exactly one object"] = share(lambda r: r["reported"] == 1 and r["vote"])
    out["products named by more than one object"] = sum(r["reported"] > 1 for r in rows)
    return out


def plot(path: Path, summary: dict, timing: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in ("all", "one-product clips", "two-product clips", "real photo cutouts", "drawn products") if summary[g]["products"]]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    x = np.arange(len(groups))
    for k, (key, label) in enumerate((("middle_frame", "middle frame"), ("average_frame", "one frame (average)"), ("vote", "vote over the clip"))):
        vals = [summary[g][key] or 0 for g in groups]
        bars = ax.bar(x + (k - 1) * 0.27, vals, 0.27, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(0.95, color="grey", ls="--", lw=1)
    ax.set_xticks(x, [f"{g}\n({summary[g]['products']})" for g in groups], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("top-1 product accuracy")
    ax.set_title("held-out products in generated clips")
    ax.legend(fontsize=8, loc="lower right")
    med = timing["median"]
    parts = ["decode", "inference", "search", "voting"]
    bx.barh(parts + ["total"], [med[p] for p in parts] + [med["total"]], color=["C0", "C1", "C2", "C3", "grey"])
    bx.axvline(10, color="grey", ls="--", lw=1)
    bx.set_xlabel("seconds (decode and inference overlap)")
    bx.set_title(f"10-s 720p clip, {timing['frames_sampled']} frames")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--frames", type=int, default=10, help="frames sampled per clip (client.search's default)")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--two-products", type=float, default=0.3, help="share of clips with a second product")
    ap.add_argument("--degraded", type=float, default=0.3, help="share of badly degraded frames")
    ap.add_argument("--distractors", type=int, default=0, help="drawn products added to the catalog")
    ap.add_argument("--no-photoset", action="store_true", help="ignore the photoset the models were trained with")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--triton-url", default=None, help="use this server instead of starting one")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))

    from client import gallery, video
    from client.catalog import index_folder
    from client.store import QdrantStore
    from client.triton import RetrievalClient
    from export import repository
    from export.evaluate import load_setup
    from export.video_clips import make_clips

    setup = load_setup(SimpleNamespace(repository=repository.REPOSITORY, no_photoset=args.no_photoset, synthetic_per_class=None))
    src = setup.sources
    if not src.held_out:
        raise SystemExit("no held-out products in this setup")
    work = Path(tempfile.mkdtemp(prefix="video_bench_"))
    server = None
    url = args.triton_url
    try:
        if not url:
            from deploy.local import LocalTriton, free_port

            server = LocalTriton(work / "triton", repository.REPOSITORY)
            url = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=300).grpc_url
        n_catalog = write_catalog(work / "catalog", src.products + src.held_out, args.distractors, args.seed)
        clips = make_clips(work / "clips", src.held_out, video_backgrounds(src), args.clips, seed=args.seed,
                           two_share=args.two_products, size=(w, h), seconds=args.seconds, fps=args.fps, degraded_share=args.degraded)
        truths = json.loads((work / "clips" / "truth.json").read_text())
        with RetrievalClient(url) as client, QdrantStore(path=work / "qdrant") as store:
            with tqdm(total=n_catalog, desc="indexing", unit="img") as bar:
                index_folder(work / "catalog", client, store, progress=bar.update)
            rows, examples, extra_objects = [], [], 0
            for c, t in zip(tqdm(clips, desc="clips", unit="clip"), truths):
                path = Path(c.path)
                single = single_frames(path, t, client, store, args.frames)
                per, info = vote_clip(path, t, client, store, args.frames)
                extra_objects += info["unmatched_objects"]
                for o in t["objects"]:
                    pid = o["product_id"]
                    rows.append({"clip": path.name, "product_id": pid, "products_in_clip": len(t["objects"]), **single[pid], **per[pid],
                                 "objects": len(info["report"]["objects"])})
                if len(t["objects"]) == 2 and not examples:
                    examples.append((path, info["report"]))
            timing = timing_run(client, store, src.held_out, video_backgrounds(src), work, args.frames)
            if examples:
                images: dict = {}
                rep = video.search_video(examples[0][0], client, store, frames=args.frames, images=images)
                args.out.mkdir(parents=True, exist_ok=True)
                gallery.write_report(args.out / "example.html", rep, images)
    finally:
        if server is not None:
            server.down()
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(rows)
    summary["objects that match no product"] = extra_objects
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_cores": os.cpu_count(), "settings": vars(args) | {"out": str(args.out)},
              "catalog_images": n_catalog, "held_out_products": len(src.held_out), "summary": summary, "timing": timing, "rows": rows}
    lines = report_lines(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "video_search.json").write_text(json.dumps(result, indent=1))
    (args.out / "video_search.md").write_text("\n".join(lines) + "\n")
    plot(args.out / "video_search.png", summary, timing)
    print("\n".join(lines))
    print(f"wrote {args.out}/video_search.json, .md, .png and example.html", file=sys.stderr)
    return 0


def video_backgrounds(src):
    from export.scenes import Backgrounds

    return Backgrounds(src.eval_backgrounds)


def report_lines(r: dict) -> list[str]:
    s, t = r["summary"], r["timing"]
    st = r["settings"]
    lines = [f"# Search by video ({r['date']}, {r['cpu_cores']} CPU cores)", "",
             f"{st['clips']} clips of held-out products ({st['size']}, {st['seconds']:g} s at {st['fps']} fps, {st['degraded']:.0%} "
             f"degraded frames, {st['two_products']:.0%} with two products), {st['frames']} frames sampled; catalog of "
             f"{r['catalog_images']} images ({r['held_out_products']} held-out products). `python -m bench.video_search"
             + "".join(f" --{k.replace('_', '-')} {st[k]}" for k in ("clips", "frames", "seed")) + "`", "",
             "| products | n | middle frame top-1 | one frame top-1 (average) | vote top-1 |", "|---|---|---|---|---|"]
    for g in ("all", "one-product clips", "two-product clips", "real photo cutouts", "drawn products"):
        v = s[g]
        if v["products"]:
            lines.append(f"| {g} | {v['products']} | {v['middle_frame']:.3f} | {v['average_frame']:.3f} | **{v['vote']:.3f}** |")
    tracked = s["two-product clips: both products tracked, each by exactly one object"]
    both = s["two-product clips: both products named, each by exactly one object"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines += ["", f"Two-product clips: both products tracked, each by exactly one object (its best view on the product): "
              f"{fmt(tracked)}; both also named right at top-1: {fmt(both)}. Products named by more than one object: "
              f"{s['products named by more than one object']}; objects matching no product: {s['objects that match no product']} "
              f"(in {st['clips']} clips).", ""]
    m = t["median"]
    lines += [f"Time, a 10-s 720p clip ({t['clip']['frames']} frames, {t['clip']['bytes'] / 1e6:.1f} MB), {t['frames_sampled']} frames "
              f"sampled ({t['frames_used']} used), median of {len(t['runs'])}: **{m['total']:.2f} s** — decode {m['decode']:.2f} s, "
              f"inference {m['inference']:.2f} s (overlaps decoding), search {m['search']:.2f} s, voting {m['voting']:.3f} s."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
