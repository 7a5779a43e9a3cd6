"""The measures of client.dedup / client.compare: one small class per method, calibrated thresholds.

Every method turns an image into a feature and scores a pair of features; ``similar(score, t)`` says
whether a score passes a threshold. Hashes (imagehash: average, perceptual, difference, wavelet) score
by Hamming distance (lower = more alike); pixel methods work on a 32 x 32 grey thumbnail; SSIM is
scikit-image's on that thumbnail; ``cnn`` is the Triton ensemble's whole-image embedding (cosine).
Thresholds come from ``client/dedup_thresholds.json``, written by ``python -m bench.dedup_calibrate``
together with the sha256 of the embedder it was calibrated on.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
from PIL import Image

from client.hashindex import bits_to_int, hamming

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS_FILE = Path(__file__).with_name("dedup_thresholds.json")
EMBEDDER_ONNX = ROOT / "model_repository" / "embedder" / "1" / "model.onnx"
THUMB = 32  # side of the grey thumbnail of the pixel methods and SSIM


class Method:
    name: ClassVar[str]
    kind: ClassVar[str]  # "hash" (Hamming index), "vector" (Qdrant k-NN), "ssim" (Qdrant k-NN candidates, then SSIM)
    lower_is_similar: ClassVar[bool] = False
    dim: ClassVar[int] = 0  # vector dimension in the store (0: no vector)
    distance: ClassVar[str] = "cosine"  # the store's distance for the vector
    needs_server: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def feature(self, img: Image.Image):
        raise NotImplementedError

    def score(self, a, b) -> float:
        raise NotImplementedError

    def similar(self, score: float, threshold: float) -> bool:
        return score <= threshold if self.lower_is_similar else score >= threshold


class HashMethod(Method):
    kind = "hash"
    lower_is_similar = True
    dim = 64
    distance = "dot"  # stored as a +-1 vector: dot = 64 - 2 * Hamming, so Qdrant can answer it too
    fn: ClassVar[Callable]

    def feature(self, img: Image.Image) -> int:
        return bits_to_int(type(self).fn(img, hash_size=8).hash)

    def score(self, a: int, b: int) -> float:
        return float(hamming(int(a), int(b)))


def _imagehash():
    import imagehash

    return imagehash


class AverageHash(HashMethod):
    name, description = "ahash", "average hash (imagehash.average_hash), Hamming distance of 64 bits"
    fn = staticmethod(lambda img, hash_size: _imagehash().average_hash(img, hash_size))


class PerceptualHash(HashMethod):
    name, description = "phash", "perceptual DCT hash (imagehash.phash), Hamming distance of 64 bits"
    fn = staticmethod(lambda img, hash_size: _imagehash().phash(img, hash_size))


class DifferenceHash(HashMethod):
    name, description = "dhash", "difference hash (imagehash.dhash), Hamming distance of 64 bits"
    fn = staticmethod(lambda img, hash_size: _imagehash().dhash(img, hash_size))


class WaveletHash(HashMethod):
    name, description = "whash", "wavelet hash (imagehash.whash, Haar), Hamming distance of 64 bits"
    fn = staticmethod(lambda img, hash_size: _imagehash().whash(img, hash_size))


def thumbnail(img: Image.Image) -> np.ndarray:
    """32 x 32 grey levels in [0, 1], float32, flattened."""
    small = img.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX, reducing_gap=2.0)
    return (np.asarray(small, dtype=np.float32) / 255.0).ravel()


class PixelEuclid(Method):
    name, kind, lower_is_similar = "pixel_euclid", "vector", True
    dim, distance = THUMB * THUMB, "euclid"
    description = "root-mean-square grey-level difference of 32 x 32 thumbnails (0..1)"

    def feature(self, img: Image.Image) -> np.ndarray:
        return thumbnail(img)

    def score(self, a, b) -> float:
        return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))

    @staticmethod
    def store_threshold(t: float) -> float:  # RMS -> the store's Euclidean distance
        return t * THUMB


class PixelCosine(Method):
    name, kind = "pixel_cosine", "vector"
    dim, distance = THUMB * THUMB, "cosine"
    description = "cosine of mean-centred 32 x 32 grey thumbnails (Pearson correlation of pixels)"

    def feature(self, img: Image.Image) -> np.ndarray:
        v = thumbnail(img)
        v = v - v.mean()
        n = np.linalg.norm(v)
        return v / n if n > 1e-6 else v

    def score(self, a, b) -> float:
        return float(np.dot(a, b))


class SSIM(Method):
    name, kind = "ssim", "ssim"
    dim, distance = THUMB * THUMB, "euclid"
    description = "structural similarity (skimage.metrics.structural_similarity) of 32 x 32 grey thumbnails"

    def feature(self, img: Image.Image) -> np.ndarray:
        return thumbnail(img)

    def score(self, a, b) -> float:
        from skimage.metrics import structural_similarity

        return float(structural_similarity(np.asarray(a).reshape(THUMB, THUMB), np.asarray(b).reshape(THUMB, THUMB),
                                           data_range=1.0, win_size=7))


GEO_SIDE = 256  # images are scaled (up or down) to this longest side for the geometric check


def orb_features(img: Image.Image) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
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
            out.append((np.zeros((0, 2)), np.zeros((0, 256), dtype=bool)))
    return out[0], out[1]


def _inliers(a, b) -> int:
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


class CNN(Method):
    """Whole-image embedding shortlist + geometric check in the uncertain band.

    A pair is a duplicate when cosine >= ``threshold``, or when cosine >= ``candidate`` and ORB+RANSAC
    finds >= ``min_inliers`` inliers (verify()). The embedding alone confuses distinct photos of the same
    kind of thing (two flowers: cosine 0.70) with heavily cropped copies (crop 50 %: 0.3-0.7)."""

    name, kind = "cnn", "vector"
    dim, distance, needs_server = 256, "cosine", True
    description = ("cosine of the Triton ensemble's whole-image embedding (embeddings[8], 256-d); pairs in the "
                   "uncertain band are verified geometrically (ORB + RANSAC)")

    def feature(self, img: Image.Image):
        raise TypeError("the cnn feature comes from Triton: use client.dedup.encode()")

    def score(self, a, b) -> float:
        return float(np.dot(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)))


METHODS: dict[str, Method] = {m.name: m() for m in (CNN, PerceptualHash, DifferenceHash, AverageHash, WaveletHash,
                                                     SSIM, PixelCosine, PixelEuclid)}
DEFAULT_METHOD = "cnn"


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


# Calibrated thresholds --------------------------------------------------------------------------------

def embedder_fingerprint(path: Path = EMBEDDER_ONNX) -> str | None:
    """sha256 of the embedder ONNX file, or None when it is not on this machine."""
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


@dataclass
class Thresholds:
    values: dict[str, float]
    embedder_sha256: str | None
    source: str
    extra: dict[str, dict] = field(default_factory=dict)  # per method: more calibrated settings (cnn: candidate, min_inliers)

    def get(self, method: str, warn: bool = True) -> float:
        if method not in self.values:
            raise ValueError(f"no calibrated threshold for {method!r} in {self.source}; pass --threshold or run "
                             "`python -m bench.dedup_calibrate`")
        if warn and method == "cnn":
            self.check_embedder()
        return self.values[method]

    def check_embedder(self) -> bool:
        current = embedder_fingerprint()
        if current is None or self.embedder_sha256 is None or current == self.embedder_sha256:
            return True
        warnings.warn(f"the cnn threshold in {self.source} was calibrated on another embedder "
                      f"(sha256 {str(self.embedder_sha256)[:12]}..., now {current[:12]}...); re-run "
                      "`python -m bench.dedup_calibrate` or pass --threshold", stacklevel=3)
        return False


def load_thresholds(path: Path = THRESHOLDS_FILE) -> Thresholds:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return Thresholds({}, None, str(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    methods = data.get("methods", {})
    values = {k: float(v["threshold"]) for k, v in methods.items()}
    extra = {k: {n: x for n, x in v.items() if n in ("candidate", "min_inliers")} for k, v in methods.items()}
    return Thresholds(values, data.get("embedder_sha256"), str(path), extra)


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


def cnn_rule(threshold: float | None = None, thresholds: Thresholds | None = None) -> CnnRule:
    """The calibrated rule, or a plain cosine threshold when ``threshold`` is given explicitly."""
    if threshold is not None:
        return CnnRule(threshold)
    t = thresholds or load_thresholds()
    ex = t.extra.get("cnn", {})
    return CnnRule(t.get("cnn"), ex.get("candidate"), int(ex.get("min_inliers", 0)))
