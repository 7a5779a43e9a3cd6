"""python -m client.search IMG|VIDEO ... [--top-k N] [--frames N] [--as-one] [--category C] [--json]: most similar catalog products per object.

The objects of a photo are rows the ensemble returns, chosen by the row policy of client/spec.py
(every detection above the detector's threshold, then a few weaker ones, those most like a catalog product,
no duplicates; the whole image if none).
Each is searched within its merged category when the classifier and the object's nearest catalog products agree
on it (client/category.py; else in the whole catalog), or within --category C for all objects;
one hit per product, ranked by cosine similarity, then the best rerank.CANDIDATES re-ranked by how well
their catalog image's local features agree with the object's (client/rerank.py; --no-rerank: cosine only).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from client import category as narrowing
from client import imaging, rerank, spec
from client.cli import add_triton_url
from client.result import DetectedObject, ImageResult, row_arrays
from client.store import QdrantStore, StoreError
from client.triton import BadImage, RetrievalClient, TritonError

# Which rows a search reports: the row policy of client/spec.py. The served crop graph passes on the valid
# detections and up to EXTRA_CANDIDATES weaker ones (candidate_rows is that step in Python: a test holds the graph
# to it); select_rows keeps the valid ones and the EXTRA_OBJECTS weaker ones most like a catalog product.
# export.evaluate measures other parameters with them.
EXTRA_OBJECTS = spec.EXTRA_OBJECTS
EXTRA_CANDIDATES = spec.EXTRA_CANDIDATES
EXTRA_MIN_SCORE = spec.EXTRA_MIN_SCORE
MAX_OVERLAP = spec.MAX_OVERLAP
EXTRA_MATCH_WEIGHT = spec.EXTRA_MATCH_WEIGHT


def candidate_rows(source: ImageResult | Mapping[str, np.ndarray], *, extra: int = EXTRA_CANDIDATES,
                   min_score: float = EXTRA_MIN_SCORE, max_overlap: float = MAX_OVERLAP) -> list[int]:
    """The rows the served crop graph passes on, best score first: every valid detection, then up to ``extra``
    of the best-scored other detections with score >= ``min_score``; a detection whose IoU with a row already
    taken exceeds ``max_overlap`` is a duplicate and dropped (valid ones included). The whole-image row when
    nothing else is. ``source``: an ImageResult, or outputs with ``boxes``, ``scores``, ``valid`` (every row,
    the whole image last), as export.evaluate measures it."""
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


def weak_candidates(source: ImageResult | Mapping[str, np.ndarray], **policy) -> list[int]:
    """The rows of ``candidate_rows`` below the detector's threshold: those ``select_rows`` chooses among."""
    valid = row_arrays(source)[2]
    whole = len(valid) - 1
    return [r for r in candidate_rows(source, **policy) if r != whole and not valid[r]]


def select_rows(source: ImageResult | Mapping[str, np.ndarray], *, extra: int = EXTRA_OBJECTS,
                min_score: float = EXTRA_MIN_SCORE, max_overlap: float = MAX_OVERLAP,
                match: Mapping[int, float] | None = None, candidates: int = EXTRA_CANDIDATES,
                match_weight: float = EXTRA_MATCH_WEIGHT) -> list[int]:
    """The rows a search reports: every valid row of ``candidate_rows`` (with up to max(``extra``, ``candidates``)
    weaker ones), then ``extra`` of its weaker rows: when there are more of those than ``extra`` and ``match`` is
    given (row -> its best cosine to the catalog, for every weaker candidate), those with the highest score +
    ``match_weight`` x match, else the best-scored. The whole-image row when nothing else is."""
    if extra < 0 or candidates < 0:
        raise ValueError(f"extra must be >= 0 and candidates >= 0, got extra={extra}, candidates={candidates}")
    rows = candidate_rows(source, extra=max(extra, candidates), min_score=min_score, max_overlap=max_overlap)
    _, scores, valid = row_arrays(source)
    whole = len(scores) - 1
    weak = [r for r in rows if r != whole and not valid[r]]  # after the valid ones: candidate_rows is in score order
    if match is not None and len(weak) > extra:
        missing = [r for r in weak if r not in match]
        if missing:
            raise ValueError(f"match has no cosine for the weaker candidate rows {missing}")
        weak = sorted(weak, key=lambda r: (-(float(scores[r]) + match_weight * float(match[r])), r))
    return [r for r in rows if r != whole and valid[r]] + weak[:extra] or [whole]


