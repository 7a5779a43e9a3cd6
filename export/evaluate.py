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
report.md, metrics.json, examples.png and misses.png (held-out products the detector missed) to --out.

It measures what the client does, with the client's own functions: the catalog's points are
client.catalog.catalog_rows of each image (search scores a product by its best point), and the
"detected" boxes are the rows client.search.select_rows reports (the valid rows alone, what it
reported before, are kept for comparison, with a sweep of the selection's parameters).
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

from client import imaging, rerank, spec
from client.catalog import CATALOG_VIEWS, CATALOG_WHOLE_IMAGE, catalog_rows, synthetic_views
from client.search import select_rows
from export import dataset, eval_rerank, repository
from export.eval_misses import detector_misses, false_positives, false_positives_png, misses_png, valid_rows
from export.eval_ranks import (CATEGORY, CATEGORY_SCORE, EMBEDDINGS, GROUP, GT, SYNTHETIC, VIEW, Described, agreement, by_kind,
                               query_rows, retrieval_table, source_ranks, summarise)
from export.eval_report import report
from export.eval_scenes import TRANSFORM_BINS, Query, QuerySet, run_scenes, select, set_catalog_match
from export.pipeline import Pipeline
from export.products import synthetic_products

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "baseline"  # Runner.describe: the off-the-shelf backbone's vectors, next to the spec outputs


class Runner:
    """The served ONNX files chained in process (export.pipeline), and the off-the-shelf backbone.
    ``pad`` > 0 measures a crop graph that pads detection boxes (the served one does not): see ``crops``.
    ``flip`` measures a ``features`` model that averages each crop's pooled vector with its mirror image's (the
    served one does not): see ``describe``. ``jitter`` (the served search side) describes the query crops at
    detected boxes as the ``retrieval`` ensemble does, through ``query_features`` with each row's jitter crops;
    without it (``--no-query-jitter``), as ``retrieval_catalog`` does. Catalog images are always described as
    ``retrieval_catalog`` does (client.catalog)."""

    def __init__(self, repo: Path, backbone: Path, pad: float = 0.0, flip: bool = False, jitter: bool = True):
        try:
            self.pipeline = Pipeline(repo, every_row=True)  # every detection row: the row policies are measured here
        except FileNotFoundError as exc:
            raise SystemExit(f"error: {exc}") from exc
        self.baseline = dataset.BackboneRunner(backbone)
        self.pad = pad
        self.flip = flip
        self.jitter = jitter and not pad  # padded boxes are measured with the plain features (one crop per row)
        self.cutter = dataset.CropCutter() if pad else None

    def crops(self, out: dict[str, np.ndarray], rows: list[int]) -> np.ndarray:
        """The crops of ``rows`` of one image's outputs (``detect``). With ``pad``, detection rows are cut again
        by the served crop graph from their boxes grown by ``pad`` of their width and height on each side,
        clipped to the image; the whole-image row stays as it is."""
        crops = out[spec.CROPS.name][rows]
        det = [k for k, r in enumerate(rows) if r < spec.MAX_OBJECTS]
        if self.pad and det:
            size = out[spec.IMAGE_SIZE.name]
            b = out[spec.DET_BOXES.name][0][[rows[k] for k in det]]
            grown = b + np.concatenate([b[:, 2:] - b[:, :2]] * 2, 1) * np.array([-1, -1, 1, 1]) * self.pad
            limits = np.array([size[1], size[0], size[1], size[0]], np.float32) / float(max(size))
            crops = crops.copy()
            crops[det] = self.cutter(out[spec.CROP_SOURCE.name], size, np.clip(grown, 0, limits).astype(np.float32))
        return crops

    def jitter_crops(self, out: dict[str, np.ndarray], rows: list[int]) -> np.ndarray | None:
        """The jitter crops of ``rows`` ([n, 2, 3, H, W]: shrunk, grown; spec.JITTER_CROPS), or None when the
        queries are described without them."""
        if not self.jitter:
            return None
        jc, n = out[spec.JITTER_CROPS.name], len(out[spec.CROPS.name])
        return np.stack([jc[rows], jc[[n + r for r in rows]]], 1)

    def detect(self, image: Image.Image) -> dict[str, np.ndarray]:
        """One image through preprocess, detector and crop: every tensor of those steps, by spec name."""
        letterboxed = dict(zip((t.name for t in spec.PREPROCESS.outputs), imaging.letterbox(image)))
        return self.pipeline.run(letterboxed, steps=(spec.DETECTOR, spec.CROP))

    def synthetic_crops(self, image: Image.Image) -> list[np.ndarray]:
        """The whole-image crops of a catalog image's synthetic views (client.catalog.synthetic_views), each
        encoded and sent through the ``whole_image`` ensemble's steps as client.catalog.describe sends it."""
        out = []
        for _, view in synthetic_views(image):
            data = np.array([imaging.encode_jpeg(view, 95)], dtype=object)
            out.append(self.pipeline.run({spec.IMAGE_BYTES.name: data}, steps=(spec.PREPROCESS, spec.WHOLE_CROP))[spec.CROPS.name][0])
        return out

    def describe(self, crops: np.ndarray, batch: int = 32, baseline: bool = True, jitter: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Classifier and embedder outputs of every crop (by spec name), and under ``BASELINE`` the
        off-the-shelf backbone's L2-normalised pooled vector (unless ``baseline`` is False). With ``jitter``
        (``jitter_crops``: [n, 2, 3, H, W]) the features come from ``query_features``, as the search ensemble's."""
        names = [t.name for t in (*spec.CLASSIFIER.outputs, *spec.EMBEDDER.outputs) if t != spec.EMBEDDER_ID]
        out: dict[str, list] = {n: [] for n in names}
        for i in tqdm(range(0, len(crops), batch), desc="classify+embed", unit="batch", leave=False):
            feed = {spec.CROPS.name: crops[i:i + batch]}
            step = spec.BACKBONE.name
            if jitter is not None:
                j = jitter[i:i + batch]
                step, feed[spec.JITTER_CROPS.name] = spec.QUERY_FEATURES.name, np.concatenate([j[:, 0], j[:, 1]])
            feed |= self.pipeline.step(step, feed)
            if self.flip:  # the mean of the crop's and its mirror image's pooled vectors, for both heads
                flip_feed = {k: np.ascontiguousarray(v[..., ::-1]) for k, v in feed.items() if k in (spec.CROPS.name, spec.JITTER_CROPS.name)}
                mirrored = self.pipeline.step(step, flip_feed)
                feed |= {k: (feed[k] + v) / 2 for k, v in mirrored.items()}
            got = self.pipeline.step(spec.CLASSIFIER.name, feed) | self.pipeline.step(spec.EMBEDDER.name, feed)
            for n in names:
                out[n].append(got[n])
        res = {k: np.concatenate(v) for k, v in out.items()}
        if not baseline:
            return res
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
    """Each catalog image's points as the indexer stores them (client.catalog.points_for: catalog_rows, then the
    synthetic views), with and without the whole-image point: ``VIEW`` is the point's object_index, ``GROUP`` its
    item (sorted, contiguous), ``SYNTHETIC`` whether it is a synthetic view. Every point carries the category of
    its image's first point, as client.catalog.points_for stores it."""
    crops, group, view, synthetic = [], [], [], []
    for i, it in enumerate(tqdm(items, desc="gallery", unit="image")):
        out = runner.detect(it.image)
        rows = catalog_rows(out, whole_image=True)
        made = list(runner.crops(out, rows)) + runner.synthetic_crops(it.image)
        crops += made; group += [i] * len(made); view += range(len(made)); synthetic += [k >= len(rows) for k in range(len(made))]
    res = runner.describe(np.stack(crops))
    res[GROUP], res[VIEW], res[SYNTHETIC] = np.array(group), np.array(view), np.array(synthetic)
    first = np.searchsorted(res[GROUP], res[GROUP])  # each point's image's first point
    for name in (CATEGORY, CATEGORY_SCORE, spec.FINE_CLASS.name):
        res[name] = res[name][first]
    return res


def catalog_points(gallery: dict[str, np.ndarray], whole_image: bool, synthetic: bool = True) -> dict[str, np.ndarray]:
    """The gallery's points as stored with or without the whole-image point (client.catalog.CATALOG_WHOLE_IMAGE)
    and the synthetic views (client.catalog.CATALOG_VIEWS)."""
    keep = np.ones(len(gallery[VIEW]), bool) if whole_image else gallery[VIEW] == 0
    if not synthetic:
        keep &= ~gallery[SYNTHETIC]
    return {k: v[keep] for k, v in gallery.items()}


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


def retrieval_metrics(d: Described) -> tuple[dict, dict]:
    """The retrieval tables (trained embedder float and binary, baseline) and the category filter sweep."""
    tau = spec.CATEGORY_FILTER_MIN_SCORE
    results = {
        "trained embedder, float": {"no filter": retrieval_table(d, EMBEDDINGS, None), POLICY: retrieval_table(d, EMBEDDINGS, tau),
                                    "category filter always": retrieval_table(d, EMBEDDINGS, 0.0)},
        "trained embedder, binary (sign bits)": {"no filter": retrieval_table(d, EMBEDDINGS, None, True),
                                                 POLICY: retrieval_table(d, EMBEDDINGS, tau, True)},
        "off-the-shelf backbone (baseline)": {"no filter": retrieval_table(d, BASELINE, None), POLICY: retrieval_table(d, BASELINE, tau)},
    }
    sweep = {}
    for t in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        r = {b: summarise(source_ranks(d, b, EMBEDDINGS, t)) for b in ("detected", GT)}
        sweep[str(t)] = {"R@1 det": r["detected"]["R@1"], "R@5 det": r["detected"]["R@5"], "R@5 gt": r[GT]["R@5"],
                         "share of queries filtered (gt)": round(float(np.mean(agreement(d, GT) >= t)), 3)}
    return results, sweep


def reranked_source(d: Described, qs: QuerySet, source: str, filtered: float | None, base: np.ndarray, catalog_kp: list,
                    desc: str) -> dict:
    """client.search's re-ranking (client/rerank.py) of one box source's candidates in ``d``'s catalog, from the
    cosine ranks ``base`` (``filtered`` as query_rows takes it): eval_rerank.source_table's ranks and sweep."""
    q, qidx, ok, allowed = query_rows(d, source, filtered)
    kp = qs.gt_kp if source == GT else [qs.det_kp[j] for j in qidx]
    return eval_rerank.source_table(q[EMBEDDINGS][qidx], allowed, d.gallery[EMBEDDINGS], d.gallery[GROUP], d.target,
                                    ok, base, kp, catalog_kp, desc)


def geometric_reranking(d: Described, qs: QuerySet, results: dict, catalog_kp: list) -> dict:
    """client.search's re-ranking (client/rerank.py) of the detected and ground-truth boxes' candidates, with
    the client's filter: ranks (``"_ranks"``) and the fusion sweep (export/eval_rerank.py)."""
    out = {}
    for source, filtered in (("detected", POLICY), (GT, POLICY), ("detected", "no filter")):
        if source != GT and d.det is None:
            continue
        base = results["trained embedder, float"][filtered][source]["_ranks"]
        key = source if filtered == POLICY else f"{source}, no category filter"
        out[key] = reranked_source(d, qs, source, spec.CATEGORY_FILTER_MIN_SCORE if filtered == POLICY else None, base,
                                   catalog_kp, f"re-rank ({key})")
    return out


def rerank_sweep(geo: dict, queries: list[Query]) -> dict:
    """R@1 / R@5 by product kind for each fusion setting of the sweep, per box source."""
    return {f"weight {w}, cap {c}": {f"{src} boxes": by_kind(v["_sweep"][w, c], queries) for src, v in geo.items() if src in ("detected", GT)}
            for w in eval_rerank.SWEEP_WEIGHT for c in eval_rerank.SWEEP_CAP}


VALID_ONLY = "detected, valid rows only (before)"
POLICY = f"category filter if classifier and neighbours agree >= {spec.CATEGORY_FILTER_MIN_SCORE} (client.search)"


def headline(results: dict, queries: list[Query], geo: dict) -> dict:
    """The issue's numbers (trained embedder, the client's category filter), per box source and product kind:
    first what client.search does (detected boxes, geometric re-ranking), then the cosine ranking alone."""
    rows = {"detected boxes, re-ranked (client.search)": by_kind(geo["detected"]["_ranks"], queries)} if "detected" in geo else {}
    names = {"detected": "detected boxes, cosine only (client.search --no-rerank)", VALID_ONLY: VALID_ONLY, GT: "ground truth boxes"}
    rows |= {names[src]: by_kind(r["_ranks"], queries) for src, r in results["trained embedder, float"][POLICY].items()}
    rows["ground truth boxes, re-ranked"] = by_kind(geo[GT]["_ranks"], queries)
    if "detected, no category filter" in geo:
        rows["detected boxes, re-ranked, no category filter"] = by_kind(geo["detected, no category filter"]["_ranks"], queries)
    rows["ground truth boxes, baseline"] = by_kind(results["off-the-shelf backbone (baseline)"][POLICY][GT]["_ranks"], queries)
    rows["detected boxes, no category filter"] = by_kind(results["trained embedder, float"]["no filter"]["detected"]["_ranks"], queries)
    return rows


def catalog_views(d: Described, full: dict[str, np.ndarray], queries: list[Query], qs: QuerySet, catalog_kp: list,
                  geo: dict) -> dict:
    """What storing the whole-image point next to the best detection, and the synthetic views, do (trained
    embedder, client's filter; cosine, and re-ranked as client.search does for the catalogs with the whole image);
    ``full``: run_catalog's points, all of them; ``geo``: geometric_reranking of ``d`` (the stored catalog)."""
    out = {}
    tau = spec.CATEGORY_FILTER_MIN_SCORE
    for whole, synthetic in ((False, False), (True, False), (True, True)):
        dv = d.with_gallery(catalog_points(full, whole, synthetic))
        name = "best detection + whole image" if whole else "best detection only"
        name += " + synthetic views" if synthetic else ""
        out[name] = {f"{b} boxes": by_kind(source_ranks(dv, b, EMBEDDINGS, tau), queries) for b in (*d.selections, GT)}
        if whole:
            for b in ("detected", GT):
                if b != GT and dv.det is None:
                    continue
                if (whole, synthetic) == (CATALOG_WHOLE_IMAGE, True):  # d's own catalog: geometric_reranking did it
                    r = geo[b]["_ranks"]
                else:
                    r = reranked_source(dv, qs, b, tau, source_ranks(dv, b, EMBEDDINGS, tau), catalog_kp,
                                        f"re-rank ({name}, {b})")["_ranks"]
                out[name][f"{b} boxes, re-ranked"] = by_kind(r, queries)
        out[name]["points"] = int(len(dv.gallery[GROUP]))
    return out


COLOUR_SWEEP = (0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5)


def colour_weight_sweep(d: Described, queries: list[Query]) -> dict:
    """R@1 / R@5 by product kind (detected and ground-truth boxes, the client's filter) for other colour weights:
    the served embedding is [sqrt(1 - w) * CNN part, sqrt(w) * colour part] (spec.COLOUR_WEIGHT), so both parts
    come back from it exactly and are fused again with each weight of COLOUR_SWEEP (0 = the CNN part alone)."""
    w0, n = spec.COLOUR_WEIGHT, spec.CNN_EMBED_DIM

    def parts(x: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return x[EMBEDDINGS][:, :n] / np.sqrt(1 - w0), x[EMBEDDINGS][:, n:] / np.sqrt(w0)

    split = {"gallery": parts(d.gallery), "gt": parts(d.gt), "det": None if d.det is None else parts(d.det)}

    def fused(x: dict[str, np.ndarray] | None, key: str, w: float) -> dict[str, np.ndarray] | None:
        if x is None:
            return None
        cnn, colour = split[key]
        return {**x, EMBEDDINGS: np.concatenate([np.sqrt(1 - w) * cnn, np.sqrt(w) * colour], 1).astype(np.float32)}

    out = {}
    for w in COLOUR_SWEEP:
        dv = Described(fused(d.gallery, "gallery", w), fused(d.gt, "gt", w), fused(d.det, "det", w), d.target, d.selections)
        out[str(w)] = {f"{b} boxes": by_kind(source_ranks(dv, b, EMBEDDINGS, spec.CATEGORY_FILTER_MIN_SCORE), queries)
                       for b in ("detected", GT)}
    return out


# The selection sweep: round values around the client's policy (client.search), plus the two extremes.
SWEEP_EXTRA, SWEEP_MIN_SCORE, SWEEP_OVERLAP = (0, 1, 2, 3), (0.05, 0.1, 0.2), (0.3, 0.5, 0.7)


def selection_sweep(qs: QuerySet, d: Described) -> dict:
    """Per row policy: the boxes it reports (products that get one, cost) and R@1 with them (client's filter)."""
    policies = {"valid rows only (before)": valid_rows,
                "every detection row": lambda sc: list(range(spec.MAX_OBJECTS)),
                "the client's (weaker rows by score + catalog cosine)": lambda sc: select_rows(sc.outputs(), match=sc.match)}
    for n in SWEEP_EXTRA:
        for floor in SWEEP_MIN_SCORE if n else (1.0,):
            for overlap in SWEEP_OVERLAP:
                policies[f"extra {n} by score, score >= {floor}, IoU <= {overlap}" if n else f"extra 0, IoU <= {overlap}"] = \
                    lambda sc, n=n, f=floor, o=overlap: select_rows(sc.outputs(), extra=n, min_score=f, max_overlap=o)
    out = {}
    for name, policy in policies.items():
        sel = select(qs, policy)
        dv = Described(d.gallery, d.gt, d.det, d.target, {"p": sel})
        kinds = by_kind(source_ranks(dv, "p", EMBEDDINGS, spec.CATEGORY_FILTER_MIN_SCORE), qs.queries)
        out[name] = sel.boxes | {"R@1": kinds["all"]["R@1"], "R@1 real photo": kinds["real photo"]["R@1"],
                                 "R@1 drawn": kinds["drawn"]["R@1"]}
    return out


def classifier_metrics(d: Described, queries: list[Query], setup: Setup, row_of: dict[str, int]) -> dict:
    """The classifier on ground-truth crops of held-out products, and on their catalog images."""
    merge_map = setup.merge_map
    known = np.array([q.fine_class in merge_map for q in queries])
    fine_ok = np.array([f == q.fine_class for f, q in zip(d.gt[spec.FINE_CLASS.name], queries)])
    cat_ok = np.array([q.fine_class in merge_map and c == merge_map[q.fine_class] for c, q in zip(d.gt[CATEGORY], queries)])
    item_category = d.item_category()
    agree = d.gt[CATEGORY] == item_category[d.target]
    narrow = agreement(d, GT) >= spec.CATEGORY_FILTER_MIN_SCORE  # the searches the client narrows (ground-truth boxes)
    return {
        "searches narrowed to the category (client policy)": round(float(narrow.mean()), 4),
        "narrowed: category right (known classes)": round(float(cat_ok[narrow & known].mean()), 4) if (narrow & known).any() else None,
        "narrowed: category == its catalog image's": round(float(agree[narrow].mean()), 4) if narrow.any() else None,
        "queries_of_known_fine_class": int(known.sum()), "queries_of_unseen_fine_class": int((~known).sum()),
        "fine_accuracy (known classes)": round(float(fine_ok[known].mean()), 4) if known.any() else None,
        "category_accuracy (known classes)": round(float(cat_ok[known].mean()), 4) if known.any() else None,
        "query category == its catalog image's category (all)": round(float(agree.mean()), 4),
        "catalog images: category accuracy (held-out products of known classes)": round(float(np.mean([
            item_category[row_of[p.product_id]] == merge_map[p.fine_class]
            for p in setup.sources.held_out if p.fine_class in merge_map])), 4),
    }


def per_transform_metrics(results: dict, queries: list[Query], found: np.ndarray) -> dict:
    """Recall of the trained embedder (no filter) and of the baseline, per bin of each scene transform."""
    trained_det = results["trained embedder, float"]["no filter"]["detected"]["_ranks"]
    trained_gt = results["trained embedder, float"]["no filter"][GT]["_ranks"]
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
    runner = Runner(args.repository, args.build_dir / "backbone.onnx", pad=args.pad_boxes, flip=args.flip_features,
                    jitter=not args.no_query_jitter)
    timings = {}
    items = gallery_items(sources, args.distractors, args.seed)
    t = time.time()
    full = run_catalog(runner, items)
    timings["gallery_s"] = round(time.time() - t, 1)
    row_of = {it.product_id: i for i, it in enumerate(items) if it.product_id}
    t = time.time()
    qs = run_scenes(runner, sources, args.scenes, args.seed)
    timings["scenes_s"] = round(time.time() - t, 1)
    t = time.time()
    gt = runner.describe(qs.gt_crops)
    det = runner.describe(qs.det_crops, jitter=qs.det_jitter) if len(qs.det_crops) else None
    timings["query_crops_s"] = round(time.time() - t, 1)
    queries = qs.queries
    catalog = catalog_points(full, CATALOG_WHOLE_IMAGE)
    set_catalog_match(qs, det[EMBEDDINGS] if det is not None else np.zeros((0, spec.EMBED_DIM)), catalog[EMBEDDINGS])
    selections = {"detected": select(qs, lambda sc: select_rows(sc.outputs(), match=sc.match)),  # what client.search reports
                  VALID_ONLY: select(qs, valid_rows)}
    d = Described(catalog, gt, det, np.array([row_of[q.product_id] for q in queries]), selections)
    results, filter_sweep = retrieval_metrics(d)
    t = time.time()
    catalog_kp = [rerank.catalog_keypoints(it.image) for it in tqdm(items, desc="catalog keypoints", unit="image")]
    geo = geometric_reranking(d, qs, results, catalog_kp)
    timings["rerank_s"] = round(time.time() - t, 1)
    classifier = classifier_metrics(d, queries, setup, row_of)
    found = selections["detected"].found
    per_transform = per_transform_metrics(results, queries, found)
    t = time.time()
    objects = {"client policy (select_rows)": selections["detected"].boxes, VALID_ONLY: selections[VALID_ONLY].boxes}
    misses = detector_misses(qs.queries, qs.scenes)
    wrong_boxes = false_positives(qs.queries, qs.scenes)
    sweep = selection_sweep(qs, d)
    views = catalog_views(d, full, queries, qs, catalog_kp, geo)
    colour = colour_weight_sweep(d, queries)
    timings["sweeps_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)
    metrics = {
        "setup": {"profile": setup.log.get("profile"), "photoset": setup.photoset, "seed": args.seed,
                  "training_products": len(sources.products), "held_out_products": len(sources.held_out),
                  "gallery": len(items), "distractors": sum(it.kind == "distractor" for it in items),
                  "query_scenes": args.scenes, "query_objects": len(queries),
                  "eval_background_photos": len(sources.eval_backgrounds), "categories": len(set(setup.merge_map.values())),
                  "score_threshold": spec.SCORE_THRESHOLD, "colour_weight": spec.COLOUR_WEIGHT, "pad_boxes": args.pad_boxes, "flip_features": args.flip_features, "query_box_jitter": spec.QUERY_BOX_JITTER if runner.jitter else 0.0, "catalog_whole_image": CATALOG_WHOLE_IMAGE,
                  "catalog_synthetic_views": list(CATALOG_VIEWS), "catalog_points": int(len(d.gallery[GROUP])),
                  "catalog_images_without_valid_detection": len(items) - int(np.sum((full[VIEW] == 1) & ~full[SYNTHETIC]))},
        "detector": qs.detector, "detector_found_queries": round(float(found.mean()), 4), "detector_misses": misses,
        "detector_false_positives": wrong_boxes,
        "objects_reported": objects, "headline": headline(results, queries, geo), "catalog_views": views,
        "rerank": {"settings": {"candidates": rerank.CANDIDATES, "weight": rerank.WEIGHT, "inlier_cap": rerank.INLIER_CAP,
                                "keypoints": rerank.ORB.keypoints, "side": rerank.ORB.side},
                   "sweep": rerank_sweep(geo, queries)},
        "colour_weight_sweep": colour,
        "selection_sweep": sweep,
        "classifier": classifier, "retrieval": results, "category_filter_sweep": filter_sweep, "per_transform": per_transform, "timings": timings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    examples(args.out / "examples.png", queries, qs.thumbs, items, d)
    misses_png(args.out / "misses.png", qs.queries, qs.scenes, qs.thumbs)
    false_positives_png(args.out / "false_positives.png", qs.scenes, qs.thumbs)
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
    sel = d.selections["detected"]
    if d.det is None:
        return
    cand = [i for i, q in enumerate(queries) if sel.found[i] and q.scene < len(thumbs)]
    if not cand:
        return
    groups = d.gallery[GROUP]
    sims = d.det[EMBEDDINGS][sel.det_rows[cand]] @ d.gallery[EMBEDDINGS].T
    sims = np.maximum.reduceat(sims, np.unique(groups, return_index=True)[1], axis=1)  # per catalog image
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
        ImageDraw.Draw(sc).rectangle(tuple(sel.det_box[cand[c]]), outline=(255, 0, 0), width=4)
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
    ap.add_argument("--pad-boxes", type=float, default=0.0, help="measure a crop graph that pads detection boxes by this "
                    "share of their width and height per side (query rows and catalog detections; the served graph: 0; measured "
                    "without the query side's box jitter)")
    ap.add_argument("--flip-features", action="store_true", help="measure a features model that averages each crop's "
                    "pooled vector with its mirror image's (NOT the served graph)")
    ap.add_argument("--no-query-jitter", action="store_true", help="describe the query crops at detected boxes without the "
                    "search ensemble's box jitter (as the retrieval_catalog ensemble would: one crop per row)")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "eval")
    args = ap.parse_args(argv)
    evaluate(args)
    print((args.out / "report.md").read_text())
    print(f"wrote {args.out}/report.md, metrics.json, examples.png, misses.png, false_positives.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
