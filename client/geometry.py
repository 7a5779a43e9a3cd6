"""Local features and geometric verification (OpenCV ORB + RANSAC), shared by dedup's check and search's
re-ranking (client/rerank.py).

An image is scaled (up or down) to a fixed longest side before its keypoints are found, so pixel
thresholds mean the same for every image; positions are in that scaled frame. ``inliers`` counts the
matches (Lowe's ratio test, optionally with a cross check) that agree with one RANSAC transform: a
similarity (rotation, scale, shift) or a full affine map (also shear and perspective-like squeeze).
OpenCV's RANSAC is seeded, so the counts are deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

Keypoints = tuple[np.ndarray, np.ndarray]  # (positions [n, 2] float32, packed binary descriptors [n, 32] uint8)
NO_KEYPOINTS: Keypoints = (np.zeros((0, 2), dtype=np.float32), np.zeros((0, 32), dtype=np.uint8))


@dataclass(frozen=True)
class OrbSettings:
    side: int  # the image's longest side is scaled to this
    keypoints: int  # at most this many
    scale_factor: float = 1.2
    levels: int = 8
    edge: int = 31
    patch: int = 31

    def grey(self, img: Image.Image) -> np.ndarray:
        g = img.convert("L")
        f = self.side / max(g.size)
        return np.asarray(g.resize((max(8, round(g.width * f)), max(8, round(g.height * f))), Image.Resampling.BILINEAR))

    def detect(self, grey: np.ndarray) -> Keypoints:
        import cv2

        orb = cv2.ORB_create(nfeatures=self.keypoints, scaleFactor=self.scale_factor, nlevels=self.levels,
                             edgeThreshold=self.edge, patchSize=self.patch, fastThreshold=10)
        kp, desc = orb.detectAndCompute(np.ascontiguousarray(grey), None)
        if desc is None:
            return NO_KEYPOINTS
        return np.array([k.pt for k in kp], dtype=np.float32).reshape(-1, 2), desc

    def features(self, img: Image.Image) -> Keypoints:
        return self.detect(self.grey(img))


def matches(a: Keypoints, b: Keypoints, ratio: float, cross_check: bool) -> np.ndarray:
    """[m, 2] index pairs (into A, into B) passing Lowe's ratio test, and with ``cross_check`` also B's best
    match in A."""
    import cv2

    (_, da), (_, db) = a, b
    if len(da) < 2 or len(db) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    back = {m.queryIdx: m.trainIdx for m in matcher.match(db, da)} if cross_check else None
    pairs = [(x.queryIdx, x.trainIdx) for x, y in (p for p in matcher.knnMatch(da, db, k=2) if len(p) == 2)
             if x.distance < ratio * y.distance and (back is None or back.get(x.trainIdx) == x.queryIdx)]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def inliers(a: Keypoints, b: Keypoints, *, ratio: float, cross_check: bool, px: float, affine: bool) -> int:
    """Matches of A and B consistent with one RANSAC transform (``affine``: a full affine map, else a
    similarity), within ``px`` pixels of the scaled frame."""
    import cv2

    m = matches(a, b, ratio, cross_check)
    if len(m) < 4:  # fewer matches than a RANSAC fit needs to leave any out
        return 0
    src, dst = a[0][m[:, 0]], b[0][m[:, 1]]
    fit = cv2.estimateAffine2D if affine else cv2.estimateAffinePartial2D
    _, inl = fit(src, dst, method=cv2.RANSAC, ransacReprojThreshold=px, maxIters=2000, confidence=0.999)
    return 0 if inl is None else int(inl.sum())
