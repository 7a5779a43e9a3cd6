"""python -m export.evaluate: the retrieval benchmark on products the models never saw (not a test).

Runs the exported ONNX files of model_repository/ (the files Triton serves; the integration tests
check the ensemble equals them) over:
- a gallery of every product's catalog image (training and held-out products) plus >= 1,000
  distractor catalog images (drawn products from another seed, and photos);
- query scenes of held-out products only, on background photos never used in training, each object
  with its transforms recorded.
It reports detector AP@0.5, classifier accuracy, Recall@1/5/20 and mAP with detected and with
ground-truth boxes, with and without the category filter, per transform, for the trained embedder,
for the off-the-shelf pretrained backbone (baseline, same run) and for binary codes, and writes
report.md, metrics.json and examples.png to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from client import imaging, spec
from export import dataset, repository
from export.pipeline import Pipeline
from export.products import synthetic_products
from export.scenes import Backgrounds, make_scene
from export.train import detection_metrics

ROOT = Path(__file__).resolve().parent.parent
KS = (1, 5, 20)
BASELINE = "baseline"  # Runner.describe: the off-the-shelf backbone's vectors, next to the spec outputs
CATEGORY, CATEGORY_SCORE, EMBEDDINGS = spec.CATEGORY.name, spec.CATEGORY_SCORE.name, spec.EMBEDDINGS.name


class Runner:
    """The served ONNX files chained in process (export.pipeline), and the off-the-shelf backbone."""

    def __init__(self, repo: Path, backbone: Path):
        try:
            self.pipeline = Pipeline(repo)
        except FileNotFoundError as exc:
            raise SystemExit(f"error: {exc}") from exc
        self.baseline = dataset.BackboneRunner(backbone)

    def detect(self, image: Image.Image) -> dict[str, np.ndarray]:
        """One image through preprocess, detector and crop: every tensor of those steps, by spec name."""
        letterboxed = dict(zip((t.name for t in spec.PREPROCESS.outputs), imaging.letterbox(image)))
        return self.pipeline.run(letterboxed, steps=(spec.DETECTOR, spec.CROP))

    def describe(self, crops: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
        """Classifier and embedder outputs of every crop (by spec name), and under ``BASELINE`` the
        off-the-shelf backbone's L2-normalised pooled vector."""
        names = [t.name for t in (*spec.CLASSIFIER.outputs, *spec.EMBEDDER.outputs) if t != spec.EMBEDDER_ID]
        out: dict[str, list] = {n: [] for n in names}
        for i in tqdm(range(0, len(crops), batch), desc="classify+embed", unit="batch", leave=False):
            feed = {spec.CROPS.name: crops[i:i + batch]}
            got = self.pipeline.step(spec.CLASSIFIER.name, feed) | self.pipeline.step(spec.EMBEDDER.name, feed)
            for n in names:
                out[n].append(got[n])
        res = {k: np.concatenate(v) for k, v in out.items()}
        base = self.baseline.run(crops, batch=batch, desc="baseline", outputs=("pooled",))[0]
        res[BASELINE] = base / np.linalg.norm(base, axis=1, keepdims=True)
        return res


@dataclass
class GalleryItem:
    name: str
    product_id: str | None  # None for distractors that are not products
    image: Image.Image
    kind: str  # "product", "held-out product", "distractor"


def gallery_items(sources: dataset.Sources, n_distractors: int, seed: int) -> list[GalleryItem]:
    items = [GalleryItem(p.product_id, p.product_id, p.catalog_image(), "product") for p in sources.products]
    items += [GalleryItem(p.product_id, p.product_id, p.catalog_image(), "held-out product") for p in sources.held_out]
    photos = sources.train_backgrounds  # never the query backgrounds
    n_drawn = max(0, n_distractors - len(photos))
    per_class = math.ceil(n_drawn / 8)
    for p in synthetic_products(per_class, seed=seed + 1000, prefix="distractor_")[:n_drawn]:
        items.append(GalleryItem(p.product_id, None, p.catalog_image(), "distractor"))
    for path in photos[:n_distractors - n_drawn]:
        with Image.open(path) as im:
            items.append(GalleryItem(path.name, None, im.convert("RGB"), "distractor"))
    return items


