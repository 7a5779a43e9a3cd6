"""Duplicates and near-duplicates of images: the library behind ``python -m client.dedup`` and ``client.compare``.

Exact duplicates are found by content hash (sha256 of the file). Near-duplicates by one method at its
calibrated threshold (thresholds.json) unless one is given. Every method is a small subclass of
``base.Method``, which owns the flow (see base.py): hashing.py (ahash, phash, dhash, whash), pixels.py
(pixel_euclid, pixel_cosine, ssim), cnn.py (the Triton ensemble's whole-image embedding + a geometric
check). Features live in a dedup collection (``dedup_<name>_<method>``, client.store.DedupStore), so a
file already stored is never recomputed; candidates come from an index, never from an N x N matrix.

    from client.dedup import dedup, check
    result = dedup(Path("photos"), "phash")          # DedupResult: groups of copies, kept image first
    found, errors = check([Path("new.jpg")], Path("photos"), "phash")
"""
from __future__ import annotations

from pathlib import Path

from client.dedup.base import Method, Plan
from client.dedup.cnn import CNN
from client.dedup.groups import DedupResult, FileInfo, Group, group_pairs, keep_order
from client.dedup.hashing import AverageHash, DifferenceHash, PerceptualHash, WaveletHash
from client.dedup.pixels import SSIM, PixelCosine, PixelEuclid

METHODS: dict[str, type[Method]] = {m.name: m for m in (CNN, PerceptualHash, DifferenceHash, AverageHash, WaveletHash,
                                                        SSIM, PixelCosine, PixelEuclid)}
DEFAULT_METHOD = CNN.name

__all__ = ["METHODS", "DEFAULT_METHOD", "Method", "Plan", "DedupResult", "FileInfo", "Group", "get_method", "dedup", "check",
           "group_pairs", "keep_order"]


def get_method(name: str, client=None, *, concurrency: int = 4) -> Method:
    """The method called ``name``; ``client`` (a client.triton.RetrievalClient) for those that need the server."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
    return cls(client, concurrency=concurrency)


def dedup(folder: Path, method: str, threshold: float | None = None, *, name: str | None = None, client=None,
          store_path: Path | None = None, concurrency: int = 4, show_progress: bool = True, transitive: bool = False) -> DedupResult:
    """Groups of copies in ``folder`` (indexed first: only new or changed files are encoded)."""
    return get_method(method, client, concurrency=concurrency).dedup(
        folder, threshold, name=name, store_path=store_path, show_progress=show_progress, transitive=transitive)


def check(images: list[Path], folder: Path, method: str, threshold: float | None = None, *, name: str | None = None,
          client=None, store_path: Path | None = None) -> tuple[dict[str, list[tuple[str, float]]], list[tuple[str, str]]]:
    """Each new image's copies in an already indexed folder, as (path, score); nothing is added to the index."""
    return get_method(method, client).check(images, folder, threshold, name=name, store_path=store_path)
