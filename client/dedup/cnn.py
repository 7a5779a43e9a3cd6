"""cnn: the Triton ensemble's whole-image embedding (cosine), with a geometric check in the uncertain band.

A pair is a duplicate when cosine >= ``threshold``, or when cosine >= ``candidate`` and ORB + RANSAC
(scikit-image) finds >= ``min_inliers`` inliers of a similarity transform (verify()). The embedding alone
confuses distinct photos of the same kind of thing (two flowers: cosine 0.70) with heavily cropped
copies (crop 50 %: 0.3-0.7). The calibration records which embedder it was made on; the served one is
asked from the server (``RetrievalClient.embedder_id()``), never read from files.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from client import spec
from client.dedup.base import Errors, Features, Method, Plan
from client.dedup.thresholds import Thresholds, load_thresholds
from client.imaging import ImageDecodeError, decode

GEO_SIDE = 256  # images are scaled (up or down) to this longest side for the geometric check
Keypoints = tuple[np.ndarray, np.ndarray]  # (positions [n, 2], binary descriptors [n, 256])
NO_KEYPOINTS: Keypoints = (np.zeros((0, 2)), np.zeros((0, 256), dtype=bool))


def orb_features(img: Image.Image) -> tuple[Keypoints, Keypoints]:
    """ORB keypoints + descriptors of the image and of its mirror (skimage.feature.ORB), for verify()."""
    from skimage.feature import ORB

    g = img.convert("L")
    f = GEO_SIDE / max(g.size)
    g = g.resize((max(8, round(g.width * f)), max(8, round(g.height * f))), Image.Resampling.BILINEAR)
    out = []
    for im in (g, g.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
        orb = ORB(n_keypoints=300, fast_threshold=0.05, downscale=1.3, n_scales=6)
        try:
            orb.detect_and_extract(np.asarray(im, dtype=np.float64) / 255.0)
            out.append((orb.keypoints, orb.descriptors))
        except (RuntimeError, ValueError, IndexError):  # too few corners (flat images)
            out.append(NO_KEYPOINTS)
    return out[0], out[1]


def _inliers(a: Keypoints, b: Keypoints) -> int:
    from skimage.feature import match_descriptors
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform

    (pa, da), (pb, db) = a, b
    if len(pa) < 4 or len(pb) < 4:
        return 0
    m = match_descriptors(da, db, cross_check=True, max_ratio=0.85)
    if len(m) < 4:
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, inl = ransac((pa[m[:, 0]][:, ::-1], pb[m[:, 1]][:, ::-1]), SimilarityTransform, min_samples=3,
                        residual_threshold=4, max_trials=300, rng=0)
    return 0 if inl is None else int(inl.sum())


def verify(fa, fb) -> int:
    """Geometric verification: RANSAC inliers of a similarity transform between ORB matches of A and B
    (or of A and B's mirror image, whichever is more). Same picture: dozens; similar scenes: <= 4 here."""
    return max(_inliers(fa[0], fb[0]), _inliers(fa[0], fb[1]))


def file_orb_features(paths: list[str]) -> Callable[[int], tuple[Keypoints, Keypoints]]:
    """Lazily computed, cached ORB features of files by position (an unreadable file has none)."""
    cache: dict[int, tuple[Keypoints, Keypoints]] = {}

    def get(k: int):
        if k not in cache:
            try:
                cache[k] = orb_features(decode(Path(paths[k]).read_bytes()))
            except (OSError, ImageDecodeError):
                cache[k] = (NO_KEYPOINTS, NO_KEYPOINTS)
        return cache[k]
    return get


@dataclass(frozen=True)
class CnnRule:
    threshold: float  # accept on the embedding alone
    candidate: float | None = None  # verify geometrically from here (None: no verification)
    min_inliers: int = 0

    def decide(self, cosine: float, inliers: Callable[[], int]) -> bool:
        if cosine >= self.threshold:
            return True
        if self.candidate is None or cosine < self.candidate:
            return False
        return inliers() >= self.min_inliers

    @classmethod
    def calibrated(cls, thresholds: Thresholds, method: str = "cnn") -> "CnnRule":
        extra = thresholds.extra.get(method, {})
        return cls(thresholds.get(method), extra.get("candidate"), int(extra.get("min_inliers", 0)))


class CNN(Method):
    name = "cnn"
    needs_server = True
    description = (f"cosine of the Triton ensemble's whole-image embedding ({spec.EMBEDDINGS.name}[{spec.MAX_OBJECTS}], "
                   f"{spec.EMBED_DIM}-d); pairs in the uncertain band are verified geometrically (ORB + RANSAC)")

    @property
    def dim(self) -> int:
        return self.client.dim if self.client is not None else spec.EMBED_DIM

    @property
    def store_key(self) -> str:
        """Vectors of one embedder per collection: after a new embedder, every file is encoded again."""
        if self.client is None:
            return self.name
        return f"{self.name}_" + "".join(c if c.isalnum() else "_" for c in self.client.embedder_id())

    def feature(self, img: Image.Image):
        raise TypeError("the cnn feature comes from Triton: use encode()")

    def score(self, a, b) -> float:
        return float(np.dot(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)))

    def encode(self, items: list[tuple[str, bytes]], progress: Callable[[int], object] | None = None) -> tuple[Features, Errors]:
        if self.client is None:
            raise ValueError(f"method {self.name!r} needs a Triton client")
        from client.triton import BadImage

        feats: Features = {}
        errors: Errors = []
        for name, res in self.client.infer_many(items, concurrency=self.concurrency):
            if isinstance(res, BadImage):
                errors.append((name, str(res).removeprefix(f"{name}: ")))
            else:
                feats[name] = res.image_embedding
            if progress:
                progress(1)
        return feats, errors

    def rule(self, threshold: float | None = None) -> CnnRule:
        """The calibrated rule, or a plain cosine threshold when ``threshold`` is given."""
        if threshold is not None:
            return CnnRule(threshold)
        thresholds = load_thresholds()
        self.calibration_matches(thresholds)
        return CnnRule.calibrated(thresholds, self.name)

    def plan(self, threshold: float | None, feats: list, paths: list[str]) -> Plan:
        rule = self.rule(threshold)
        if rule.candidate is None:
            return Plan(rule.threshold, {"threshold": rule.threshold})
        geo = file_orb_features(paths)
        return Plan(rule.candidate, {"threshold": rule.threshold, "candidate": rule.candidate, "min_inliers": rule.min_inliers},
                    lambda i, j, score: rule.decide(score, lambda: verify(geo(i), geo(j))))

    def unavailable(self) -> str | None:
        return None if self.client is not None else "no Triton server (set TRITON_URL)"

    def calibration_matches(self, thresholds: Thresholds) -> bool:
        if self.client is None or thresholds.embedder_id is None:
            return True
        return thresholds.check_embedder(self.client.embedder_id())

    def pair_features(self, datas, images, names):
        return tuple(self.client.infer(data, name).image_embedding for data, name in zip(datas, names))

    def judge(self, score: float, thresholds: Thresholds, images) -> tuple[bool | None, str]:
        if self.name not in thresholds.values:
            return None, ""
        rule = CnnRule.calibrated(thresholds, self.name)
        checked = []

        def inliers() -> int:
            checked.append(verify(orb_features(images[0]), orb_features(images[1])))
            return checked[-1]
        verdict = rule.decide(score, inliers)
        return verdict, (f"geometric check: {checked[0]} inliers (need {rule.min_inliers})" if checked else "")
