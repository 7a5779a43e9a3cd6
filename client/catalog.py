"""Indexing a folder of catalog images: library functions behind ``python -m client.index``."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from client.store import CatalogPoint, QdrantStore
from client.result import ImageResult
from client.triton import BadImage, RetrievalClient

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


def point_for(path: Path, root: Path, data_sha: str, result: ImageResult, category_from_folder: str | None) -> CatalogPoint:
    """A catalog image shows one product: store its best detection (the whole image if none) as the view
    ``path`` relative to the catalog ``root``."""
    obj = result.best()
    return CatalogPoint(vector=obj.embedding, product_id=path.stem, category=category_from_folder or obj.category,
                        fine_category=obj.fine_class, path=str(path), sha256=data_sha, box=obj.box, object_index=0,
                        view=path.relative_to(root).as_posix(),
                        extra={"detected_category": obj.category, "detection_score": round(obj.score, 4)})


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
        pending.append(point_for(path, folder, data_sha.pop(name), result, folder_cat))
        products.add(pending[-1].product_id)
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