def run_catalog(runner: Runner, items: list[GalleryItem]) -> dict[str, np.ndarray]:
    """Each catalog image as the indexer stores it: its best detection, else the whole image."""
    crops = []
    for it in tqdm(items, desc="gallery", unit="image"):
        out = runner.detect(it.image)
        valid, scores = out[spec.VALID.name], out[spec.SCORES.name]
        rows = np.where(valid)[0]
        best = rows[np.argmax(scores[rows])] if len(rows) else spec.NUM_ROWS - 1
        crops.append(out[spec.CROPS.name][best])
    return runner.describe(np.stack(crops))


@dataclass
class Query:
    scene: int
    product_id: str
    fine_class: str
    gt_box: tuple
    transform: dict
    background: str
    det_row: int | None = None  # index into the detected-crop arrays, None when the detector missed it
    det_box: tuple | None = None


@dataclass
class QuerySet:
    queries: list[Query]  # every object of every scene
    gt_crops: np.ndarray  # one crop per query, cut at its ground-truth box
    det_crops: np.ndarray  # one crop per query the detector found (Query.det_row)
    detector: dict  # detection_metrics over the scenes
    thumbs: list[Image.Image]  # the first scenes, for examples.png


def match_detections(boxes_px: np.ndarray, scores: np.ndarray, rows: list[int], gt: np.ndarray) -> dict[int, int]:
    """Ground-truth object -> detection row: valid detections, highest score first, IoU >= 0.5."""
    taken: dict[int, int] = {}
    if len(rows) and len(gt):
        ious = imaging.box_iou(boxes_px[rows], gt)
        for r in np.argsort(-scores[rows]):
            j = int(np.argmax(np.where([k in taken for k in range(len(gt))], -1, ious[r])))
            if ious[r, j] >= 0.5 and j not in taken:
                taken[j] = rows[r]
    return taken


def run_scenes(runner: Runner, sources: dataset.Sources, n_scenes: int, seed: int) -> QuerySet:
    rng = np.random.default_rng(seed)
    bgs = Backgrounds(sources.eval_backgrounds)
    queries: list[Query] = []
    gt_crops, det_crops = [], []
    det_boxes_all, det_scores_all, gt_all, thumbs = [], [], [], []
    cutter = dataset.CropCutter()
    for i in tqdm(range(n_scenes), desc="query scenes", unit="scene"):
        scene = make_scene(sources.held_out, bgs, rng)
        out = runner.detect(scene.image)
        src, size = out[spec.CROP_SOURCE.name], out[spec.IMAGE_SIZE.name]
        boxes_px, scores, crops = out[spec.BOXES.name], out[spec.SCORES.name], out[spec.CROPS.name]
        rows = [r for r in np.where(out[spec.VALID.name])[0] if r < spec.MAX_OBJECTS]
        gt = np.array([o.box for o in scene.objects], np.float32).reshape(-1, 4)
        gt_norm = gt / float(max(size))
        gt_all.append(gt_norm)
        det_boxes_all.append(out[spec.DET_BOXES.name][0]); det_scores_all.append(out[spec.DET_SCORES.name][0])
        taken = match_detections(boxes_px, scores, rows, gt)
        if len(gt):
            gt_crops.append(cutter(src, size, gt_norm))
        for j, o in enumerate(scene.objects):
            q = Query(i, o.product_id, o.fine_class, o.box, o.transform,
                      "procedural" if scene.background == "procedural" else "photo")
            if j in taken:
                q.det_row, q.det_box = len(det_crops), tuple(float(v) for v in boxes_px[taken[j]])
                det_crops.append(crops[taken[j]])
            queries.append(q)
        if len(thumbs) < 200:
            thumbs.append(scene.image)
    empty = np.zeros((0, 3, spec.CROP_SIZE, spec.CROP_SIZE), np.uint8)
    return QuerySet(queries, np.concatenate(gt_crops), np.stack(det_crops) if det_crops else empty,
                    detection_metrics(det_boxes_all, det_scores_all, gt_all), thumbs)


