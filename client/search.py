"""python -m client.search IMG [--top-k N] [--category C] [--json]: most similar catalog products per object.

The objects of a photo are the rows ``select_rows`` picks (every detection above the detector's
threshold, a few of the best weaker ones, no duplicates, in score order; the whole image if none).
Each is searched within its merged category when the classifier is confident (category_score >=
spec.CATEGORY_FILTER_MIN_SCORE; else in the whole catalog), or within --category C for all objects;
one hit per product, ranked by cosine similarity.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from client import imaging, spec
from client.cli import add_triton_url
from client.result import DetectedObject, ImageResult, row_arrays
from client.store import QdrantStore, StoreError
from client.triton import BadImage, RetrievalClient, TritonError

# Which rows of the ensemble a search reports (client policy, not the contract). The detector is
# under-confident on unseen domains: rows below spec.SCORE_THRESHOLD often hold the product. Chosen with
# `python -m export.evaluate` ("Row policy sweep": extra 0-3, floor 0.05/0.1/0.2, IoU 0.3/0.5/0.7) as round
# values that win clearly, not tuned to the third decimal (quick profile, 2026-11-23): held-out products with a
# box 0.872 -> 0.924, R@1 0.385 -> 0.418 (real photos 0.545 -> 0.610) for 2.0 -> 2.65 objects per photo; a
# third extra row or a 0.05 floor adds <= 0.007 R@1 for 0.7 more objects per photo, a 0.2 floor loses 0.014.
EXTRA_OBJECTS = 2  # at most this many detections below the threshold besides the valid ones (the cost: objects a person reads)
EXTRA_MIN_SCORE = 0.10  # ... each scoring at least this (below it, rows rarely hold a product)
MAX_OVERLAP = 0.5  # IoU above which a row repeats a box already reported (no NMS op, only a 3x3 max-pool: duplicates are common)


def select_rows(source: ImageResult | Mapping[str, np.ndarray], *, extra: int = EXTRA_OBJECTS,
                min_score: float = EXTRA_MIN_SCORE, max_overlap: float = MAX_OVERLAP) -> list[int]:
    """The rows a search reports, best score first: every valid detection, then up to ``extra`` of the
    best-scored other detections with score >= ``min_score``; a detection whose IoU with a row already
    taken exceeds ``max_overlap`` is a duplicate and dropped (valid ones included). The whole-image row
    when nothing else is. ``source``: an ImageResult, or outputs with ``boxes``, ``scores``, ``valid``
    (every row, the whole image last), as export.evaluate measures it."""
    if extra < 0 or not 0 <= max_overlap <= 1:
        raise ValueError(f"extra must be >= 0 and max_overlap in [0, 1], got extra={extra}, max_overlap={max_overlap}")
    boxes, scores, valid = row_arrays(source)
    whole = len(scores) - 1
    taken: list[int] = []
    n_extra = 0
    for r in sorted(range(whole), key=lambda i: (-scores[i], i)):
        weak = not valid[r]
        if weak and (n_extra >= extra or scores[r] < min_score):
            continue
        if taken and imaging.box_iou(boxes[r], boxes[taken]).max() > max_overlap:
            continue
        taken.append(r)
        n_extra += weak
    return taken or [whole]


def select_objects(result: ImageResult, **policy) -> list[DetectedObject]:
    """The objects a search reports (``select_rows`` of ``result``), in that order."""
    return [result.rows[r] for r in select_rows(result, **policy)]


@dataclass
class ObjectResults:
    box: tuple[float, float, float, float]
    score: float
    category: str
    fine_class: str
    whole_image: bool
    results: list[dict]
    valid: bool = True  # False: a detection below the detector's threshold, reported by select_rows

    def to_json(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4), "category": self.category,
                "fine_class": self.fine_class, "whole_image": self.whole_image, "valid": self.valid, "results": self.results}


def search_image(data: bytes, client: RetrievalClient, store: QdrantStore, *, top_k: int = 5,
                 category: str | None = None, name: str = "<bytes>", filter_by_category: bool = True) -> list[ObjectResults]:
    result = client.infer(data, name)
    out = []
    known: dict[str, bool] = {}
    for obj in select_objects(result):
        cat = category
        if cat is None and filter_by_category and obj.category_score >= spec.CATEGORY_FILTER_MIN_SCORE:
            # a catalog indexed with its own categories (--category-from-folders) may not use the
            # classifier's names: filter only by a category the catalog has
            if obj.category not in known:
                known[obj.category] = store.count(obj.category) > 0
            cat = obj.category if known[obj.category] else None
        hits = store.search(obj.embedding, category=cat, top_k=top_k)
        out.append(ObjectResults(obj.box, obj.score, obj.category, obj.fine_class, obj.whole_image,
                                 [{"product_id": h.product_id, "path": h.path, "score": round(h.score, 4)} for h in hits], obj.valid))
    return out


def format_table(name: str, objects: list[ObjectResults]) -> str:
    lines = [f"{name}: {len(objects)} object(s)"]
    for i, o in enumerate(objects, 1):
        what = "whole image (no detection)" if o.whole_image else \
            f"box {[round(v) for v in o.box]} score {o.score:.2f}{'' if o.valid else ' (below the detector threshold)'}"
        lines.append(f"  object {i}: {what}, category {o.category} ({o.fine_class})")
        if not o.results:
            lines.append("    no catalog items in this category")
        for r, hit in enumerate(o.results, 1):
            lines.append(f"    {r:>2}. {hit['product_id']:<40} {hit['score']:.3f}  {hit['path']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--category", help="search every object within this category instead of its detected one")
    ap.add_argument("--no-category-filter", action="store_true", help="search the whole catalog for every object")
    ap.add_argument("--json", action="store_true", help='print {"objects": [{"box", "score", "category", "results": [...]}]}')
    ap.add_argument("--html", type=Path, help="also write an HTML gallery of the results to this file")
    add_triton_url(ap)
    args = ap.parse_args(argv)
    if args.top_k < 1:
        ap.error("--top-k must be at least 1")
    try:
        data = args.image.read_bytes()
    except OSError as exc:
        print(f"error: {args.image}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        with RetrievalClient(args.triton_url) as client, QdrantStore() as store:
            if not store.exists():
                print(f"error: no catalog indexed at {store.where}; run `python -m client.index DIR` first", file=sys.stderr)
                return 1
            objects = search_image(data, client, store, top_k=args.top_k, category=args.category, name=str(args.image),
                                   filter_by_category=not args.no_category_filter)
    except BadImage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (TritonError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"image": str(args.image), "objects": [o.to_json() for o in objects]}))
    else:
        print(format_table(str(args.image), objects))
    if args.html:
        from client import gallery, imaging

        gallery.write(args.html, imaging.decode(data), str(args.image), objects)
        print(f"gallery: {args.html}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
