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
from PIL import Image, ImageEnhance

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

# Synthetic views: a photo of a product is often turned and darker than its catalog image, so each catalog image
# also stores the whole-image embeddings of itself turned by +-15 degrees and darkened (database-side
# augmentation), more points of the same product (search groups by product). They go through the detector-free
# ``whole_image`` ensemble (client-side transforms of the image, at most VIEW_SIDE px). Measured with
# `python -m export.evaluate` (docs/measurements.md, "Synthetic catalog views"), re-ranked R@1 with detected boxes, real photos
# in brackets: seed 1234 0.905 -> 0.902 (0.860 -> 0.856), seed 777 0.879 -> 0.884 (0.848 -> 0.860); cosine only
# 0.860 -> 0.867 and 0.834 -> 0.851. Cost: 2.6x the points, and client.index 1.8x slower (three small inferences
# per catalog image).
# "small" (2026-12-05): the image shrunk to VIEW_SMALL px, as a product far from the camera is cropped from a photo;
# its whole-image embedding is of the blurry upscale the crop graph makes of it. `python -m bench.photo_search`
# (docs/measurements.md, "A small catalog view"): hard check top-1 0.722 -> 0.733 and 0.656 -> 0.672 (seeds 4242 / 4343).
VIEW_SIDE = 640
VIEW_TURN = 15.0
VIEW_DARKER = 0.65
VIEW_SMALL = 64  # "small": the image shrunk to this many px (long side), as a small object's crop is
CATALOG_VIEWS = ("turned +15", "turned -15", "darker", "small")


def _border_colour(img: Image.Image) -> tuple[int, ...]:
    """The median colour of the image's outermost pixels: what a turned catalog image's new corners are filled
    with (white for a product on white)."""
    a = np.asarray(img)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))


def synthetic_views(img: Image.Image) -> list[tuple[str, Image.Image]]:
    """The CATALOG_VIEWS of a decoded catalog image, by name (the image first shrunk to VIEW_SIDE px at most); none
    for a strip whose short side would fall below imaging.MIN_SIDE (the server would refuse it)."""
    img = img.convert("RGB")
    if max(img.size) > VIEW_SIDE:
        img = img.copy()
        img.thumbnail((VIEW_SIDE, VIEW_SIDE), Image.BILINEAR)
    if min(img.size) < imaging.MIN_SIDE:
        return []
    fill = _border_colour(img)
    small = img.copy()
    small.thumbnail((VIEW_SMALL, VIEW_SMALL), Image.BILINEAR)
    views = {"turned +15": img.rotate(VIEW_TURN, Image.BICUBIC, expand=True, fillcolor=fill),
             "turned -15": img.rotate(-VIEW_TURN, Image.BICUBIC, expand=True, fillcolor=fill),
             "darker": ImageEnhance.Brightness(img).enhance(VIEW_DARKER),
             "small": small if min(small.size) >= imaging.MIN_SIDE else None}
    return [(name, views[name]) for name in CATALOG_VIEWS if views[name] is not None]


@dataclass
class Described:
    """What a catalog image stores, from the server: its ensemble result, its re-ranking keypoints (None when this
    side cannot decode it), the whole-image embeddings of its synthetic views by name, and which views were asked
    for (CATALOG_VIEWS, or none): a view that cannot be made (``synthetic_views``) is left out."""
    result: ImageResult
    keypoints: str | None
    views: list[tuple[str, np.ndarray]]
    asked: tuple[str, ...] = ()


def describe(client: RetrievalClient, data: bytes, name: str, with_views: bool = True) -> Described:
    """Sends one catalog image (and with ``with_views`` its synthetic views) to the server; BadImage when the server
    cannot read the image (a view it refuses is left out). The objects come from the catalog ensemble
    (``RetrievalClient.infer_catalog``: no box jitter)."""
    result = client.infer_catalog(data, name)
    asked = CATALOG_VIEWS if with_views else ()
    try:
        img = imaging.decode(data)
    except imaging.ImageDecodeError:
        return Described(result, None, [], asked)
    views = []
    for label, view in synthetic_views(img) if with_views else []:
        try:
            views.append((label, client.whole_image_embedding(imaging.encode_jpeg(view, 95), f"{name} ({label})")))
        except BadImage:
            continue
    return Described(result, rerank.pack(rerank.catalog_keypoints(img)), views, asked)


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


