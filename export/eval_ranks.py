"""Ranks for export.evaluate: each query's rank of its catalog image, as the store's grouped search gives it,
with or without the client's category filter, and the summaries (Recall@k, mAP) by product kind."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from client import category as narrowing
from client import spec
from export.eval_scenes import Query, Selection

KS = (1, 5, 20)
CATEGORY, CATEGORY_SCORE, EMBEDDINGS = spec.CATEGORY.name, spec.CATEGORY_SCORE.name, spec.EMBEDDINGS.name


GROUP, VIEW = "_item", "_view"  # gallery arrays: each point's catalog image (item index) and object_index
SYNTHETIC = "_synthetic"  # gallery array: whether the point is a synthetic view (client.catalog.CATALOG_VIEWS)


def ranks(q: np.ndarray, g: np.ndarray, target: np.ndarray, allowed: np.ndarray | None = None, binary: bool = False,
          groups: np.ndarray | None = None) -> np.ndarray:
    """Rank (1 = first) of each query's target gallery row; inf when filtered out. Ties count against
    the query (pessimistic), which matters for binary codes. ``groups``: the gallery row's group (sorted);
    a group scores its best row, as the store's search groups points by product, and ``target`` is a group."""
    if binary:
        qb, gb = np.sign(q) + (q == 0), np.sign(g) + (g == 0)
        sims = qb @ gb.T  # = D - 2 * hamming
    else:
        sims = q @ g.T
    if allowed is not None:
        sims = np.where(allowed, sims, -np.inf)
    if groups is not None:
        ids, starts = np.unique(groups, return_index=True)
        sims, target = np.maximum.reduceat(sims, starts, axis=1), np.searchsorted(ids, target)
    tgt = sims[np.arange(len(q)), target]
    r = 1 + (sims >= tgt[:, None]).sum(1) - 1
    r = r.astype(float)
    r[~np.isfinite(tgt)] = np.inf
    return r


def summarise(r: np.ndarray) -> dict:
    if len(r) == 0:
        return {f"R@{k}": float("nan") for k in KS} | {"mAP": float("nan"), "n": 0}
    out = {f"R@{k}": round(float(np.mean(r <= k)), 4) for k in KS}
    out["mAP"] = round(float(np.mean(np.where(np.isfinite(r), 1 / r, 0))), 4)  # one relevant item: AP = 1/rank
    out["n"] = int(len(r))
    return out


@dataclass
class Described:
    """The gallery and the queries through the classifier and the embedders (Runner.describe)."""
    gallery: dict[str, np.ndarray]  # the catalog's points as client.catalog stores them (GROUP: their image)
    gt: dict[str, np.ndarray]  # query crops at ground-truth boxes
    det: dict[str, np.ndarray] | None  # query crops at detected boxes (QuerySet.det_crops; None: nothing detected)
    target: np.ndarray  # each query's catalog image (gallery GROUP)
    selections: dict[str, Selection]  # box source ("detected": client.search's rows) -> which queries got a box

    def with_gallery(self, gallery: dict[str, np.ndarray]) -> "Described":
        return Described(gallery, self.gt, self.det, self.target, self.selections)

    def item_category(self) -> np.ndarray:
        """The category of each catalog image (its first point's)."""
        return self.gallery[CATEGORY][np.unique(self.gallery[GROUP], return_index=True)[1]]


GT = "ground truth"


def source_ranks(d: Described, source: str, space: str, filtered: float | None, binary: bool = False) -> np.ndarray:
    """Each query's rank with the boxes of ``source`` (GT or a key of d.selections) in embedding ``space``.
    filtered: None = whole gallery; tau = search within the query's predicted category when its ``agreement``
    >= tau (0 = always), as client.search does with spec.CATEGORY_FILTER_MIN_SCORE."""
    n = len(d.target)
    if source != GT and d.det is None:
        return np.full(n, np.inf)
    q, qidx, ok, allowed = query_rows(d, source, filtered)
    r = ranks(q[space][qidx], d.gallery[space], d.target, allowed, binary, groups=d.gallery[GROUP])
    r[~ok] = np.inf
    return r


def source_rows(d: Described, source: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """(the described crops of ``source``, each query's row in them, whether it got a box)."""
    n = len(d.target)
    if source == GT:
        return d.gt, np.arange(n), np.ones(n, bool)
    return d.det, d.selections[source].det_rows, d.selections[source].found


def agreement(d: Described, source: str) -> np.ndarray:
    """Each query's agreement on its classifier category (client/category.py, vectorised): the mean of its
    category score and the similarity-weighted share of its best narrowing.NEIGHBOURS catalog images in the
    whole gallery (served embedding, grouped as the store groups points) whose category it is."""
    q, qidx, _ = source_rows(d, source)
    groups = d.gallery[GROUP]
    sims = np.maximum.reduceat(q[EMBEDDINGS][qidx] @ d.gallery[EMBEDDINGS].T, np.unique(groups, return_index=True)[1], axis=1)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :narrowing.NEIGHBOURS]
    cos = np.take_along_axis(sims, top, 1)
    w = np.exp((cos - cos[:, :1]) / narrowing.TEMPERATURE)
    share = (w * (d.item_category()[top] == q[CATEGORY][qidx][:, None])).sum(1) / w.sum(1)
    return narrowing.agreement(q[CATEGORY_SCORE][qidx], share)


def query_rows(d: Described, source: str, filtered: float | None) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray | None]:
    """(the described crops of ``source``, each query's row in them, whether it got a box, the category filter's
    allowed [query, gallery point] mask or None). ``filtered``: narrow to the query's category when its
    ``agreement`` is at least this (0: always), as client.search does with spec.CATEGORY_FILTER_MIN_SCORE."""
    q, qidx, ok = source_rows(d, source)
    allowed = None
    if filtered is not None:
        narrow = agreement(d, source) >= filtered
        allowed = (d.gallery[CATEGORY][None, :] == q[CATEGORY][qidx][:, None]) | ~narrow[:, None]
    return q, qidx, ok, allowed


def retrieval_table(d: Described, space: str, filtered: float | None, binary: bool = False) -> dict:
    """Per box source (every selection, then ground truth), the summary and ranks of every query."""
    res = {}
    for source in (*d.selections, GT):
        r = source_ranks(d, source, space, filtered, binary)
        res[source] = summarise(r) | {"_ranks": r}
    return res


KINDS = {"all": lambda q: True, "real photo": lambda q: "__" in q.product_id, "drawn": lambda q: "__" not in q.product_id}


def by_kind(r: np.ndarray, queries: list[Query]) -> dict:
    """R@1 and R@5 of ranks ``r`` over every query, the real-photo products and the drawn ones."""
    out = {}
    for kind, fn in KINDS.items():
        ix = np.array([fn(q) for q in queries], bool)
        out[kind] = {"R@1": round(float(np.mean(r[ix] <= 1)), 4) if ix.any() else None,
                     "R@5": round(float(np.mean(r[ix] <= 5)), 4) if ix.any() else None, "n": int(ix.sum())}
    return out