def ranks(q: np.ndarray, g: np.ndarray, target: np.ndarray, allowed: np.ndarray | None = None, binary: bool = False) -> np.ndarray:
    """Rank (1 = first) of each query's target gallery row; inf when filtered out. Ties count against
    the query (pessimistic), which matters for binary codes."""
    if binary:
        qb, gb = np.sign(q) + (q == 0), np.sign(g) + (g == 0)
        sims = qb @ gb.T  # = D - 2 * hamming
    else:
        sims = q @ g.T
    if allowed is not None:
        sims = np.where(allowed, sims, -np.inf)
    tgt = sims[np.arange(len(q)), target]
    r = 1 + (sims >= tgt[:, None]).sum(1) - 1
    r = r.astype(float)
    r[~np.isfinite(tgt)] = np.inf
    return r


def summarise(r: np.ndarray) -> dict:
    if len(r) == 0:
        return {f"R@{k}": float("nan") for k in KS} | {"mAP": float("nan"), "n": 0}
    out = {f"R@{k}": round(float(np.mean(r <= k)), 4) for k in KS}
    out["mAP"] = round(float(np.mean(np.where(np.isfinite(r), 1 / r, 0))), 4)  # one relevant item: AP = 1/rank
    out["n"] = int(len(r))
    return out


TRANSFORM_BINS = {
    "product": lambda t, q: "photo cutout" if "__" in q.product_id else "drawn",
    "background": lambda t, q: q.background,
    "scale": lambda t, q: "small <0.3" if t["scale"] < 0.3 else "medium 0.3-0.45" if t["scale"] < 0.45 else "large >=0.45",
    "rotation": lambda t, q: "|r|<8" if abs(t["rotation"]) < 8 else "8-16" if abs(t["rotation"]) < 16 else ">=16",
    "perspective": lambda t, q: "yes" if "perspective" in t else "no",
    "light": lambda t, q: "dark <0.75" if t["light"] < 0.75 else "bright >1.1" if t["light"] > 1.1 else "normal",
    "colour": lambda t, q: "shifted" if "colour" in t else "no",
    "contrast": lambda t, q: "changed" if "contrast" in t else "no",
    "blur": lambda t, q: "blurred" if "blur" in t else "sharp",
    "noise": lambda t, q: "noisy" if "noise" in t else "clean",
    "jpeg": lambda t, q: "q<50" if t.get("jpeg", 100) < 50 else "q>=50",
    "occlusion": lambda t, q: "occluded" if "occlusion" in t else "no",
}


@dataclass
class Setup:
    log: dict  # the training log of the models under test
    photoset: str | None
    sources: dataset.Sources
    merge_map: dict[str, str]


def load_setup(args) -> Setup:
    """The data the models were trained with (from their training log), with its held-out products."""
    log_path = args.repository / "training_log.json"
    if not log_path.exists():
        raise SystemExit(f"error: {log_path} is missing; build the models first: python -m export.build")
    log = json.loads(log_path.read_text())
    if "held_out_products" not in log["data"].get("counts", {}):
        raise SystemExit(f"error: {log_path}: these models were trained before the product split; rebuild with --force")
    photoset = None if args.no_photoset else log["data"].get("photoset")
    if photoset and not Path(photoset).is_dir():
        raise SystemExit(f"error: the models were trained with the photoset {photoset}, which is not here; "
                         "pass --no-photoset to evaluate on generated data only")
    per_class = args.synthetic_per_class or log["data"]["synthetic_per_class"]
    dcfg = dataset.DataConfig(synthetic_per_class=per_class, photoset=photoset, seed=log["data"]["seed"])
    return Setup(log, photoset, dataset.load_sources(dcfg), log["category_merge"]["merge_map"])


@dataclass
class Described:
    """The gallery and the queries through the classifier and the embedders (Runner.describe)."""
    gallery: dict[str, np.ndarray]
    gt: dict[str, np.ndarray]  # query crops at ground-truth boxes
    det: dict[str, np.ndarray] | None  # query crops at detected boxes (None: nothing detected)
    target: np.ndarray  # each query's gallery row
    found: np.ndarray  # bool: the detector found the query's object
    det_rows: np.ndarray  # each query's row in ``det`` (0 when not found)