def catalog_match(result: ImageResult, store: QdrantStore, *, category: str | None = None,
                  extra: int = EXTRA_OBJECTS) -> dict[int, float] | None:
    """Each weaker candidate row's best cosine to the catalog (``category`` alone when given), when there are
    more of them than a search reports; else None (select_rows would not read it)."""
    weak = weak_candidates(result)
    if len(weak) <= extra:
        return None
    out = {}
    for r in weak:
        hits = store.search(result.rows[r].embedding, category=category, top_k=1)
        out[r] = hits[0].score if hits else 0.0
    return out


def select_objects(result: ImageResult, match: Mapping[int, float] | None = None, **policy) -> list[DetectedObject]:
    """The objects a search reports (``select_rows`` of ``result``), in that order."""
    return [result.rows[r] for r in select_rows(result, match=match, **policy)]


@dataclass
class ObjectResults:
    box: tuple[float, float, float, float]
    score: float
    category: str
    fine_class: str
    whole_image: bool
    results: list[dict]
    valid: bool = True  # False: a detection below the detector's threshold, reported by select_rows
    searched_in: str | None = None  # the category the search was narrowed to (None: the whole catalog)

    def to_json(self) -> dict:
        return {"box": [round(v, 1) for v in self.box], "score": round(self.score, 4), "category": self.category,
                "fine_class": self.fine_class, "whole_image": self.whole_image, "valid": self.valid,
                "searched_in": self.searched_in, "results": self.results}


def search_image(data: bytes, client: RetrievalClient, store: QdrantStore, *, top_k: int = 5,
                 category: str | None = None, name: str = "<bytes>", filter_by_category: bool = True,
                 geometric: bool = True) -> list[ObjectResults]:
    """Each reported object's top-k products. ``geometric``: the best rerank.CANDIDATES products are re-ranked
    by local-feature agreement with the stored keypoints of their images (client/rerank.py); each result then
    also has its ``cosine`` and ``inliers``, and ``score`` is the fused one."""
    result = client.infer(data, name)
    # a catalog built with another embedder than the served one cannot be searched (StoreError: what to run)
    store.check_embedder(result.embedder_id, len(result.image_embedding))
    image = None
    if geometric:
        try:
            image = imaging.decode(data)  # the server decoded the same bytes with the same function
        except imaging.ImageDecodeError:  # not expected after the server read it; then rank by cosine
            image = None
    out = []
    pool = top_k if image is None else max(top_k, rerank.CANDIDATES)
    for obj in select_objects(result, catalog_match(result, store, category=category)):
        if category is not None:
            cat, hits = category, store.search(obj.embedding, category=category, top_k=pool)
        else:
            hits = store.search(obj.embedding, top_k=max(pool, narrowing.NEIGHBOURS))
            cat = narrowing.narrow_to(obj.category, obj.category_score, [(h.score, h.category) for h in hits]) \
                if filter_by_category else None
            hits = store.search(obj.embedding, category=cat, top_k=pool) if cat is not None else hits[:pool]
        if image is not None:
            query = rerank.query_keypoints(image, None if obj.whole_image else obj.box)
            hits = rerank.rerank_hits(hits, query, store.keypoints)[:top_k]
        listed = [{"product_id": h.product_id, "path": h.path, "score": round(h.score, 4)}
                  | ({} if image is None else {"cosine": round(h.payload["cosine"], 4), "inliers": h.payload["inliers"]})
                  for h in hits]
        out.append(ObjectResults(obj.box, obj.score, obj.category, obj.fine_class, obj.whole_image, listed, obj.valid, cat))
    return out


