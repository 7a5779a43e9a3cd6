"""Where the detector misses held-out products (recall by object size and by background) and what its false
positives are (export.evaluate).

Pure functions over export.evaluate's query objects (``Query``: ``transform``, ``background``, ``clutter``,
``gt_box``, ``scene``, ``product_id``) and scene rows (``SceneRows``: ``boxes``, ``scores``, ``valid``,
``gt``, ``first``, ``outputs()``), plus the pictures of examples (misses.png, false_positives.png).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from client import imaging, spec
from client.search import select_rows

MATCH_IOU = 0.5
TIGHT_IOU = 0.7
# Mean |grey-level gradient| per pixel around an object above which its background counts as "busy": about
# the median of export.evaluate's 579 held-out objects (seed 1234), so the two bins are of similar size.
BUSY_GRADIENT = 6.0


def background_clutter(image: Image.Image, box, boxes) -> float:
    """How busy the background around ``box`` is: the mean absolute grey-level gradient in a ring of half the
    box's size on each side, the boxes of all objects (``boxes``) excluded."""
    g = np.asarray(image.convert("L"), np.float32)
    mag = np.abs(np.diff(g, axis=0))[:, :-1] + np.abs(np.diff(g, axis=1))[:-1]
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    ring = np.zeros(mag.shape, bool)
    ring[max(0, int(y1 - bh / 2)):max(0, int(y2 + bh / 2)), max(0, int(x1 - bw / 2)):max(0, int(x2 + bw / 2))] = True
    for b in boxes:
        ring[max(0, int(b[1])):max(0, int(b[3]) + 1), max(0, int(b[0])):max(0, int(b[2]) + 1)] = False
    return float(mag[ring].mean()) if ring.any() else 0.0


def _size(q) -> str:
    s = q.transform["scale"]  # the object's side / the photo's short side when pasted
    return "small <0.3" if s < 0.3 else "medium 0.3-0.45" if s < 0.45 else "large >=0.45"


def _clutter(q) -> str:
    return "busy" if q.clutter >= BUSY_GRADIENT else "plain"


def _product(q) -> str:
    return "photo cutout" if "__" in q.product_id else "drawn"


MISS_BINS = {
    "object size (scale)": _size,
    "background": lambda q: q.background,
    "background clutter": _clutter,
    "background x clutter": lambda q: f"{q.background}, {_clutter(q)}",
    "product": _product,
    "size x product": lambda q: f"{_size(q)}, {_product(q)}",
    "size x clutter": lambda q: f"{_size(q)}, {_clutter(q)}",
}


def valid_rows(sc) -> list[int]:
    """The rows client.search reported before select_rows: valid detections (never the whole image)."""
    return [int(r) for r in np.where(sc.valid)[0] if r < spec.MAX_OBJECTS]


def match_detections(boxes_px: np.ndarray, scores: np.ndarray, rows: list[int], gt: np.ndarray) -> dict[int, int]:
    """Ground-truth object -> reported row: ``rows``, highest score first, each to the free object it overlaps
    most, if IoU >= MATCH_IOU."""
    taken: dict[int, int] = {}
    if len(rows) and len(gt):
        ious = imaging.box_iou(boxes_px[rows], gt)
        for r in np.argsort(-scores[rows], kind="stable"):
            j = int(np.argmax(np.where([k in taken for k in range(len(gt))], -1, ious[r])))
            if ious[r, j] >= MATCH_IOU and j not in taken:
                taken[j] = rows[r]
    return taken


def best_ious(n: int, scenes, rows_of) -> np.ndarray:
    """Per query (``n`` in all), the best IoU of its true box with the detection rows ``rows_of(scene)``."""
    best = np.zeros(n)
    for sc in scenes:
        rows = [r for r in rows_of(sc) if r < spec.MAX_OBJECTS]
        if len(sc.gt) and rows:
            best[sc.first:sc.first + len(sc.gt)] = imaging.box_iou(sc.gt, sc.boxes[rows]).max(1)
    return best