def retrieval_table(d: Described, space: str, filtered: float | None, binary: bool = False) -> dict:
    """Per box source, the summary and ranks of every query in embedding ``space``. filtered: None = whole
    gallery; tau = search within the query's predicted category when its category_score >= tau (0 =
    always), as client.search does with spec.CATEGORY_FILTER_MIN_SCORE."""
    n = len(d.target)
    res = {}
    for boxes in ("detected", "ground truth"):
        if boxes == "ground truth":
            q, qidx, ok = d.gt, np.arange(n), np.ones(n, bool)
        else:
            if d.det is None:
                res[boxes] = summarise(np.full(n, np.inf))
                continue
            q, qidx, ok = d.det, d.det_rows, d.found
        allowed = None
        if filtered is not None:
            allowed = (d.gallery[CATEGORY][None, :] == q[CATEGORY][qidx][:, None]) | (q[CATEGORY_SCORE][qidx] < filtered)[:, None]
        r = ranks(q[space][qidx], d.gallery[space], d.target, allowed, binary)
        r[~ok] = np.inf
        res[boxes] = summarise(r)
        res[boxes]["_ranks"] = r
    return res


def retrieval_metrics(d: Described) -> tuple[dict, dict]:
    """The retrieval tables (trained embedder float and binary, baseline) and the category filter sweep."""
    tau = spec.CATEGORY_FILTER_MIN_SCORE
    policy = f"category filter if score >= {tau} (client.search)"
    results = {
        "trained embedder, float": {"no filter": retrieval_table(d, EMBEDDINGS, None), policy: retrieval_table(d, EMBEDDINGS, tau),
                                    "category filter always": retrieval_table(d, EMBEDDINGS, 0.0)},
        "trained embedder, binary (sign bits)": {"no filter": retrieval_table(d, EMBEDDINGS, None, True),
                                                 policy: retrieval_table(d, EMBEDDINGS, tau, True)},
        "off-the-shelf backbone (baseline)": {"no filter": retrieval_table(d, BASELINE, None), policy: retrieval_table(d, BASELINE, tau)},
    }
    sweep = {}
    for t in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        r = retrieval_table(d, EMBEDDINGS, t)
        sweep[str(t)] = {"R@5 det": r["detected"]["R@5"], "R@5 gt": r["ground truth"]["R@5"],
                         "share of queries filtered (gt)": round(float(np.mean(d.gt[CATEGORY_SCORE] >= t)), 3)}
    return results, sweep


def classifier_metrics(d: Described, queries: list[Query], setup: Setup, row_of: dict[str, int]) -> dict:
    """The classifier on ground-truth crops of held-out products, and on their catalog images."""
    merge_map = setup.merge_map
    known = np.array([q.fine_class in merge_map for q in queries])
    fine_ok = np.array([f == q.fine_class for f, q in zip(d.gt[spec.FINE_CLASS.name], queries)])
    cat_ok = np.array([q.fine_class in merge_map and c == merge_map[q.fine_class] for c, q in zip(d.gt[CATEGORY], queries)])
    agree = d.gt[CATEGORY] == d.gallery[CATEGORY][d.target]
    return {
        "queries_of_known_fine_class": int(known.sum()), "queries_of_unseen_fine_class": int((~known).sum()),
        "fine_accuracy (known classes)": round(float(fine_ok[known].mean()), 4) if known.any() else None,
        "category_accuracy (known classes)": round(float(cat_ok[known].mean()), 4) if known.any() else None,
        "query category == its catalog image's category (all)": round(float(agree.mean()), 4),
        "catalog images: category accuracy (held-out products of known classes)": round(float(np.mean([
            d.gallery[CATEGORY][row_of[p.product_id]] == merge_map[p.fine_class]
            for p in setup.sources.held_out if p.fine_class in merge_map])), 4),
    }


def per_transform_metrics(results: dict, queries: list[Query], found: np.ndarray) -> dict:
    """Recall of the trained embedder (no filter) and of the baseline, per bin of each scene transform."""
    trained_det = results["trained embedder, float"]["no filter"]["detected"]["_ranks"]
    trained_gt = results["trained embedder, float"]["no filter"]["ground truth"]["_ranks"]
    base_det = results["off-the-shelf backbone (baseline)"]["no filter"]["detected"]["_ranks"]
    per_transform = {}
    for name, fn in TRANSFORM_BINS.items():
        bins: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            bins.setdefault(fn(q.transform, q), []).append(i)
        per_transform[name] = {b: {"n": len(ix), "detected": round(float(found[ix].mean()), 3),
                                   "R@1 det": round(float(np.mean(trained_det[ix] <= 1)), 3),
                                   "R@5 det": round(float(np.mean(trained_det[ix] <= 5)), 3),
                                   "R@1 gt": round(float(np.mean(trained_gt[ix] <= 1)), 3),
                                   "baseline R@1 det": round(float(np.mean(base_det[ix] <= 1)), 3)}
                               for b, ix in sorted(bins.items())}
    return per_transform


