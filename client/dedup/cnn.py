"""cnn: the Triton ensemble's whole-image embedding (cosine), with a geometric check in the uncertain band.

A pair is a duplicate when cosine >= ``threshold``, or when cosine >= ``candidate`` and ORB + RANSAC
(OpenCV) finds >= ``min_inliers`` inliers of a similarity transform (verify()). The embedding alone
confuses distinct photos of the same kind of thing (two flowers: cosine 0.70) with heavily cropped
copies (crop 50 %: 0.3-0.7). The calibration records which embedder it was made on; the served one is
asked from the server (``RetrievalClient.embedder_id()``), never read from files.

Encoding asks the server only for what dedup uses, the whole-image embedding: the ``whole_image``
ensemble (preprocess -> whole_crop -> features -> embedder, the same models and tensors as ``retrieval``,
named by client/spec.py; the vector is the last row of ``retrieval``'s ``embeddings``, bit for bit),
skipping the detector and the classifier. A server that does not serve it gets the whole ``retrieval``
request instead (``WholeImageEncoder.available``).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from client import spec
from client.dedup.base import Errors, Features, Method, Plan
from client.dedup.thresholds import Thresholds, load_thresholds
from client.geometry import NO_KEYPOINTS, Keypoints, OrbSettings, inliers
from client.imaging import ImageDecodeError, decode

GEO_SIDE = 256  # images are scaled (up or down) to this longest side for the geometric check
ORB_KEYPOINTS = 300
MATCH_RATIO = 0.8  # Lowe's ratio test on top of the cross check
RANSAC_PX = 2.0  # inlier residual (pixels at GEO_SIDE)
ORB = OrbSettings(GEO_SIDE, ORB_KEYPOINTS, scale_factor=1.3, levels=6, edge=15, patch=15)


def orb_features(img: Image.Image) -> tuple[Keypoints, Keypoints]:
    """ORB keypoints + descriptors of the image and of its mirror (OpenCV), for verify()."""
    g = ORB.grey(img)
    return ORB.detect(g), ORB.detect(g[:, ::-1])


def _inliers(a: Keypoints, b: Keypoints) -> int:
    # a similarity transform (rotation, scale, shift) between cross-checked matches
    return inliers(a, b, ratio=MATCH_RATIO, cross_check=True, px=RANSAC_PX, affine=False)


def verify(fa, fb, enough: int | None = None) -> int:
    """Geometric verification: RANSAC inliers of a similarity transform between ORB matches of A and B
    (or of A and B's mirror image, whichever is more). Same picture: dozens; similar scenes: a few.
    With ``enough``, B's mirror is not tried once A and B have that many (the count is then a lower bound)."""
    direct = _inliers(fa[0], fb[0])
    if enough is not None and direct >= enough:
        return direct
    return max(direct, _inliers(fa[0], fb[1]))


def file_orb_features(path: str) -> tuple[Keypoints, Keypoints]:
    """ORB features of a file (an unreadable file has none)."""
    try:
        return orb_features(decode(Path(path).read_bytes()))
    except (OSError, ImageDecodeError):
        return NO_KEYPOINTS, NO_KEYPOINTS


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

    def needs_check(self, cosine: float) -> bool:
        return self.candidate is not None and self.candidate <= cosine < self.threshold

    @classmethod
    def calibrated(cls, thresholds: Thresholds, method: str = "cnn") -> "CnnRule":
        extra = thresholds.extra.get(method, {})
        return cls(thresholds.get(method), extra.get("candidate"), int(extra.get("min_inliers", 0)))


class GeometricCheck:
    """The batch form of the rule over positions of files: ORB features computed once per file (when a
    pair of the band first needs them) and pairs checked in a thread pool (OpenCV releases the GIL)."""

    def __init__(self, rule: CnnRule, paths: list[str], stats: dict, workers: int | None = None):
        self.rule, self.paths, self.stats = rule, paths, stats
        self.workers = workers or os.cpu_count() or 1
        self.features: dict[int, tuple[Keypoints, Keypoints]] = {}
        stats.setdefault("pairs_checked", 0)
        stats.setdefault("images_orb", 0)

    def __call__(self, pairs: list[tuple[int, int, float]]) -> list[bool]:
        out = [s >= self.rule.threshold for _, _, s in pairs]  # the band is decided below
        band = [n for n, (_, _, s) in enumerate(pairs) if self.rule.needs_check(s)]
        if not band:
            return out
        todo = sorted({k for n in band for k in pairs[n][:2]} - self.features.keys())
        k = self.rule.min_inliers
        with ThreadPoolExecutor(self.workers) as pool:
            self.features.update(zip(todo, pool.map(lambda i: file_orb_features(self.paths[i]), todo)))
            passed = pool.map(lambda n: verify(self.features[pairs[n][0]], self.features[pairs[n][1]], enough=k) >= k, band)
            for n, ok in zip(band, passed):
                out[n] = ok
        self.stats["pairs_checked"] += len(band)
        self.stats["images_orb"] += len(todo)
        return out


class WholeImageEncoder:
    """The whole-image embedding from the ``whole_image`` ensemble (one request, no detector); the same
    vector as the last row of ``retrieval``'s ``embeddings``. Requests go through the RetrievalClient (its
    connection, its error mapping)."""

    def __init__(self, client):
        self.client = client

    def available(self) -> bool:
        return self.client.models_ready([spec.WHOLE_IMAGE])

    def embed(self, data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, str]:
        """(the whole-image embedding, the embedder's id) of one encoded image; BadImage when it cannot be read."""
        out = self.client.call(spec.WHOLE_IMAGE, {spec.IMAGE_BYTES.name: np.array([data], dtype=object)},
                               [spec.EMBEDDINGS.name, spec.EMBEDDER_ID.name], name)
        ident = out[spec.EMBEDDER_ID.name].reshape(-1)[0]
        return out[spec.EMBEDDINGS.name][0], ident.decode() if isinstance(ident, bytes) else str(ident)


class CNN(Method):
    name = "cnn"
    needs_server = True
    description = (f"cosine of the whole-image embedding (the {spec.WHOLE_IMAGE} ensemble's {spec.EMBEDDINGS.name}, "
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
        encoder = WholeImageEncoder(self.client)
        if encoder.available():
            expected = self.client.embedder_id()

            def one(item):
                name, data = item
                try:
                    vec, ident = encoder.embed(data, name)
                except BadImage as exc:
                    return name, exc
                if ident != expected:
                    raise RuntimeError(f"the served embedder changed while encoding ({expected} -> {ident}): run again")
                return name, vec
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                for name, res in pool.map(one, items):
                    self._collect(name, res, feats, errors, progress)
        else:
            for name, res in self.client.infer_many(items, concurrency=self.concurrency):
                self._collect(name, res if isinstance(res, BadImage) else res.image_embedding, feats, errors, progress)
        return feats, errors

    @staticmethod
    def _collect(name: str, res, feats: Features, errors: Errors, progress) -> None:
        if isinstance(res, Exception):
            errors.append((name, str(res).removeprefix(f"{name}: ")))
        else:
            feats[name] = res
        if progress:
            progress(1)

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
        settings = {"threshold": rule.threshold, "candidate": rule.candidate, "min_inliers": rule.min_inliers}
        stats: dict = {}
        return Plan(rule.candidate, settings, verify_many=GeometricCheck(rule, paths, stats), stats=stats)

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
