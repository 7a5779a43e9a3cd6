"""The query side of export.evaluate: held-out products pasted on held-out backgrounds, run through the served
detector, and which objects a row policy gives a box (the client's select_rows, or another one to compare).

    run_scenes(runner, sources, n, seed) -> QuerySet: every object (Query), every scene's rows (SceneRows),
                                            the crops at ground-truth and at overlapping detected boxes
    select(query_set, policy)            -> Selection: per object, whether the policy's rows box it (IoU >= 0.5)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from client import imaging, rerank, spec
from client.search import weak_candidates
from export import dataset
from export.eval_misses import MATCH_IOU, background_clutter, match_detections
from export.scenes import Backgrounds, make_scene
from export.train import detection_metrics

if TYPE_CHECKING:
    from export.evaluate import Runner


@dataclass
class Query:
    scene: int
    product_id: str
    fine_class: str
    gt_box: tuple
    transform: dict
    background: str
    clutter: float = 0.0  # background_clutter around the object: how busy its background is


@dataclass
class SceneRows:
    """What the ensemble gave for one scene (every row) and its ground truth, in original pixels."""
    boxes: np.ndarray  # [NUM_ROWS, 4]
    scores: np.ndarray  # [NUM_ROWS]
    valid: np.ndarray  # [NUM_ROWS]
    gt: np.ndarray  # [n objects, 4]
    first: int  # index of its first object in QuerySet.queries
    match: dict[int, float] | None = None  # each weaker candidate row's best catalog cosine (evaluate sets it)

    def outputs(self) -> dict[str, np.ndarray]:
        return {spec.BOXES.name: self.boxes, spec.SCORES.name: self.scores, spec.VALID.name: self.valid}


@dataclass
class QuerySet:
    queries: list[Query]  # every object of every scene
    scenes: list[SceneRows]
    gt_crops: np.ndarray  # one crop per query, cut at its ground-truth box
    det_crops: np.ndarray  # every row that overlaps an object (IoU >= MATCH_IOU): what any row policy can match;
    # and the client's weaker candidate rows (client.search.weak_candidates), whose catalog cosine it ranks them by
    det_crop_of: dict[tuple[int, int], int]  # (scene, row) -> index into det_crops
    det_jitter: np.ndarray | None  # per det_crops row its two jitter crops [n, 2, 3, H, W] (Runner.jitter_crops; None: not used)
    detector: dict  # detection_metrics over the scenes
    thumbs: list[Image.Image]  # the first scenes, for examples.png
    gt_kp: list  # per query: rerank.query_keypoints of its scene at its ground-truth box
    det_kp: list  # per det_crops row: rerank.query_keypoints at that row's box (the whole image for its row)


@dataclass
class Selection:
    """One row policy over every scene: which query got a box (and its crop), and what it cost."""
    found: np.ndarray  # bool per query
    det_rows: np.ndarray  # per query, its index into QuerySet.det_crops (0 when not found)
    det_box: np.ndarray  # per query, the reported box it got (original pixels; zeros when not found)
    boxes: dict  # products that get a box, objects reported per photo, precision of the reported detections


def set_catalog_match(qs: QuerySet, det_embeddings: np.ndarray, catalog_embeddings: np.ndarray) -> None:
    """Gives each scene's weaker candidate rows their best cosine to the catalog's points (``SceneRows.match``),
    as client.search.catalog_match asks the store for it; ``det_embeddings``: those of ``qs.det_crops``."""
    best = (det_embeddings @ catalog_embeddings.T).max(1) if len(det_embeddings) else np.zeros(0)
    for i, sc in enumerate(qs.scenes):
        sc.match = {r: float(best[qs.det_crop_of[i, r]]) for r in weak_candidates(sc.outputs())}


def select(qs: QuerySet, policy) -> Selection:
    """Applies ``policy`` (scene outputs -> reported rows) to every scene, as client.search would."""
    n = len(qs.queries)
    found, det_rows, det_box = np.zeros(n, bool), np.zeros(n, int), np.zeros((n, 4), np.float32)
    cover = {0.5: 0, 0.7: 0}
    reported = detections = hits = 0
    for i, sc in enumerate(qs.scenes):
        rows = policy(sc)
        reported += len(rows)
        dets = [r for r in rows if r < spec.MAX_OBJECTS]
        detections += len(dets)
        taken = match_detections(sc.boxes, sc.scores, rows, sc.gt)
        hits += sum(r < spec.MAX_OBJECTS for r in taken.values())
        for j, r in taken.items():
            found[sc.first + j], det_rows[sc.first + j], det_box[sc.first + j] = True, qs.det_crop_of[i, r], sc.boxes[r]
        if len(sc.gt) and rows:
            best = imaging.box_iou(sc.gt, sc.boxes[rows]).max(1)
            for t in cover:
                cover[t] += int((best >= t).sum())
    boxes = {"products with a box IoU>=0.5": round(float(cover[0.5] / max(n, 1)), 4),
             "products with a box IoU>=0.7": round(float(cover[0.7] / max(n, 1)), 4),
             "recall (one box per product, IoU>=0.5)": round(float(found.mean()) if n else 0.0, 4),
             "precision of reported detections": round(hits / max(detections, 1), 4),
             "objects per photo": round(reported / max(len(qs.scenes), 1), 3)}
    return Selection(found, det_rows, det_box, boxes)


def run_scenes(runner: Runner, sources: dataset.Sources, n_scenes: int, seed: int) -> QuerySet:
    rng = np.random.default_rng(seed)
    bgs = Backgrounds(sources.eval_backgrounds)
    queries: list[Query] = []
    scenes: list[SceneRows] = []
    gt_crops, det_crops, det_crop_of, gt_kp, det_kp, det_jitter = [], [], {}, [], [], []
    det_boxes_all, det_scores_all, gt_all, thumbs = [], [], [], []
    cutter = dataset.CropCutter()
    for i in tqdm(range(n_scenes), desc="query scenes", unit="scene"):
        scene = make_scene(sources.held_out, bgs, rng)
        out = runner.detect(scene.image)
        src, size = out[spec.CROP_SOURCE.name], out[spec.IMAGE_SIZE.name]
        gt = np.array([o.box for o in scene.objects], np.float32).reshape(-1, 4)
        gt_norm = gt / float(max(size))
        gt_all.append(gt_norm)
        det_boxes_all.append(out[spec.DET_BOXES.name][0]); det_scores_all.append(out[spec.DET_SCORES.name][0])
        sc = SceneRows(out[spec.BOXES.name], out[spec.SCORES.name], out[spec.VALID.name].astype(bool), gt, len(queries))
        scenes.append(sc)
        rows = set(weak_candidates(sc.outputs()))
        if len(gt):
            gt_crops.append(cutter(src, size, gt_norm))
            gt_kp += [rerank.query_keypoints(scene.image, b) for b in gt]
            rows |= {int(r) for r in np.where(imaging.box_iou(sc.boxes, gt).max(1) >= MATCH_IOU)[0]}
        rows = sorted(rows)
        det_crop_of.update({(i, r): len(det_crops) + k for k, r in enumerate(rows)})
        det_crops += list(runner.crops(out, rows)) if rows else []
        jitter = runner.jitter_crops(out, rows) if rows else None
        det_jitter += list(jitter) if jitter is not None else []
        whole = len(sc.scores) - 1
        det_kp += [rerank.query_keypoints(scene.image, None if r == whole else sc.boxes[r]) for r in rows]
        for o in scene.objects:
            queries.append(Query(i, o.product_id, o.fine_class, o.box, o.transform,
                                 "procedural" if scene.background == "procedural" else "photo",
                                 background_clutter(scene.image, o.box, [p.box for p in scene.objects])))
        if len(thumbs) < 200:
            thumbs.append(scene.image)
    empty = np.zeros((0, 3, spec.CROP_SIZE, spec.CROP_SIZE), np.uint8)
    return QuerySet(queries, scenes, np.concatenate(gt_crops), np.stack(det_crops) if det_crops else empty, det_crop_of,
                    np.stack(det_jitter) if det_jitter else None, detection_metrics(det_boxes_all, det_scores_all, gt_all), thumbs, gt_kp, det_kp)


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