def format_table(name: str, objects: list[ObjectResults]) -> str:
    lines = [f"{name}: {len(objects)} object(s)"]
    for i, o in enumerate(objects, 1):
        what = "whole image (no detection)" if o.whole_image else \
            f"box {[round(v) for v in o.box]} score {o.score:.2f}{'' if o.valid else ' (below the detector threshold)'}"
        where = f"searched in {o.searched_in}" if o.searched_in else "searched in the whole catalog"
        lines.append(f"  object {i}: {what}, category {o.category} ({o.fine_class}), {where}")
        if not o.results:
            lines.append("    no catalog items in this category")
        for r, hit in enumerate(o.results, 1):
            geo = f" (cosine {hit['cosine']:.3f}, {hit['inliers']} inliers)" if hit.get("inliers") is not None else ""
            lines.append(f"    {r:>2}. {hit['product_id']:<40} {hit['score']:.3f}{geo}  {hit['path']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " A video gives one object per product followed "
                                 "through its frames (client/video.py).")
    ap.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_VIDEO",
                    help="photos and/or videos (told apart by their content); several: one result each (--json: one line each)")
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--frames", type=int, default=10, help="frames sampled evenly from a video (default %(default)s)")
    ap.add_argument("--as-one", action="store_true", help="the photos show one scene: follow each product across them and vote, "
                    "as for a video's frames")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight to Triton for a video's frames (default %(default)s)")
    ap.add_argument("--category", help="search every object within this category instead of its detected one")
    ap.add_argument("--no-category-filter", action="store_true", help="search the whole catalog for every object")
    ap.add_argument("--no-rerank", action="store_true", help="photos: rank by the embedding's cosine alone (no geometric "
                    "re-ranking of the best %d products); a video's votes always use the cosine ranking" % rerank.CANDIDATES)
    ap.add_argument("--json", action="store_true", help='print {"objects": [{"box", "score", "category", "results": [...]}]}; '
                    'a video\'s objects also have "frame", "frames" and results "votes"')
    ap.add_argument("--html", type=Path, help="also write an HTML gallery of the results to this file "
                    "(several inputs without --as-one: FILE_1.html, FILE_2.html, ...)")
    add_triton_url(ap)
    args = ap.parse_args(argv)
    if args.top_k < 1:
        ap.error("--top-k must be at least 1")
    if args.frames < 1:
        ap.error("--frames must be at least 1")
    from client import gallery, video, videoframes

    kinds = {p: videoframes.is_video(p) for p in args.inputs}
    if args.as_one and any(kinds.values()):
        ap.error(f"--as-one votes over photos; {next(p for p, v in kinds.items() if v)} is a video (its frames are voted already)")
    search = dict(top_k=args.top_k, category=args.category, filter_by_category=not args.no_category_filter)
    photo_search = dict(search, geometric=not args.no_rerank)
    status = 0

    def fail(code: int, message: str) -> None:
        nonlocal status
        print(f"error: {message}", file=sys.stderr)
        status = status or code

    def html_path(i: int) -> Path | None:
        if args.html is None or args.as_one or len(args.inputs) == 1:
            return args.html
        return args.html.with_name(f"{args.html.stem}_{i + 1}{args.html.suffix or '.html'}")

    def emit(i: int, report: dict, text: str, images: dict) -> None:
        print(json.dumps(report) if args.json else text, flush=True)
        page = html_path(i)
        if page:
            gallery.write_report(page, report, images)
            print(f"gallery: {page}", file=sys.stderr)

    try:
        with RetrievalClient(args.triton_url) as client, QdrantStore() as store:
            if not store.exists():
                fail(1, f"no catalog indexed at {store.where}; run `python -m client.index DIR` first")
                return status
            if args.as_one:
                frames = []
                for i, path in enumerate(args.inputs):
                    try:
                        data = path.read_bytes()
                        frames.append(videoframes.Frame.from_image(i, imaging.decode(data), data=data))
                    except OSError as exc:
                        fail(1, f"{path}: cannot read: {exc.strerror or exc}")
                    except imaging.ImageDecodeError as exc:
                        fail(2, f"{path}: {exc}")
                if not frames:
                    return status
                images: dict = {}
                report = video.search_frames(frames, client, store, concurrency=args.concurrency, images=images,
                                             name=" + ".join(str(p) for p in args.inputs), **search)
                report["inputs"] = [str(p) for p in args.inputs]
                emit(0, report, video.format_report(report), images)
                return status
            for i, path in enumerate(args.inputs):
                try:
                    if kinds[path]:
                        images = {}
                        report = video.search_video(path, client, store, frames=args.frames, concurrency=args.concurrency,
                                                    images=images, **search)
                        emit(i, report, video.format_report(report), images)
                        continue
                    data = path.read_bytes()
                    objects = search_image(data, client, store, name=str(path), **photo_search)
                    report = {"image": str(path), "objects": [o.to_json() for o in objects]}
                    emit(i, report, format_table(str(path), objects), {"query": imaging.decode(data)} if html_path(i) else {})
                except OSError as exc:
                    fail(1, f"{path}: cannot read: {exc.strerror or exc}")
                except (BadImage, video.VideoError) as exc:
                    fail(2, str(exc))
    except (TritonError, StoreError) as exc:
        fail(1, str(exc))
    return status


if __name__ == "__main__":
    sys.exit(main())
