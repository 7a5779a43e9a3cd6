"""Indexing a folder of catalog images: library functions behind ``python -m client.index``."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from client.store import CatalogPoint, QdrantStore
from client.result import ImageResult, row_arrays
from client.triton import BadImage, RetrievalClient

# What a catalog image stores (client policy, measured with `python -m export.evaluate`, "Catalog views"):
# its best detection, and with CATALOG_WHOLE_IMAGE also its whole-image embedding as a second point of the
# same product (search groups by product, so the product still appears once). Both won clearly on held-out
# products (quick profile, 2026-11-23: R@1 0.418 -> 0.497 with detected query boxes, real photos 0.610 -> 0.720,
# drawn 0.257 -> 0.311) for 1.9x the points.
CATALOG_WHOLE_IMAGE = True

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class IndexReport:
    indexed: int = 0  # images
    products: int = 0  # distinct product ids among them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0


def list_catalog(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read(paths: list[Path], report: IndexReport) -> Iterator[tuple[str, bytes]]:
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as exc:
            report.skipped.append((str(p), f"cannot read: {exc.strerror or exc}"))
            continue
        yield str(p), data


def catalog_rows(source: ImageResult | Mapping[str, np.ndarray], *, whole_image: bool = CATALOG_WHOLE_IMAGE) -> list[int]:
    """The rows of a catalog image's outputs stored as its points, in ``object_index`` order: its best valid
    detection (the whole image when none), then with ``whole_image`` the whole image too, unless it is already
    the first. ``source``: an ImageResult, or outputs with ``scores`` and ``valid`` (export.evaluate's gallery)."""
    _, scores, valid = row_arrays(source)
    whole = len(scores) - 1
    detections = [r for r in range(whole) if valid[r]]
    best = max(detections, key=lambda r: scores[r]) if detections else whole
    return [best, whole] if whole_image and best != whole else [best]


def points_for(path: Path, root: Path, data_sha: str, result: ImageResult, category_from_folder: str | None) -> list[CatalogPoint]:
    """A catalog image shows one product: its ``catalog_rows`` as points of the view ``path`` relative to the
    catalog ``root``. Every point carries the first one's category (a product has one category)."""
    rows = [result.rows[r] for r in catalog_rows(result)]
    first = rows[0]
    return [CatalogPoint(vector=obj.embedding, product_id=path.stem, category=category_from_folder or first.category,
                         fine_category=first.fine_class, path=str(path), sha256=data_sha, box=obj.box, object_index=k,
                         view=path.relative_to(root).as_posix(),
                         extra={"detected_category": obj.category, "detection_score": round(obj.score, 4),
                                "whole_image": obj.whole_image})
            for k, obj in enumerate(rows)]


def index_folder(folder: Path, client: RetrievalClient, store: QdrantStore, *, category_from_folders: bool = False,
                 batch: int = 64, concurrency: int = 4, recreate: bool = False,
                 progress: Callable[[int], None] | None = None) -> IndexReport:
    t0 = time.time()
    report = IndexReport()
    paths = list_catalog(folder)
    store.ensure(client.dim, recreate=recreate)
    pending: list[CatalogPoint] = []
    data_sha: dict[str, str] = {}
    products: set[str] = set()

    def items():
        for name, data in _read(paths, report):
            data_sha[name] = hashlib.sha256(data).hexdigest()
            yield name, data

    answered = 0
    for name, result in client.infer_many(items(), concurrency=concurrency):
        answered += 1
        if progress:
            progress(1)
        if isinstance(result, BadImage):
            report.skipped.append((name, str(result).removeprefix(f"{name}: ")))
            continue
        path = Path(name)
        folder_cat = path.parent.name if category_from_folders and path.parent != folder else None
        pending += points_for(path, folder, data_sha.pop(name), result, folder_cat)
        products.add(path.stem)
        report.indexed += 1
        if len(pending) >= batch:
            store.upsert(pending)
            pending = []
    store.upsert(pending)
    report.products = len(products)
    unread = len(paths) - answered
    if progress and unread > 0:  # files that could not be read never reached the server
        progress(unread)
    report.seconds = time.time() - t0
    return report
