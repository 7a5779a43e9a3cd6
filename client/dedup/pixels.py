"""Pixel measures on a 32 x 32 grey thumbnail: RMS difference, cosine of the centred pixels, and SSIM.

SSIM has no vector the store could search, so it shares pixel_euclid's stored thumbnails: candidates
are the thumbnails within SSIM_CANDIDATE_RMS, each verified by SSIM at the threshold.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from client.dedup.base import Method, Plan

THUMB = 32  # side of the grey thumbnail
SSIM_CANDIDATE_RMS = 0.25  # SSIM verifies the k-NN within this RMS grey distance


def thumbnail(img: Image.Image) -> np.ndarray:
    """32 x 32 grey levels in [0, 1], float32, flattened."""
    small = img.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX, reducing_gap=2.0)
    return (np.asarray(small, dtype=np.float32) / 255.0).ravel()


class ThumbnailMethod(Method):
    dim = THUMB * THUMB

    def feature(self, img: Image.Image) -> np.ndarray:
        return thumbnail(img)


class PixelEuclid(ThumbnailMethod):
    name, lower_is_similar, distance = "pixel_euclid", True, "euclid"
    description = "root-mean-square grey-level difference of 32 x 32 thumbnails (0..1)"

    @property
    def store_key(self) -> str:
        return PixelEuclid.name

    def score(self, a, b) -> float:
        return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))

    def store_threshold(self, threshold: float) -> float:
        """RMS -> the store's Euclidean distance of the THUMB * THUMB vector."""
        return threshold * THUMB


class PixelCosine(ThumbnailMethod):
    name = "pixel_cosine"
    description = "cosine of mean-centred 32 x 32 grey thumbnails (Pearson correlation of pixels)"

    def feature(self, img: Image.Image) -> np.ndarray:
        v = thumbnail(img)
        v = v - v.mean()
        n = np.linalg.norm(v)
        return v / n if n > 1e-6 else v

    def score(self, a, b) -> float:
        return float(np.dot(a, b))


class SSIM(PixelEuclid):
    name, lower_is_similar = "ssim", False
    description = "structural similarity (skimage.metrics.structural_similarity) of 32 x 32 grey thumbnails"

    def score(self, a, b) -> float:
        from skimage.metrics import structural_similarity

        return float(structural_similarity(np.asarray(a).reshape(THUMB, THUMB), np.asarray(b).reshape(THUMB, THUMB),
                                           data_range=1.0, win_size=7))

    def plan(self, threshold: float | None, feats: list, paths: list[str]) -> Plan:
        t = self.resolve(threshold)
        return Plan(self.store_threshold(SSIM_CANDIDATE_RMS), {"threshold": t},
                    lambda i, j, score: self.similar(self.score(feats[i], feats[j]), t))
