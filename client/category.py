"""When a search is narrowed to the object's category (client.search, client.video; measured by export.evaluate).

The classifier's category alone is a poor filter on products it was not trained on: 0.78-0.81 of held-out
objects get the right one, and when it is wrong the filter hides the right product however sure it is.
The catalog's own neighbours are a second opinion that costs one search: the object's best ``NEIGHBOURS``
products in the whole catalog, each weighted by ``exp((cosine - best cosine) / TEMPERATURE)``, and the
weighted share of them stored under the classifier's category. The search is narrowed to that category
when the mean of the classifier's score and that share reaches spec.CATEGORY_FILTER_MIN_SCORE: both must
lean the same way (a share of 0 caps the mean at 0.5).

Chosen with `python -m export.evaluate` (quick profile, 2026-12-05; "category_filter_sweep" and the
headline's "no category filter" row): against the classifier's score alone at the same 0.80, the filter
narrows 0.59-0.60 of the searches instead of 0.27-0.29, the category it narrows to is the right one more
often, and R@1 equals that of no filter on both held-out sets, where the score alone lost 0.003 on one.

A catalog indexed with its own category names (``--category-from-folders``) holds none of the
classifier's names, so the share is 0 and nothing is narrowed; no lookup of the catalog's names is needed.
"""
from __future__ import annotations

import math
from typing import Iterable

from client import spec

NEIGHBOURS = 5  # the object's best products in the whole catalog that vote
TEMPERATURE = 0.05  # cosine scale of their weights: 0.05 below the best counts e^-1 as much


def neighbour_share(category: str, neighbours: Iterable[tuple[float, str]], k: int = NEIGHBOURS,
                    temperature: float = TEMPERATURE) -> float:
    """The similarity-weighted share of the best ``k`` of ``neighbours`` ((cosine, stored category) of
    distinct products, any order) that are stored under ``category``; 0 when there are none."""
    best = sorted(neighbours, key=lambda n: -n[0])[:k]
    if not best:
        return 0.0
    top = best[0][0]
    weights = [math.exp((cos - top) / temperature) for cos, _ in best]
    return sum(w for w, (_, cat) in zip(weights, best) if cat == category) / sum(weights)


def agreement(score: float, share: float) -> float:
    """How far the classifier (its ``score``) and the catalog's neighbours (their ``share``) agree on a category."""
    return (score + share) / 2


def narrow_to(category: str, score: float, neighbours: Iterable[tuple[float, str]],
              min_agreement: float = spec.CATEGORY_FILTER_MIN_SCORE) -> str | None:
    """``category`` when the search should be narrowed to it, else None (search the whole catalog)."""
    return category if agreement(score, neighbour_share(category, neighbours)) >= min_agreement else None
