"""Indexing a folder of catalog images: library functions behind ``python -m client.index`` and
``python -m client.rollout index``.

Resumable: an image whose points are already stored with the same sha256 (and all of them: each point
records how many its image has) is not sent to the server again, so a run that was killed, or whose
server went away for longer than the client's retries, is simply started again. Only files under the
catalog folder are read: a symlink that leads outside it is reported and skipped.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from client import imaging, rerank, spec
from client.imaging import MAX_IMAGE_BYTES
from client.store import CatalogPoint, QdrantStore, StoreError
from client.result import ImageResult, row_arrays
from client.triton import BadImage, RetrievalClient

# What a catalog image stores (client policy, measured with `python -m export.evaluate`, "Catalog views"):
# its best detection, and with CATALOG_WHOLE_IMAGE also its whole-image embedding as a second point of the
# same product (search groups by product, so the product still appears once). Both won clearly on held-out
# products (quick profile, 2026-11-23: R@1 0.418 -> 0.497 with detected query boxes, real photos 0.610 -> 0.720,
# drawn 0.257 -> 0.311) for 1.9x the points.
CATALOG_WHOLE_IMAGE = True


@dataclass
class IndexReport:
    indexed: int = 0  # images whose points are stored (sent to the server now, or unchanged)
    unchanged: int = 0  # of them: already stored with the same content, not sent again
    products: int = 0  # distinct product ids among them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0


def list_catalog(folder: Path) -> list[Path]:
    """Every file with an image suffix under ``folder``, sorted; symlinks included (even broken or looping
    ones: reading them reports why), folders named like images not."""
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if spec.is_image_file(p) and (p.is_symlink() or p.is_file()))


def read_inside(path: Path, root: Path) -> bytes:
    """The bytes of a catalog file, refused (OSError with the reason) when it resolves outside ``root``,
    is not a regular file, or is larger than imaging.MAX_IMAGE_BYTES."""
    real = path.resolve(strict=True)  # a symlink loop or a dangling link raises here
    if not real.is_relative_to(root.resolve()):
        raise OSError(f"links outside the catalog folder (to {real}); not read")
    if not real.is_file():
        raise OSError("not a regular file")
    size = real.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise OSError(f"file too large ({size / 2**20:.0f} MiB); the limit is {MAX_IMAGE_BYTES // 2**20} MiB")
    return real.read_bytes()


def _read(paths: list[Path], root: Path, report: IndexReport, progress: Callable[[int], None] | None) -> Iterator[tuple[str, bytes]]:
    for p in paths:
        try:
            data = read_inside(p, root)
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, on some Python versions
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            report.skipped.append((str(p), f"cannot read: {reason}"))
            if progress:
                progress(1)
            continue
        yield str(p), data


def is_stored(store: QdrantStore, path: str, sha256: str) -> bool:
    """Whether every point of this image is stored with this content and its re-ranking keypoints (a cheap
    payload lookup: ``keypoints_n`` stands for them). An image indexed before keypoints existed is sent again."""
    stored = store.image_points(path)
    return bool(stored) and all(p.get("sha256") == sha256 for p in stored) \
        and len(stored) == int(stored[0].get("image_points", len(stored))) and any(isinstance(p.get("keypoints_n"), int) for p in stored)


def catalog_rows(source: ImageResult | Mapping[str, np.ndarray], *, whole_image: bool = CATALOG_WHOLE_IMAGE) -> list[int]:
    """The rows of a catalog image's outputs stored as its points, in ``object_index`` order: its best valid
    detection (the whole image when none), then with ``whole_image`` the whole image too, unless it is already
    the first. ``source``: an ImageResult, or outputs with ``scores`` and ``valid`` (export.evaluate's gallery)."""
    _, scores, valid = row_arrays(source)
    whole = len(scores) - 1
    detections = [r for r in range(whole) if valid[r]]
    best = max(detections, key=lambda r: scores[r]) if detections else whole
    return [best, whole] if whole_image and best != whole else [best]


def image_keypoints(data: bytes) -> str | None:
    """The packed re-ranking keypoints of a catalog image (client/rerank.py); None when it cannot be decoded
    here (the server then refuses it too)."""
    try:
        return rerank.pack(rerank.catalog_keypoints(imaging.decode(data)))
    except imaging.ImageDecodeError:
        return None


def points_for(path: Path, root: Path, data_sha: str, result: ImageResult, category_from_folder: str | None,
               keypoints: str | None = None) -> list[CatalogPoint]:
    """A catalog image shows one product: its ``catalog_rows`` as points of the view ``path`` relative to the
    catalog ``root``. Every point carries the first one's category (a product has one category); the first
    also the image's packed ``keypoints`` (``image_keypoints``) when given."""
    rows = [result.rows[r] for r in catalog_rows(result)]
    first = rows[0]
    return [CatalogPoint(vector=obj.embedding, product_id=path.stem, category=category_from_folder or first.category,
                         fine_category=first.fine_class, path=str(path), sha256=data_sha, box=obj.box, object_index=k,
                         view=path.relative_to(root).as_posix(),
                         extra={"detected_category": obj.category, "detection_score": round(obj.score, 4),
                                "whole_image": obj.whole_image, "image_points": len(rows)}
                         | ({rerank.FIELD: keypoints, "keypoints_n": len(rerank.unpack(keypoints)[0])} if keypoints and k == 0 else {}))
            for k, obj in enumerate(rows)]


def index_folder(folder: Path, client: RetrievalClient, store: QdrantStore, *, category_from_folders: bool = False,
                 batch: int = 64, concurrency: int = 4, recreate: bool = False, live: bool = True,
                 progress: Callable[[int], None] | None = None) -> IndexReport:
    """Indexes every image under ``folder`` into the collection of the embedder the server runs.

    ``live`` (``client.index``): that collection must be the one searches read (the alias), else
    StoreError says to roll out; ``live=False`` (``client.rollout index``) fills it while the alias keeps
    serving another. A store opened for another embedder than the served one is refused. Points are
    written ``batch`` at a time, each image's points in one write."""
    t0 = time.time()
    report = IndexReport()
    paths = list_catalog(folder)
    served = client.embedder_id()
    if store.embedder_id is None:
        store.use_embedder(served)
    elif store.embedder_id != served:
        raise StoreError(f"this store writes the collection of embedder {store.embedder_id} but the server runs {served}")
    store.ensure(client.dim, recreate=recreate, live=live)
    pending: list[CatalogPoint] = []
    data_sha: dict[str, str] = {}
    keypoints: dict[str, str | None] = {}
    products: set[str] = set()

    def items():
        for name, data in _read(paths, folder, report, progress):
            sha = hashlib.sha256(data).hexdigest()
            if is_stored(store, name, sha):
                report.indexed += 1
                report.unchanged += 1
                products.add(Path(name).stem)
                if progress:
                    progress(1)
                continue
            data_sha[name] = sha
            keypoints[name] = image_keypoints(data)
            yield name, data

    for name, result in client.infer_many(items(), concurrency=concurrency):
        if progress:
            progress(1)
        if isinstance(result, BadImage):
            keypoints.pop(name, None)
            report.skipped.append((name, str(result).removeprefix(f"{name}: ")))
            continue
        path = Path(name)
        folder_cat = path.parent.name if category_from_folders and path.parent != folder else None
        pending += points_for(path, folder, data_sha.pop(name), result, folder_cat, keypoints.pop(name, None))
        products.add(path.stem)
        report.indexed += 1
        if len(pending) >= batch:
            store.upsert(pending)
            pending = []
    store.upsert(pending)
    # build the HNSW index of an embedded collection once per run (a server does it on its own): without it
    # every search scans all points (bench.store_scale, "edge-scan" rows)
    store.optimize()
    report.products = len(products)
    report.seconds = time.time() - t0
    return report
