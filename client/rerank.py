"""Geometric re-ranking of a search's best products (``client.search`` does it by default).

The embedding finds the right product among its first few hits far more often than first (held-out
products, ``python -m export.evaluate``: R@20 well above R@1). A catalog product is a rigid thing with
printed patterns, edges and text, and a photo of it keeps their layout under the photo's angle, light
and blur, which a global vector blurs away. So the best ``CANDIDATES`` products of an object are
re-scored: ORB keypoints of the object's box (grown by ``BOX_PAD``) against the keypoints each catalog
image stored at index time (payload field ``FIELD`` of its first point: a query never decodes catalog
images), RANSAC ``AFFINE`` inliers, and

    score = cosine + WEIGHT * min(inliers, INLIER_CAP) / INLIER_CAP

so a product whose layout agrees gains up to WEIGHT, and two candidates that both agree fully keep
their cosine order (drawn products of one shape that differ by colour). A product without stored
keypoints (indexed before them) is scored with CHANCE_INLIERS, what an unrelated image gets (``rerank``). Settings measured with ``python -m export.evaluate``
("Geometric re-ranking"): every value of WEIGHT 0.1-0.3 and INLIER_CAP 15-30 was within a point of the
chosen one on two held-out sets.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from client.geometry import NO_KEYPOINTS, Keypoints, OrbSettings, inliers

FIELD = "keypoints"  # payload field of a catalog image's first point (client.catalog.points_for)
ORB = OrbSettings(side=256, keypoints=300, edge=15)
MATCH_RATIO = 0.8
RANSAC_PX = 3.0  # at ORB.side
AFFINE = True  # photos are sheared and turned in depth, not only rotated and scaled
CANDIDATES = 20  # products re-scored per object
WEIGHT = 0.2
INLIER_CAP = 20
BOX_PAD = 0.1  # the query box grows by this share of its width and height on each side
# what an unrelated image typically scores (RANSAC fits 3-6 random matches; the median non-matching candidate
# on export.evaluate's set has 3-4): a candidate without stored keypoints is scored with it
CHANCE_INLIERS = 3
FORMAT = 1  # of pack(): version byte


def query_keypoints(image: Image.Image, box: Sequence[float] | None = None) -> Keypoints:
    """Keypoints of ``image`` within ``box`` (x1, y1, x2, y2 in its pixels, grown by BOX_PAD and clipped to
    the image); the whole image without one."""
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        w, h = x2 - x1, y2 - y1
        crop = (max(0.0, x1 - BOX_PAD * w), max(0.0, y1 - BOX_PAD * h), min(image.width, x2 + BOX_PAD * w),
                min(image.height, y2 + BOX_PAD * h))
        if crop[2] - crop[0] < 8 or crop[3] - crop[1] < 8:
            return NO_KEYPOINTS
        image = image.crop(tuple(round(v) for v in crop))
    return ORB.features(image)


def catalog_keypoints(image: Image.Image) -> Keypoints:
    """Keypoints of a catalog image (one product on a plain background: the whole image)."""
    return ORB.features(image)


def pack(kp: Keypoints) -> str:
    """Keypoints as a compact payload string: a version byte, the count (uint16), positions as uint16 in
    1/16 pixel at ORB.side, descriptors; base64. 300 keypoints: ~14 KB."""
    pos, desc = kp
    n = len(pos)
    q = np.clip(np.round(pos * 16), 0, 65535).astype("<u2")
    raw = bytes([FORMAT]) + np.uint16(n).astype("<u2").tobytes() + q.tobytes() + np.ascontiguousarray(desc, np.uint8).tobytes()
    return base64.b64encode(raw).decode("ascii")


def unpack(text: str) -> Keypoints:
    """pack()'s inverse; a string it cannot read (another format, cut short) gives no keypoints."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return NO_KEYPOINTS
    if len(raw) < 3 or raw[0] != FORMAT:
        return NO_KEYPOINTS
    n = int(np.frombuffer(raw[1:3], "<u2")[0])
    if len(raw) != 3 + n * 4 + n * 32:
        return NO_KEYPOINTS
    pos = np.frombuffer(raw[3:3 + n * 4], "<u2").reshape(n, 2).astype(np.float32) / 16
    desc = np.frombuffer(raw[3 + n * 4:], np.uint8).reshape(n, 32).copy()
    return pos, desc


def count_inliers(query: Keypoints, stored: Keypoints) -> int:
    return inliers(query, stored, ratio=MATCH_RATIO, cross_check=True, px=RANSAC_PX, affine=AFFINE)


def fused(cosine: float | np.ndarray, n_inliers: int | np.ndarray) -> float | np.ndarray:
    """The re-ranking score of a candidate."""
    return cosine + WEIGHT * np.minimum(n_inliers, INLIER_CAP) / INLIER_CAP


@dataclass
class Rescored:
    index: int  # the candidate's position in the cosine order
    cosine: float
    inliers: int | None  # None: no stored keypoints
    score: float


def rerank(cosines: Sequence[float], stored: Sequence[list[Keypoints]], query: Keypoints) -> list[Rescored]:
    """Candidates (in cosine order, each with the keypoints of its stored views) ordered by ``fused``; a
    product's inliers are those of its best view. Ties keep the cosine order.

    Any two images give a few inliers by chance (a RANSAC affine fit of 3-6 random matches), so a candidate
    without stored keypoints (indexed before them, or a plain image with none) is scored with
    CHANCE_INLIERS: it does not lose to unrelated products on their chance matches; its ``inliers`` stays
    None."""
    counts = [max(count_inliers(query, v) for v in views) if views and len(query[0]) else (0 if views else None)
              for views in stored]
    chance = CHANCE_INLIERS if len(query[0]) else 0  # a query without keypoints gives every candidate 0
    out = [Rescored(i, float(cos), n, float(fused(cos, chance if n is None else n)))
           for i, (cos, n) in enumerate(zip(cosines, counts))]
    return sorted(out, key=lambda r: (-r.score, r.index))


def rerank_hits(hits: list, query: Keypoints, lookup: Callable[[list[str]], dict[str, list[Keypoints]]]) -> list:
    """Store hits (``.product_id``, ``.score`` = cosine, best first): the first CANDIDATES re-ordered by
    ``rerank``, the others after them as they were; each hit's ``score`` becomes the fused score (the cosine
    for those not re-scored) and its payload gains ``cosine`` and ``inliers``. ``lookup``: product ids -> stored
    keypoints (QdrantStore.keypoints)."""
    if not hits:
        return hits
    hits, rest = hits[:CANDIDATES], hits[CANDIDATES:]  # below every candidate's fused score: their order stands
    stored = lookup([h.product_id for h in hits])
    order = rerank([h.score for h in hits], [stored.get(h.product_id, []) for h in hits], query)
    out = []
    for r in order:
        h = hits[r.index]
        h.payload = {**h.payload, "cosine": r.cosine, "inliers": r.inliers}
        h.score = r.score
        out.append(h)
    for h in rest:
        h.payload = {**h.payload, "cosine": h.score, "inliers": None}
    return out + rest