def is_stored(store: QdrantStore, path: str, sha256: str, views: tuple[str, ...] = CATALOG_VIEWS) -> bool:
    """Whether every point of this image is stored with this content, its re-ranking keypoints (a cheap payload
    lookup: ``keypoints_n`` stands for them), indexed asking for exactly the synthetic ``views`` (each point lists
    them in ``synthetic_views``). An image indexed before keypoints or views existed (or with other views) is sent
    again."""
    stored = store.image_points(path)
    return bool(stored) and all(p.get("sha256") == sha256 for p in stored) \
        and len(stored) == int(stored[0].get("image_points", len(stored))) and any(isinstance(p.get("keypoints_n"), int) for p in stored) \
        and sorted(stored[0].get("synthetic_views", ())) == sorted(views)


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


def points_for(path: Path, root: Path, data_sha: str, described: Described, category_from_folder: str | None) -> list[CatalogPoint]:
    """A catalog image shows one product: its ``catalog_rows``, then its synthetic views, as points of the view
    ``path`` relative to the catalog ``root``. Every point carries the first one's category (a product has one
    category); the first also the image's packed keypoints when there are any. A synthetic view's point has the
    whole image's box and names its transform in ``synthetic_view``."""
    result = described.result
    rows = [result.rows[r] for r in catalog_rows(result)]
    first, whole = rows[0], result.whole
    n = len(rows) + len(described.views)
    keypoints = described.keypoints

    def point(k: int, vector: np.ndarray, box, extra: dict) -> CatalogPoint:
        return CatalogPoint(vector=vector, product_id=path.stem, category=category_from_folder or first.category,
                            fine_category=first.fine_class, path=str(path), sha256=data_sha, box=box, object_index=k,
                            view=path.relative_to(root).as_posix(), extra=extra | {"image_points": n, "synthetic_views": list(described.asked)}
                            | ({rerank.FIELD: keypoints, "keypoints_n": len(rerank.unpack(keypoints)[0])} if keypoints and k == 0 else {}))

    points = [point(k, obj.embedding, obj.box, {"detected_category": obj.category, "detection_score": round(obj.score, 4),
                                                "whole_image": obj.whole_image}) for k, obj in enumerate(rows)]
    points += [point(len(rows) + j, vector, whole.box, {"whole_image": True, "synthetic_view": label})
               for j, (label, vector) in enumerate(described.views)]
    return points


def index_folder(folder: Path, client: RetrievalClient, store: QdrantStore, *, category_from_folders: bool = False,
                 batch: int = 64, concurrency: int = 4, recreate: bool = False, live: bool = True,
                 synthetic: bool = True, progress: Callable[[int], None] | None = None) -> IndexReport:
    """Indexes every image under ``folder`` into the collection of the embedder the server runs.

    ``live`` (``client.index``): that collection must be the one searches read (the alias), else
    StoreError says to roll out; ``live=False`` (``client.rollout index``) fills it while the alias keeps
    serving another. A store opened for another embedder than the served one is refused. Points are
    written ``batch`` at a time, each image's points in one write. ``synthetic``: also store each image's
    synthetic views (CATALOG_VIEWS); an image stored with other views than asked for is sent again."""
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
    products: set[str] = set()

    def items():
        for name, data in _read(paths, folder, report, progress):
            sha = hashlib.sha256(data).hexdigest()
            if is_stored(store, name, sha, CATALOG_VIEWS if synthetic else ()):
                report.indexed += 1
                report.unchanged += 1
                products.add(Path(name).stem)
                if progress:
                    progress(1)
                continue
            data_sha[name] = sha
            yield name, data

    for name, described in client.infer_many(items(), concurrency=concurrency, fn=lambda d, n: describe(client, d, n, synthetic)):
        if progress:
            progress(1)
        if isinstance(described, BadImage):
            data_sha.pop(name, None)
            report.skipped.append((name, str(described).removeprefix(f"{name}: ")))
            continue
        path = Path(name)
        folder_cat = path.parent.name if category_from_folders and path.parent != folder else None
        pending += points_for(path, folder, data_sha.pop(name), described, folder_cat)
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
