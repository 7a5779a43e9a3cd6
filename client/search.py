"""python -m client.search IMG [--top-k N] [--category C] [--json]: most similar catalog products per object.

Every object the detector finds (the whole image if none) is searched within its merged category when
the classifier is confident (category_score >= spec.CATEGORY_FILTER_MIN_SCORE; else in the whole
catalog), or within --category C for all objects; one hit per product, ranked by cosine similarity.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from client import spec
from client.cli import add_triton_url
from client.store import QdrantStore, StoreError
from client.triton import BadImage, RetrievalClient, TritonError


@dataclass
class ObjectResults:
    box: tuple[float, float, float, float]
    score: float
    category: str
    fine_class: str
    whole_image: bool
    results: list[dict]

    def to_json(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4), "category": self.category,
                "fine_class": self.fine_class, "whole_image": self.whole_image, "results": self.results}


def search_image(data: bytes, client: RetrievalClient, store: QdrantStore, *, top_k: int = 5,
                 category: str | None = None, name: str = "<bytes>", filter_by_category: bool = True) -> list[ObjectResults]:
    result = client.infer(data, name)
    out = []
    known: dict[str, bool] = {}
    for obj in sorted(result.objects, key=lambda o: -o.score):
        cat = category
        if cat is None and filter_by_category and obj.category_score >= spec.CATEGORY_FILTER_MIN_SCORE:
            # a catalog indexed with its own categories (--category-from-folders) may not use the
            # classifier's names: filter only by a category the catalog has
            if obj.category not in known:
                known[obj.category] = store.count(obj.category) > 0
            cat = obj.category if known[obj.category] else None
        hits = store.search(obj.embedding, category=cat, top_k=top_k)
        out.append(ObjectResults(obj.box, obj.score, obj.category, obj.fine_class, obj.whole_image,
                                 [{"product_id": h.product_id, "path": h.path, "score": round(h.score, 4)} for h in hits]))
    return out


def format_table(name: str, objects: list[ObjectResults]) -> str:
    lines = [f"{name}: {len(objects)} object(s)"]
    for i, o in enumerate(objects, 1):
        what = "whole image (no detection)" if o.whole_image else f"box {[round(v) for v in o.box]} score {o.score:.2f}"
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
