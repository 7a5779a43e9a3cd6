"""python -m client.index DIR [--category-from-folders]: index a catalog folder into Qdrant.

A product's id is the file name without extension. Each image goes through the Triton ensemble and
stores what client.catalog.catalog_rows chooses (its best detection, or the whole image if none, plus
the whole-image embedding), with its merged category; point ids derive from the product id, the
image's path under DIR and the object index, not from its bytes. Unreadable files are skipped and listed
at the end; the rest of the batch goes on and nothing already stored is lost.
Exit status: 0 all indexed, 3 some files skipped, 1 nothing could be done.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from client.cli import add_triton_url
from client.catalog import index_folder, list_catalog
from client.store import QdrantStore, StoreError
from client.triton import RetrievalClient, TritonError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--category-from-folders", action="store_true",
                    help="use each image's parent folder name as its category instead of the classifier's")
    ap.add_argument("--batch", type=int, default=64, help="points per upsert (default %(default)s)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight to Triton (default %(default)s)")
    ap.add_argument("--recreate", action="store_true", help="drop the collection first")
    add_triton_url(ap)
    args = ap.parse_args(argv)
    try:
        n = len(list_catalog(args.folder))
        client = RetrievalClient(args.triton_url)
        store = QdrantStore()
    except (NotADirectoryError, TritonError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with client, store, tqdm(total=n, desc="indexing", unit="img") as bar:
        try:
            report = index_folder(args.folder, client, store, category_from_folders=args.category_from_folders,
                                  batch=args.batch, concurrency=args.concurrency, recreate=args.recreate, progress=bar.update)
        except (TritonError, StoreError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        total = store.count()
    print(f"indexed {report.indexed} of {n} images ({report.products} products) into {store.collection} "
          f"(alias {store.alias}) at {store.where} in {report.seconds:.1f} s "
          f"({report.indexed / max(report.seconds, 1e-9):.1f} img/s); collection holds {total} points")
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if report.skipped:
        print(f"{len(report.skipped)} file(s) skipped", file=sys.stderr)
        return 3 if report.indexed else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
