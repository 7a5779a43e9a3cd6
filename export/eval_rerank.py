"""export.evaluate's measure of the geometric re-ranking that client.search does (client/rerank.py).

The same candidates as the client: each query's best rerank.CANDIDATES catalog images by the served
embedding (grouped, with the client's category filter), re-scored with the client's own functions
(rerank.query_keypoints of the query's box in the scene, rerank.catalog_keypoints of each catalog image,
rerank.count_inliers, rerank.fused). A target outside the candidates keeps its cosine rank. The inlier
counts are computed once, so the sweep of the fusion's settings costs nothing more.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from client import rerank
from client.geometry import Keypoints

SWEEP_WEIGHT = (0.1, 0.2, 0.3)
SWEEP_CAP = (10, 20, 30)


def candidates(sims: np.ndarray, k: int) -> np.ndarray:
    """[n, k] catalog images, best cosine first (ties by index, as a stable sort)."""
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def inlier_table(top: np.ndarray, ok: np.ndarray, query_kp: list[Keypoints | None], catalog_kp: list[Keypoints],
                 desc: str) -> np.ndarray:
    """[n, k] inliers of each query's candidates (0 where the query got no box or no keypoints); -1 for a
    catalog image without keypoints, which the client's lookup does not return (rerank.CHANCE_INLIERS)."""
    out = np.zeros(top.shape, int)
    for i in tqdm(np.where(ok)[0], desc=desc, unit="query", leave=False):
        q = query_kp[i]
        if q is not None and len(q[0]):
            out[i] = [rerank.count_inliers(q, catalog_kp[c]) if len(catalog_kp[c][0]) else -1 for c in top[i]]
    return out


def with_missing(inl: np.ndarray) -> np.ndarray:
    """The counts rerank.rerank scores with: a candidate without keypoints (-1) gets rerank.CHANCE_INLIERS."""
    return np.where(inl < 0, rerank.CHANCE_INLIERS, inl)


def reranked(base_rank: np.ndarray, sims: np.ndarray, top: np.ndarray, inl: np.ndarray, target: np.ndarray,
             weight: float = rerank.WEIGHT, cap: int = rerank.INLIER_CAP) -> np.ndarray:
    """Each query's rank after re-scoring its candidates with ``weight`` and ``cap`` (rerank.fused's form);
    a target outside the candidates, or a query without a box, keeps ``base_rank``."""
    cos = np.take_along_axis(sims, top, 1)
    score = cos + weight * np.minimum(with_missing(inl), cap) / cap
    order = np.take_along_axis(top, np.argsort(-score, axis=1, kind="stable"), 1)
    pos = np.where(order == target[:, None], np.arange(1, top.shape[1] + 1)[None], 0).max(1).astype(float)
    return np.where((pos > 0) & np.isfinite(base_rank), pos, base_rank)


def item_sims(q: np.ndarray, gallery: np.ndarray, groups: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Cosine of each query to each catalog image (its best point), -inf where the filter excludes it."""
    sims = q @ gallery.T
    if allowed is not None:
        sims = np.where(allowed, sims, -np.inf)
    return np.maximum.reduceat(sims, np.unique(groups, return_index=True)[1], axis=1)


def source_table(q: np.ndarray, allowed: np.ndarray | None, gallery: np.ndarray, groups: np.ndarray, target: np.ndarray,
                 ok: np.ndarray, base_rank: np.ndarray, query_kp: list[Keypoints | None], catalog_kp: list[Keypoints],
                 desc: str) -> dict:
    """One box source: the re-ranked ranks with the client's settings (``"_ranks"``) and the sweep's, by setting."""
    sims = item_sims(q, gallery, groups, allowed)
    top = candidates(sims, rerank.CANDIDATES)
    inl = inlier_table(top, ok, query_kp, catalog_kp, desc)
    sweep = {(w, c): reranked(base_rank, sims, top, inl, target, w, c) for w in SWEEP_WEIGHT for c in SWEEP_CAP}
    served = (rerank.WEIGHT, rerank.INLIER_CAP)
    return {"_ranks": sweep[served] if served in sweep else reranked(base_rank, sims, top, inl, target), "_sweep": sweep}
