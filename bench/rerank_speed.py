"""What geometric re-ranking costs: python -m bench.rerank_speed [--products 2000] [--queries 50] [--out data/bench].

client.search re-ranks each object's best rerank.CANDIDATES products (client/rerank.py). This builds an
embedded store (qdrant-edge, a temporary folder) of --products generated catalog images, written as
client.index writes them (two points per image, the keypoints on the first), and times per query object,
on one thread:

- the baseline: ``QdrantStore.search`` of the top 5 (what a search did before);
- re-ranking: the search of the top CANDIDATES, the stored keypoints' lookup (``QdrantStore.keypoints``),
  the query box's keypoints and the inlier counts (``rerank.rerank_hits``), then the top 5;
- a search narrowed to a category (client/category.py): the whole catalog's top CANDIDATES, then the top
  CANDIDATES within one of the 8 categories;

and at index time the keypoints of one catalog image, and the store's size on disk with and without
them. Prints a table with ratios against the baseline; writes rerank_speed.json to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from client import category as narrowing
from client import rerank
from client.store import CatalogPoint, QdrantStore, open_engine

ROOT = Path(__file__).resolve().parent.parent
DIM = 308


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(folder: Path, n: int, keypoints: bool, texts: list[str], rng) -> None:
    centres = rng.normal(size=(n, DIM)).astype(np.float32)
    with QdrantStore(engine=open_engine(path=folder)) as store:
        store.ensure(DIM)
        batch = []
        for i in range(n):
            for k in range(2):
                v = centres[i] + 0.3 * rng.normal(size=DIM).astype(np.float32)
                extra = {rerank.FIELD: texts[i % len(texts)]} if keypoints and k == 0 else {}
                batch.append(CatalogPoint(vector=v / np.linalg.norm(v), product_id=f"p{i}", category=f"c{i % 8}",
                                          fine_category="f", path=f"/cat/p{i}.jpg", sha256=str(i), box=(0, 0, 1, 1),
                                          object_index=k, extra=extra))
            if len(batch) >= 2000:
                store.upsert(batch)
                batch = []
        store.upsert(batch)
        store.optimize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "bench")
    args = ap.parse_args(argv)
    import cv2

    from tests.test_rerank import photographed, product  # the re-ranking tests' generated printed products

    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    images = [product(s) for s in range(40)]
    t = time.perf_counter()
    texts = [rerank.pack(rerank.catalog_keypoints(im)) for im in images]
    index_ms = 1000 * (time.perf_counter() - t) / len(images)
    photos = [photographed(images[i % len(images)], i) for i in range(args.queries)]
    tmp = Path(tempfile.mkdtemp(prefix="rerank_speed_"))
    try:
        sizes = {}
        for with_kp in (False, True):
            folder = tmp / ("with" if with_kp else "without")
            build(folder, args.products, with_kp, texts, np.random.default_rng(1))
            sizes[with_kp] = _folder_size(folder)
        with QdrantStore(engine=open_engine(path=tmp / "with")) as store:
            vecs = rng.normal(size=(args.queries, DIM)).astype(np.float32)
            base, full, narrowed, parts = [], [], [], {"search": [], "lookup": [], "match": []}
            for i, (photo, box) in enumerate(photos):
                t = time.perf_counter()
                store.search(vecs[i], top_k=5)
                base.append(time.perf_counter() - t)
                t0 = time.perf_counter()
                hits = store.search(vecs[i], top_k=rerank.CANDIDATES)
                t1 = time.perf_counter()
                stored = store.keypoints([h.product_id for h in hits])
                t2 = time.perf_counter()
                query = rerank.query_keypoints(photo, box)
                rerank.rerank_hits(hits, query, lambda ids: stored)[:5]
                t3 = time.perf_counter()
                full.append(t3 - t0)
                parts["search"].append(t1 - t0); parts["lookup"].append(t2 - t1); parts["match"].append(t3 - t2)
                # a search narrowed to a category (client/category.py): the whole catalog's top 20 decide, then
                # the top 20 within the category are searched for (the same work as client.search does)
                t = time.perf_counter()
                hits = store.search(vecs[i], top_k=rerank.CANDIDATES)
                cat = narrowing.narrow_to(hits[0].category, 1.0, [(h.score, h.category) for h in hits]) or hits[0].category
                store.search(vecs[i], category=cat, top_k=rerank.CANDIDATES)
                narrowed.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ms = lambda xs: round(1000 * statistics.median(xs), 2)  # noqa: E731
    res = {"products": args.products, "queries": args.queries, "cpu_threads": 1, "cores": os.cpu_count(),
           "search_top5_ms": ms(base), "rerank_total_ms": ms(full), "rerank_ratio": round(ms(full) / ms(base), 1),
           "parts_ms": {k: ms(v) for k, v in parts.items()}, "narrowed_search_top20_ms": ms(narrowed),
           "index_keypoints_ms_per_image": round(index_ms, 2),
           "payload_bytes_per_image": int(np.mean([len(t) for t in texts])),
           "store_mb_without": round(sizes[False] / 2**20, 1), "store_mb_with": round(sizes[True] / 2**20, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rerank_speed.json").write_text(json.dumps(res, indent=1))
    print(f"{args.products} products (2 points each), {args.queries} query objects, medians, 1 thread")
    print(f"{'':<44}{'ms':>8}{'x baseline':>12}")
    print(f"{'search top 5 (baseline)':<44}{res['search_top5_ms']:>8}{1.0:>12}")
    print(f"{'search top 20 + keypoints lookup + re-rank':<44}{res['rerank_total_ms']:>8}{res['rerank_ratio']:>12}")
    for k, v in res["parts_ms"].items():
        print(f"{'  ' + k:<44}{v:>8}")
    narrow_ratio = round(res["narrowed_search_top20_ms"] / res["parts_ms"]["search"], 1)
    print(f"{'narrowed: top 20, then top 20 in a category':<44}{res['narrowed_search_top20_ms']:>8}{narrow_ratio:>12}"
          "  (x the top-20 search)")
    print(f"index time: keypoints {res['index_keypoints_ms_per_image']} ms per catalog image, payload "
          f"{res['payload_bytes_per_image']} bytes; store {res['store_mb_without']} MB without, {res['store_mb_with']} MB with")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
