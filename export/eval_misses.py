"""Where the detector misses held-out products: recall by object size and by background (export.evaluate).

Pure functions over export.evaluate's query objects (``Query``: ``transform``, ``background``, ``clutter``,
``gt_box``, ``scene``, ``product_id``) and scene rows (``SceneRows``: ``boxes``, ``scores``, ``valid``,
``gt``, ``first``, ``outputs()``), plus the picture of examples (misses.png).
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
    return [int(r) for r in np.where(sc.valid)[0] if r < spec.MAX_OBJECTS]


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
    policy = best_ious(n, scenes, lambda sc: select_rows(sc.outputs()))
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


def misses_png(path: Path, queries, scenes, thumbs: list[Image.Image], n: int = 12, cell: int = 260) -> bool:
    """Examples of held-out products without a valid box: the photo, the product's true box (green) and
    every detection row scoring >= 0.10 (red: valid, orange: below the threshold) with its score.
    Returns False (and writes nothing) when there is no miss among the ``thumbs`` scenes."""
    valid = best_ious(len(queries), scenes, valid_rows)
    picked = [i for i, q in enumerate(queries) if valid[i] < MATCH_IOU and q.scene < len(thumbs)][:n]
    if not picked:
        return False
    cols = 4
    sheet = Image.new("RGB", (cols * cell, math.ceil(len(picked) / cols) * (cell + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(picked):
        q = queries[i]
        sc = scenes[q.scene]
        img = thumbs[q.scene].copy()
        f = (cell - 4) / max(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)
        d = ImageDraw.Draw(img)
        for r in range(spec.MAX_OBJECTS):
            if sc.scores[r] >= 0.10:
                b = [float(v) * f for v in sc.boxes[r]]
                d.rectangle(b, outline=(220, 0, 0) if sc.valid[r] else (255, 150, 0), width=2)
                d.text((b[0] + 3, b[1] + 2), f"{sc.scores[r]:.2f}", fill=(255, 255, 0))
        d.rectangle([float(v) * f for v in q.gt_box], outline=(0, 200, 0), width=3)
        x, y = (k % cols) * cell, (k // cols) * (cell + 16)
        sheet.paste(img, (x + 2, y + 2))
        name = "/".join(q.product_id.split("__")[1:]) or q.product_id  # cutouts: source__group__name
        draw.text((x + 4, y + cell - 2), f"{name[:26]} scale {q.transform['scale']} {q.background} {_clutter(q)}",
                  fill=(0, 0, 0))
    sheet.save(path)
    return True