def evaluate(args) -> dict:
    t0 = time.time()
    setup = load_setup(args)
    sources = setup.sources
    runner = Runner(args.repository, args.build_dir / "backbone.onnx")
    timings = {}
    items = gallery_items(sources, args.distractors, args.seed)
    t = time.time()
    gallery = run_catalog(runner, items)
    timings["gallery_s"] = round(time.time() - t, 1)
    row_of = {it.product_id: i for i, it in enumerate(items) if it.product_id}
    t = time.time()
    qs = run_scenes(runner, sources, args.scenes, args.seed)
    timings["scenes_s"] = round(time.time() - t, 1)
    t = time.time()
    gt = runner.describe(qs.gt_crops)
    det = runner.describe(qs.det_crops) if len(qs.det_crops) else None
    timings["query_crops_s"] = round(time.time() - t, 1)
    queries = qs.queries
    d = Described(gallery, gt, det, np.array([row_of[q.product_id] for q in queries]),
                  np.array([q.det_row is not None for q in queries]),
                  np.array([q.det_row if q.det_row is not None else 0 for q in queries]))
    results, filter_sweep = retrieval_metrics(d)
    classifier = classifier_metrics(d, queries, setup, row_of)
    per_transform = per_transform_metrics(results, queries, d.found)
    timings["total_s"] = round(time.time() - t0, 1)
    metrics = {
        "setup": {"profile": setup.log.get("profile"), "photoset": setup.photoset, "seed": args.seed,
                  "training_products": len(sources.products), "held_out_products": len(sources.held_out),
                  "gallery": len(items), "distractors": sum(it.kind == "distractor" for it in items),
                  "query_scenes": args.scenes, "query_objects": len(queries),
                  "eval_background_photos": len(sources.eval_backgrounds), "categories": len(set(setup.merge_map.values())),
                  "score_threshold": spec.SCORE_THRESHOLD},
        "detector": qs.detector, "detector_found_queries": round(float(d.found.mean()), 4),
        "classifier": classifier, "retrieval": results, "category_filter_sweep": filter_sweep, "per_transform": per_transform, "timings": timings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    examples(args.out / "examples.png", queries, qs.thumbs, items, d)
    return write_metrics(args.out, metrics)


def write_metrics(out: Path, metrics: dict) -> dict:
    """metrics.json and report.md (without the per-query ranks); returns what was written."""
    clean = json.loads(json.dumps(metrics, default=lambda o: None))
    for v in clean["retrieval"].values():
        for w in v.values():
            for x in w.values():
                x.pop("_ranks", None)
    (out / "metrics.json").write_text(json.dumps(clean, indent=1))
    (out / "report.md").write_text(report(clean))
    return clean


def examples(path: Path, queries: list[Query], thumbs, items: list[GalleryItem], d: Described, n: int = 8) -> None:
    """Rows of: the query scene with its box, then the top-5 catalog images (the right one framed green)."""
    if d.det is None:
        return
    cand = [i for i, q in enumerate(queries) if d.found[i] and q.scene < len(thumbs)]
    if not cand:
        return
    sims = d.det[EMBEDDINGS][d.det_rows[cand]] @ d.gallery[EMBEDDINGS].T
    target = d.target
    top = np.argsort(-sims, axis=1)[:, :5]
    hit = top[:, 0] == target[cand]
    pick = [c for c, h in zip(range(len(cand)), hit) if h][: n // 2] + [c for c, h in zip(range(len(cand)), hit) if not h][: n // 2]
    cell = 150
    sheet = Image.new("RGB", (cell * 6 + 20, cell * len(pick)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, c in enumerate(pick):
        q = queries[cand[c]]
        sc = thumbs[q.scene].copy()
        ImageDraw.Draw(sc).rectangle(q.det_box, outline=(255, 0, 0), width=4)
        sc.thumbnail((cell - 6, cell - 6))
        sheet.paste(sc, (3, row * cell + 3))
        for k, g in enumerate(top[c]):
            im = items[g].image.copy()
            im.thumbnail((cell - 12, cell - 12))
            x, y = 20 + cell * (k + 1), row * cell
            sheet.paste(im, (x + 6, y + 6))
            if g == target[cand[c]]:
                draw.rectangle([x + 1, y + 1, x + cell - 2, y + cell - 2], outline=(0, 170, 0), width=5)
            draw.text((x + 6, y + cell - 14), f"{sims[c, g]:.2f}", fill=(0, 0, 0))
    sheet.save(path)


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" if isinstance(v, float) else str(v)


def report(m: dict) -> str:
    s = m["setup"]
    lines = ["# Retrieval evaluation (held-out products)", "",
             f"Profile `{s['profile']}`, photoset: `{s['photoset']}`, evaluation seed {s['seed']}. "
             f"{s['held_out_products']} held-out products (never in training), {s['training_products']} training products; "
             f"gallery of {s['gallery']} catalog images ({s['distractors']} distractors); {s['query_objects']} query objects in "
             f"{s['query_scenes']} scenes on {s['eval_background_photos']} held-out background photos (and procedural ones); "
             f"{s['categories']} merged categories; detector threshold {s['score_threshold']}.", "",
             "## Detector (query scenes)", "",
             "| AP@0.5 | recall @ threshold | precision @ threshold | objects |", "|---|---|---|---|",
             f"| {_fmt(m['detector']['ap50'])} | {_fmt(m['detector']['recall_at_threshold'])} | "
             f"{_fmt(m['detector']['precision_at_threshold'])} | {m['detector']['objects']} |", "",
             "## Classifier (ground-truth crops of held-out products)", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in m["classifier"].items()]
    lines += ["", "## Retrieval", "",
              "mAP: one relevant catalog image per query, so AP = 1/rank (mean reciprocal rank). A query whose object the "
              "detector missed (no valid box with IoU >= 0.5) counts as a miss at every k.", "",
              "| embedding | filter | boxes | R@1 | R@5 | R@20 | mAP | n |", "|---|---|---|---|---|---|---|---|"]
    for emb, by_filter in m["retrieval"].items():
        for filt, by_boxes in by_filter.items():
            for boxes, r in by_boxes.items():
                lines.append(f"| {emb} | {filt} | {boxes} | {_fmt(r['R@1'])} | {_fmt(r['R@5'])} | {_fmt(r['R@20'])} | {_fmt(r['mAP'])} | {r['n']} |")
    lines += ["", "Category filter threshold sweep (trained embedder): R@5 with the filter applied when the query's "
              "category_score >= threshold (0 = always); compare with the no-filter rows above.", "",
              "| threshold | R@5 detected | R@5 ground truth | queries filtered |", "|---|---|---|---|"]
    for t, r in m["category_filter_sweep"].items():
        lines.append(f"| {t} | {_fmt(r['R@5 det'])} | {_fmt(r['R@5 gt'])} | {_fmt(r['share of queries filtered (gt)'])} |")
    lines += ["", "## Per transform (trained embedder, no filter)", "",
              "| transform | bin | n | detected | R@1 det | R@5 det | R@1 gt | baseline R@1 det |", "|---|---|---|---|---|---|---|---|"]
    for name, bins in m["per_transform"].items():
        for b, r in bins.items():
            lines.append(f"| {name} | {b} | {r['n']} | {_fmt(r['detected'])} | {_fmt(r['R@1 det'])} | {_fmt(r['R@5 det'])} | "
                         f"{_fmt(r['R@1 gt'])} | {_fmt(r['baseline R@1 det'])} |")
    lines += ["", f"Timings: {m['timings']}", "", "![examples](examples.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repository", type=Path, default=repository.REPOSITORY)
    ap.add_argument("--build-dir", type=Path, default=ROOT / "data" / "build")
    ap.add_argument("--scenes", type=int, default=300, help="query scenes (1-3 held-out products each)")
    ap.add_argument("--distractors", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1234, help="evaluation seed (scenes and distractors)")
    ap.add_argument("--no-photoset", action="store_true", help="ignore the photoset the models were trained with")
    ap.add_argument("--synthetic-per-class", type=int, help="drawn products per class (default: as in training); "
                    "use the same value to compare models trained with different counts on one held-out set")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "eval")
    args = ap.parse_args(argv)
    evaluate(args)
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out}/report.md, metrics.json, examples.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