def detector_misses(queries, scenes) -> dict:
    """Per bin of object size and background: detector recall (IoU >= 0.5) with the valid rows (score >= the
    threshold), with the rows client.search reports, and with any of the K rows (what the detector sees at
    any score); the share of tight valid boxes (IoU >= 0.7); and the bin's share of all valid-row misses."""
    n = len(queries)
    valid = best_ious(n, scenes, valid_rows)
    policy = best_ious(n, scenes, lambda sc: select_rows(sc.outputs(), match=sc.match))
    every = best_ious(n, scenes, lambda sc: list(range(spec.MAX_OBJECTS)))
    missed = valid < MATCH_IOU
    out = {}
    for name, fn in MISS_BINS.items():
        bins: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            bins.setdefault(fn(q), []).append(i)
        out[name] = {b: {"n": len(ix), "recall valid": round(float(np.mean(valid[ix] >= MATCH_IOU)), 3),
                         "recall client rows": round(float(np.mean(policy[ix] >= MATCH_IOU)), 3),
                         "recall any of K rows": round(float(np.mean(every[ix] >= MATCH_IOU)), 3),
                         "IoU>=0.7 valid": round(float(np.mean(valid[ix] >= TIGHT_IOU)), 3),
                         "share of misses": round(float(missed[ix].sum() / max(missed.sum(), 1)), 3)}
                     for b, ix in sorted(bins.items())}
    return out


