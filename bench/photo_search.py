"""Photo search run as a new user runs it: python -m bench.photo_search [--photos 40] [--hard-photos 60].

Issue 9's two checks, rebuilt from data the models never trained on (a benchmark that prints numbers, not
a test). Each check is a catalog folder and a folder of photos; the catalog is indexed with
``python -m client.index CATALOG`` and every photo searched with ``python -m client.search --json PHOTO...``,
as subprocesses against a tritonserver started for the run (free ports) and an embedded store of its own, so
what is measured is what a user's commands return:

- ``pairs``: photos of 2 products each (real photo cutouts of held-out products, 0.25-0.5 of the short side,
  turned up to 25 degrees, some seen at an angle or partly hidden) on held-out background photos; the catalog
  is every product's catalog image (training and held-out products).
- ``hard``: photos of 3 small products each (0.12-0.28 of the short side), turned up to 35 degrees, seen at an
  angle (70 %) or partly hidden (50 %), under uneven light (export/scenes.py: uneven_light); the catalog
  also holds ``--distractors`` drawn clip-art products.

Per product in a photo: boxed (a reported object overlaps its true box with IoU >= 0.5; tight: >= 0.7), top-1
and top-5 (the product is first / in the first 5 of the reported object that overlaps it most, if boxed), top-1
given a box, and the precision of the reported objects (those on a product); the same split by how each product was
shown (size, blur, noise, occlusion, angle, rotation, light: ``SPLITS``). In the same run, the off-the-shelf
backbone (the PyPI EfficientNet-Lite0 the models start from, pooled, cosine) ranks the catalog for each
product's *ground-truth* box: the issue's "free baseline". Writes data/bench/photo_search/photo_search.{json,md},
one PNG per check (photos with true and reported boxes) and by_transform.png (boxed and top-1 per bin).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw

from deploy.check_demo import box_iou as iou

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench" / "photo_search"
BOXED_IOU = 0.5
TIGHT_IOU = 0.7
CHECKS = {
    "pairs": dict(n_objects=2, scale_range=(0.25, 0.5), max_rotation=25.0, occlusion_p=0.15, perspective_p=0.3, uneven_light_p=0.0),
    "hard": dict(n_objects=3, scale_range=(0.12, 0.28), max_rotation=35.0, occlusion_p=0.5, perspective_p=0.7, uneven_light_p=1.0),
}


def write_catalog(folder: Path, products) -> dict[str, str]:
    """One flat folder of catalog images (a new user's catalog has no category folders); product id -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for p in products:
        path = folder / f"{p.product_id}.jpg"
        p.catalog_image().save(path, quality=92)
        files[p.product_id] = str(path)
    return files


def write_photos(folder: Path, products, backgrounds, n: int, seed: int, settings: dict) -> list[dict]:
    from export.scenes import make_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = []
    for i in range(n):
        scene = make_scene(products, backgrounds, rng, **settings)
        path = folder / f"photo_{i:03d}.jpg"
        scene.image.save(path, quality=90)
        truth.append({"photo": str(path), "objects": [{"product_id": o.product_id, "box": list(o.box), "transform": o.transform}
                                                      for o in scene.objects]})
    return truth


def run(cmd: list[str], env: dict, desc: str) -> tuple[str, float]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"error: {desc} failed ({proc.returncode}): {' '.join(cmd[:4])} ...\n{proc.stderr[-3000:]}")
    return proc.stdout, seconds


def score_photo(report: dict, truth: dict) -> list[dict]:
    """Per true product: the reported object that overlaps it most, and where its product ranks there."""
    objs = report["objects"]
    rows = []
    for t in truth["objects"]:
        over = [iou(o["box"], t["box"]) if o["box"] is not None else 0.0 for o in objs]
        k = int(np.argmax(over)) if objs else None
        best = over[k] if objs else 0.0
        ids = [r["product_id"] for r in objs[k]["results"]] if objs else []
        rank = ids.index(t["product_id"]) + 1 if best >= BOXED_IOU and t["product_id"] in ids else None
        rows.append({"product_id": t["product_id"], "iou": round(best, 3), "boxed": best >= BOXED_IOU, "tight": best >= TIGHT_IOU,
                     "rank": rank, "top1": rank == 1, "top5": rank is not None and rank <= 5, "transform": t["transform"]})
    return rows


def on_product(report: dict, truth: dict) -> list[bool]:
    """For each reported object: does it overlap a true product (IoU >= BOXED_IOU)?"""
    return [o["box"] is not None and any(iou(o["box"], t["box"]) >= BOXED_IOU for t in truth["objects"]) for o in report["objects"]]