def _sheet(path: Path, cells: list[tuple[Image.Image, str]], cols: int = 4, cell: int = 260) -> None:
    """(picture, caption) cells in a grid of ``cols``, each picture already fitted to ``cell`` px (``_scaled``),
    its caption below it."""
    sheet = Image.new("RGB", (cols * cell, math.ceil(len(cells) / cols) * (cell + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (img, caption) in enumerate(cells):
        x, y = (k % cols) * cell, (k // cols) * (cell + 16)
        sheet.paste(img, (x + 2, y + 2))
        draw.text((x + 4, y + cell - 2), caption, fill=(0, 0, 0))
    sheet.save(path)


def _scaled(img: Image.Image, cell: int = 260) -> tuple[Image.Image, ImageDraw.ImageDraw, float]:
    """A copy of ``img`` fitted into a sheet cell, a pen on it, and the scale from image pixels to it."""
    f = (cell - 4) / max(img.size)
    small = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)
    return small, ImageDraw.Draw(small), f


def misses_png(path: Path, queries, scenes, thumbs: list[Image.Image], n: int = 12) -> bool:
    """Examples of held-out products without a valid box: the photo, the product's true box (green) and
    every detection row scoring >= 0.10 (red: valid, orange: below the threshold) with its score.
    Returns False (and writes nothing) when there is no miss among the ``thumbs`` scenes."""
    valid = best_ious(len(queries), scenes, valid_rows)
    picked = [i for i, q in enumerate(queries) if valid[i] < MATCH_IOU and q.scene < len(thumbs)][:n]
    if not picked:
        return False
    cells = []
    for i in picked:
        q = queries[i]
        sc = scenes[q.scene]
        img, d, f = _scaled(thumbs[q.scene])
        for r in range(spec.MAX_OBJECTS):
            if sc.scores[r] >= 0.10:
                b = [float(v) * f for v in sc.boxes[r]]
                d.rectangle(b, outline=(220, 0, 0) if sc.valid[r] else (255, 150, 0), width=2)
                d.text((b[0] + 3, b[1] + 2), f"{sc.scores[r]:.2f}", fill=(255, 255, 0))
        d.rectangle([float(v) * f for v in q.gt_box], outline=(0, 200, 0), width=3)
        name = "/".join(q.product_id.split("__")[1:]) or q.product_id  # cutouts: source__group__name
        cells.append((img, f"{name[:26]} scale {q.transform['scale']} {q.background} {_clutter(q)}"))
    _sheet(path, cells)
    return True

# A valid row that matches no product is "on the background" when under FP_BACKGROUND of its area lies inside a
# product's true box, "part of a product" when over FP_PART of it lies inside one, else "loose or between products".
FP_BACKGROUND, FP_PART = 0.2, 0.8
FP_KINDS = ("on the background", "part of a product", "loose or between products")


def unmatched_valid_rows(sc) -> list[int]:
    """The valid rows of a scene that match no product (``match_detections``, as detection precision counts them:
    export/train.py: detection_metrics), best score first."""
    rows = valid_rows(sc)
    matched = set(match_detections(sc.boxes, sc.scores, rows, sc.gt).values())
    return [r for r in sorted(rows, key=lambda r: (-float(sc.scores[r]), r)) if r not in matched]


def false_positive_kind(box, gt: np.ndarray) -> str:
    """FP_KINDS of a box that matches no product, by the largest share of its area inside one true box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    area = max((x2 - x1) * (y2 - y1), 1e-6)
    inside = max((max(0.0, min(x2, g[2]) - max(x1, g[0])) * max(0.0, min(y2, g[3]) - max(y1, g[1])) for g in gt),
                 default=0.0) / area
    return FP_KINDS[0] if inside < FP_BACKGROUND else FP_KINDS[1] if inside > FP_PART else FP_KINDS[2]


def false_positives(queries, scenes) -> dict:
    """Per scene background (its objects' ``background``: "photo", "procedural") and over every scene: the products,
    the valid rows, their precision and recall (IoU >= 0.5, as detection_metrics counts them) and how many of the
    valid rows that match no product are of each of FP_KINDS. A background photo has objects of its own (people,
    animals, buildings) that nobody labelled, so a box on one counts as false; procedural backgrounds have none."""
    background = {q.scene: q.background for q in queries}
    groups: dict[str, list] = {}
    for i, sc in enumerate(scenes):
        if i in background:
            groups.setdefault(background[i], []).append(sc)
    groups["all"] = list(scenes)  # a scene without a product (none could be pasted) counts here, as in detection_metrics
    out = {}
    for name, group in groups.items():
        kinds = dict.fromkeys(FP_KINDS, 0)
        products = rows = wrong = 0
        for sc in group:
            products += len(sc.gt)
            rows += len(valid_rows(sc))
            for r in unmatched_valid_rows(sc):
                kinds[false_positive_kind(sc.boxes[r], sc.gt)] += 1
                wrong += 1
        out[name] = {"products": products, "valid rows": rows,
                     "precision": round((rows - wrong) / rows, 4) if rows else None,
                     "recall": round((rows - wrong) / products, 4) if products else None, **kinds}
    return out


def false_positives_png(path: Path, scenes, thumbs: list[Image.Image], n: int = 16) -> bool:
    """Examples of valid rows that match no product, from the first ``thumbs`` scenes: the photo, every product's
    true box (green) and the false box (red) with its score and kind. Returns False (and writes nothing) when
    there is none."""
    picked = [(i, r) for i, sc in enumerate(scenes[:len(thumbs)]) for r in unmatched_valid_rows(sc)][:n]
    if not picked:
        return False
    cells = []
    for i, r in picked:
        sc = scenes[i]
        img, d, f = _scaled(thumbs[i])
        for g in sc.gt:
            d.rectangle([float(v) * f for v in g], outline=(0, 200, 0), width=2)
        b = [float(v) * f for v in sc.boxes[r]]
        d.rectangle(b, outline=(220, 0, 0), width=3)
        d.text((b[0] + 3, b[1] + 2), f"{sc.scores[r]:.2f}", fill=(255, 255, 0))
        cells.append((img, f"scene {i}: {false_positive_kind(sc.boxes[r], sc.gt)}"))
    _sheet(path, cells)
    return True