class Baseline:
    """The off-the-shelf backbone's pooled vector (L2-normalised) of boxes cut by the served crop graph."""

    def __init__(self, backbone: Path):
        from export import dataset

        self.runner = dataset.BackboneRunner(backbone)
        self.cutter = dataset.CropCutter()

    def vectors(self, images: list[Image.Image], boxes: list[np.ndarray]) -> np.ndarray:
        from client import imaging, spec

        crops = []
        for img, b in zip(images, boxes):
            lb = dict(zip((t.name for t in spec.PREPROCESS.outputs), imaging.letterbox(img)))
            size = lb[spec.IMAGE_SIZE.name]
            crops.append(self.cutter(lb[spec.CROP_SOURCE.name], size, np.asarray(b, np.float32).reshape(-1, 4) / float(max(size))))
        v = self.runner.run(np.concatenate(crops), desc="baseline", outputs=("pooled",))[0]
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def baseline_ranks(base: Baseline, catalog: dict[str, str], truths: list[dict]) -> list[int]:
    ids = list(catalog)
    imgs = [Image.open(catalog[i]).convert("RGB") for i in ids]
    gallery = base.vectors(imgs, [np.array([0, 0, im.width, im.height], np.float32) for im in imgs])
    photos = [Image.open(t["photo"]).convert("RGB") for t in truths]
    queries = base.vectors(photos, [np.array([o["box"] for o in t["objects"]], np.float32) for t in truths])
    want = np.array([ids.index(o["product_id"]) for t in truths for o in t["objects"]])
    sims = queries @ gallery.T
    return [int((sims[q] > sims[q, w]).sum()) + 1 for q, w in enumerate(want)]


def summarise(rows: list[dict], reported: list[bool], base: list[int] | None, photos: int) -> dict:
    mean = lambda key: round(float(np.mean([r[key] for r in rows])), 3)  # noqa: E731
    boxed = [r for r in rows if r["boxed"]]
    out = {"photos": photos, "products": len(rows), "top1": mean("top1"), "top5": mean("top5"), "boxed": mean("boxed"),
           "tight": mean("tight"), "top1_given_box": round(float(np.mean([r["top1"] for r in boxed])), 3) if boxed else None,
           "objects_per_photo": round(len(reported) / max(photos, 1), 2),
           "precision_of_reported_objects": round(float(np.mean(reported)), 3) if reported else None}
    if base is not None:
        out["baseline_gt_top1"] = round(float(np.mean([r == 1 for r in base])), 3)
        out["baseline_gt_top5"] = round(float(np.mean([r <= 5 for r in base])), 3)
    return out


# How each product was shown (its transform, export/scenes.py: make_scene), in the bins of the by-transform table:
# which conditions cost boxes and which cost the match once boxed. Per split: (bin of a transform, bins in order).
SPLITS = {
    "size (of the short side)": (lambda t: "< 0.15" if t["scale"] < 0.15 else "0.15-0.2" if t["scale"] < 0.2 else "0.2-0.3"
                                 if t["scale"] < 0.3 else "0.3-0.4" if t["scale"] < 0.4 else ">= 0.4",
                                 ("< 0.15", "0.15-0.2", "0.2-0.3", "0.3-0.4", ">= 0.4")),
    "blur (Gaussian sigma, px)": (lambda t: "sharp" if "blur" not in t else "< 1" if t["blur"] < 1 else "1-1.5"
                                  if t["blur"] < 1.5 else ">= 1.5", ("sharp", "< 1", "1-1.5", ">= 1.5")),
    "noise": (lambda t: "noisy" if "noise" in t else "clean", ("clean", "noisy")),
    "occlusion": (lambda t: "partly hidden" if "occlusion" in t else "whole", ("whole", "partly hidden")),
    "perspective": (lambda t: "at an angle" if "perspective" in t else "facing", ("facing", "at an angle")),
    "rotation": (lambda t: ">= 15 deg" if abs(t.get("rotation", 0)) >= 15 else "< 15 deg", ("< 15 deg", ">= 15 deg")),
    "light": (lambda t: "dark < 0.75" if t.get("light", 1) < 0.75 else "normal", ("normal", "dark < 0.75")),
}


def by_transform(rows: list[dict], base: list[int] | None) -> dict[str, dict[str, dict]]:
    """Per SPLITS split and bin (in the split's order; empty bins left out): products, boxed, top-1, top-1 given a
    box and, with ``base`` (the baseline's rank per row), the baseline's top-1 on ground-truth boxes."""
    out: dict[str, dict[str, dict]] = {}
    for split, (bin_of, order) in SPLITS.items():
        groups: dict[str, list[int]] = {b: [] for b in order}
        for i, r in enumerate(rows):
            groups[bin_of(r["transform"])].append(i)
        table = {}
        for name, idx in groups.items():
            if not idx:
                continue
            sel = [rows[i] for i in idx]
            boxed = [r for r in sel if r["boxed"]]
            table[name] = {"products": len(sel), "boxed": round(float(np.mean([r["boxed"] for r in sel])), 3),
                           "top1": round(float(np.mean([r["top1"] for r in sel])), 3),
                           "top1_given_box": round(float(np.mean([r["top1"] for r in boxed])), 3) if boxed else None}
            if base is not None:
                table[name]["baseline_gt_top1"] = round(float(np.mean([base[i] == 1 for i in idx])), 3)
        out[split] = table
    return out


def transform_plot(path: Path, checks: dict) -> None:
    """One panel per split: boxed and top-1 per bin, a bar pair per check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = {n: c["by_transform"] for n, c in checks.items() if c.get("by_transform")}
    if not checks:
        return
    cols = 4
    rows = -(-len(SPLITS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), sharey=True, squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(SPLITS):]:
        ax.axis("off")
    for ax, split in zip(axes, SPLITS):
        labels, boxed, top1 = [], [], []
        for name, tables in checks.items():
            for b, m in tables[split].items():
                labels.append(f"{name}\n{b}\n({m['products']})"); boxed.append(m["boxed"]); top1.append(m["top1"])
        x = np.arange(len(labels))
        ax.bar(x - 0.2, boxed, 0.4, label="boxed", color="#9ab")
        ax.bar(x + 0.2, top1, 0.4, label="top-1", color="#c63")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(split, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def picture(path: Path, truths: list[dict], reports: list[dict], scored: list[list[dict]], n: int = 12) -> None:
    """The first ``n`` photos: true boxes green (thick when found at top-1), reported objects red, each with
    its first result's product id."""
    thumbs = []
    for t, rep, rows in list(zip(truths, reports, scored))[:n]:
        img = Image.open(t["photo"]).convert("RGB")
        d = ImageDraw.Draw(img)
        for o in rep["objects"]:
            if o["box"] is not None:
                d.rectangle(o["box"], outline=(220, 40, 40), width=2)
                first = o["results"][0]["product_id"] if o["results"] else "-"
                d.text((o["box"][0] + 3, o["box"][3] - 12), first.split("__")[-1][:22], fill=(255, 255, 0))
        for o, r in zip(t["objects"], rows):
            d.rectangle(o["box"], outline=(40, 200, 40), width=4 if r["top1"] else 1)
        img.thumbnail((360, 300))
        thumbs.append(img)
    if not thumbs:
        return
    cols = 4
    sheet = Image.new("RGB", (cols * 364, -(-len(thumbs) // cols) * 304), "white")
    for i, im in enumerate(thumbs):
        sheet.paste(im, ((i % cols) * 364, (i // cols) * 304))
    sheet.save(path)


def report_lines(result: dict) -> list[str]:
    s = result["settings"]
    lines = [f"# Photo search as a user runs it ({result['date']}, {result['cpu_cores']} CPU cores, embedder "
             f"`{result.get('embedder_id', '?')}`)", "",
             f"`python -m bench.photo_search --photos {s['photos']} --hard-photos {s['hard_photos']} --distractors {s['distractors']} "
             f"--seed {s['seed']}`: held-out real products on held-out photos; `client.index CATALOG`, then `client.search --json` "
             "on every photo. Baseline: the off-the-shelf EfficientNet-Lite0, cosine, on *ground-truth* boxes.", "",
             "| check | photos | products | catalog images | top-1 | top-5 | boxed (IoU >= 0.5) | tight (>= 0.7) | top-1 given a box "
             "| objects per photo | precision of reported objects | baseline top-1 / top-5 (gt boxes) | index img/s | search s/photo |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in result["checks"].items():
        m = c["summary"]
        base = f"{m['baseline_gt_top1']:.3f} / {m['baseline_gt_top5']:.3f}" if "baseline_gt_top1" in m else "–"
        given = "–" if m["top1_given_box"] is None else f"{m['top1_given_box']:.3f}"
        lines.append(f"| {name} | {m['photos']} | {m['products']} | {c['catalog_images']} | **{m['top1']:.3f}** | {m['top5']:.3f} | "
                     f"{m['boxed']:.3f} | {m['tight']:.3f} | {given} | {m['objects_per_photo']:.2f} | "
                     f"{m['precision_of_reported_objects']:.3f} | {base} | {c['index_images_per_second']:.2f} | "
                     f"{c['search_seconds_per_photo']:.2f} |")
    for name, c in result["checks"].items():
        if not c.get("by_transform"):
            continue
        lines += ["", f"**{name}, by how the product was shown** (top-1 given a box: of the products boxed; baseline: "
                  "ground-truth boxes)", "",
                  "| split | bin | products | boxed | top-1 | top-1 given a box | baseline top-1 |", "|---|---|---|---|---|---|---|"]
        for split, table in c["by_transform"].items():
            for b, m in table.items():
                given = "–" if m["top1_given_box"] is None else f"{m['top1_given_box']:.3f}"
                base = f"{m['baseline_gt_top1']:.3f}" if "baseline_gt_top1" in m else "–"
                lines.append(f"| {split} | {b} | {m['products']} | {m['boxed']:.3f} | {m['top1']:.3f} | {given} | {base} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=40, help="photos of the pairs check")
    ap.add_argument("--hard-photos", type=int, default=60, help="photos of the hard check")
    ap.add_argument("--distractors", type=int, default=1000, help="drawn clip-art products added to the hard check's catalog")
    ap.add_argument("--all-held-out", action="store_true", help="also drawn held-out products in the photos (default: real cutouts only)")
    ap.add_argument("--no-photoset", action="store_true", help="ignore the photoset the models were trained with")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--triton-url", default=None, help="use this server instead of starting one")
    ap.add_argument("--build-dir", type=Path, default=ROOT / "data" / "build", help="where the build left backbone.onnx (the baseline)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from export import repository
    from export.evaluate import load_setup
    from export.products import synthetic_products
    from export.scenes import Backgrounds

    setup = load_setup(SimpleNamespace(repository=repository.REPOSITORY, no_photoset=args.no_photoset, synthetic_per_class=None))
    src = setup.sources
    query_products = [p for p in src.held_out if args.all_held_out or "__" in p.product_id]
    if not query_products:
        raise SystemExit("error: no held-out real products in this setup (no photoset?): pass --all-held-out")
    backbone = args.build_dir / "backbone.onnx"
    base = None if args.no_baseline or not backbone.exists() else Baseline(backbone)
    if base is None and not args.no_baseline:
        print(f"{backbone} is missing (python -m export.build writes it): no baseline", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="photo_bench_"))
    server, url = None, args.triton_url
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu_cores": os.cpu_count(), "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "checks": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        if not url:
            from deploy.local import LocalTriton, free_port

            server = LocalTriton(work / "triton", repository.REPOSITORY)
            url = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=300).grpc_url
        from client.triton import RetrievalClient

        with RetrievalClient(url) as client:  # which models answered: runs are comparable only between equal ids
            result["embedder_id"] = client.embedder_id()
        distractors = synthetic_products(-(-args.distractors // 8), seed=args.seed + 1000, prefix="distractor_")[:args.distractors]
        for k, (name, settings) in enumerate(CHECKS.items()):
            n_photos = args.photos if name == "pairs" else args.hard_photos
            if n_photos <= 0:
                continue
            folder = work / name
            catalog = write_catalog(folder / "catalog", src.products + src.held_out + (distractors if name == "hard" else []))
            truths = write_photos(folder / "photos", query_products, Backgrounds(src.eval_backgrounds), n_photos, args.seed + k, settings)
            env = os.environ | {"TRITON_URL": url, "QDRANT_PATH": str(folder / "qdrant")}
            print(f"{name}: indexing {len(catalog)} catalog images ...", file=sys.stderr, flush=True)
            _, index_s = run([sys.executable, "-m", "client.index", str(folder / "catalog")], env, "client.index")
            print(f"{name}: searching {n_photos} photos ...", file=sys.stderr, flush=True)
            out, search_s = run([sys.executable, "-m", "client.search", "--json", *[t["photo"] for t in truths]], env, "client.search")
            reports = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            if len(reports) != len(truths):
                raise SystemExit(f"error: client.search answered {len(reports)} of {len(truths)} photos")
            scored = [score_photo(r, t) for r, t in zip(reports, truths)]
            reported = [x for r, t in zip(reports, truths) for x in on_product(r, t)]
            ranks = baseline_ranks(base, catalog, truths) if base else None
            rows = [x for s in scored for x in s]
            result["checks"][name] = {"catalog_images": len(catalog), "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
                                      "index_seconds": round(index_s, 1), "index_images_per_second": round(len(catalog) / index_s, 2),
                                      "search_seconds_per_photo": round(search_s / n_photos, 3),
                                      "summary": summarise(rows, reported, ranks, n_photos),
                                      "by_transform": by_transform(rows, ranks), "rows": rows}
            picture(args.out / f"{name}.png", truths, reports, scored)
    finally:
        if server is not None:
            server.down()
        shutil.rmtree(work, ignore_errors=True)
    transform_plot(args.out / "by_transform.png", result["checks"])
    lines = report_lines(result)
    (args.out / "photo_search.json").write_text(json.dumps(result, indent=1))
    (args.out / "photo_search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}/photo_search.json, .md, by_transform.png and {', '.join(n + '.png' for n in result['checks'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
