"""The engine interface both stores use, and the one place that picks an engine.

An ``Engine`` holds named collections of dense vectors with JSON payloads, each with a small metadata
dict (what it was built with), and aliases naming collections: reads and writes may name an alias (the
engine follows it at each call, as a Qdrant server does). Two implementations:
``EdgeEngine`` (qdrant-edge: Qdrant's Rust segment engine in process, one folder on disk) and
``ServerEngine`` (qdrant-client talking to a Qdrant server). Filters are ``Where`` values: every
``must`` field holds one of its values and no ``must_not`` field does. Scores are Qdrant's: cosine and
dot similarity (higher is closer), Euclidean distance (lower is closer).
"""
from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Sequence

import numpy as np

# Distance names of this interface -> Qdrant's names (qdrant_client.models.Distance values and
# qdrant_edge.Distance members alike).
DISTANCES = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}
POINT_NAMESPACE = uuid.UUID("6f1c8e52-1d0b-4a53-9a6e-2f8f3d2c9b11")
DEFAULT_PATH = Path("data") / "qdrant"
# Payload fields too large to return with every hit or record (a catalog image's keypoints, client/rerank.py):
# reads leave them out unless a scroll names them in ``fields``.
HEAVY_FIELDS = ("keypoints",)


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class Where:
    """Points whose payload field ``f`` is one of ``must[f]`` for every f, and not one of ``must_not[f]``."""
    must: Mapping[str, Sequence[str | int]] = field(default_factory=dict)
    must_not: Mapping[str, Sequence[str | int]] = field(default_factory=dict)


class Scored(NamedTuple):
    id: str
    score: float
    payload: dict


class Record(NamedTuple):
    id: str
    payload: dict
    vector: np.ndarray | None


def as_vector(vec) -> np.ndarray | None:
    """A returned point's vector as float32; the default vector may come back as {"": [...]}."""
    if isinstance(vec, dict):
        vec = next(iter(vec.values()), None)
    return None if vec is None else np.asarray(vec, dtype=np.float32)


def check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise StoreError(f"unknown distance {distance!r}; expected one of {sorted(DISTANCES)}")
    return DISTANCES[distance]


def check_lengths(ids: Sequence, vectors: np.ndarray, payloads: Sequence) -> None:
    if not len(ids) == len(vectors) == len(payloads):
        raise StoreError(f"upsert needs one vector and one payload per id: got {len(ids)} ids, "
                         f"{len(vectors)} vectors, {len(payloads)} payloads")


class Engine(ABC):
    """Collections of vectors + payloads. ``where`` names the folder or the server."""

    where: str

    def location(self, collection: str) -> str:
        """Where one collection lives (its folder, or the server)."""
        return self.where

    @abstractmethod
    def exists(self, collection: str) -> bool: ...

    @abstractmethod
    def create(self, collection: str, dim: int, distance: str = "cosine", keyword_fields: Sequence[str] = (), *,
               metadata: Mapping[str, str] | None = None, like: str | None = None) -> None:
        """A new empty collection with a keyword payload index on each of ``keyword_fields``, recording
        ``metadata``; ``like``: an existing collection whose cluster layout (shards, replication, write
        consistency) the new one copies (a server only: the embedded engine has one shard)."""

    @abstractmethod
    def collections(self) -> list[str]:
        """The names of every collection (not aliases), sorted."""

    @abstractmethod
    def metadata(self, collection: str) -> dict:
        """What a collection records about itself (given at creation or with ``set_metadata``)."""

    @abstractmethod
    def set_metadata(self, collection: str, values: Mapping[str, str]) -> None:
        """Adds or replaces these keys of a collection's metadata."""

    @abstractmethod
    def drop(self, collection: str) -> None:
        """Delete the collection and the aliases that point to it."""

    @abstractmethod
    def vector_size(self, collection: str) -> int: ...

    @abstractmethod
    def upsert(self, collection: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               batch: int = 1000) -> None:
        """Insert or replace points, ``batch`` per request."""

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def delete_where(self, collection: str, where: Where) -> None: ...

    @abstractmethod
    def count(self, collection: str, where: Where | None = None) -> int: ...

    @abstractmethod
    def query(self, collection: str, vector: np.ndarray, *, limit: int, where: Where | None = None,
              threshold: float | None = None, with_payload: bool = True) -> list[Scored]:
        """Up to ``limit`` nearest points, best first; ``threshold``: similarity >= t (distance <= t for euclid)."""

    @abstractmethod
    def query_batch(self, collection: str, vectors: np.ndarray, *, limit: int, where: Where | None = None,
                    threshold: float | None = None, with_payload: bool = True) -> list[list[Scored]]:
        """``query`` for each row of ``vectors``, in one request."""

    def query_groups(self, collection: str, vector: np.ndarray, *, group_by: str, limit: int,
                     where: Where | None = None) -> list[Scored]:
        """The best point of each of the ``limit`` best groups (points sharing payload ``group_by``), best first.

        Engines without group-by over-fetch: 4 points per group, doubling until ``limit`` groups are
        found or the filtered collection is exhausted. A group's first hit is its best one.
        """
        fetch = 4 * limit
        while True:
            hits = self.query(collection, vector, limit=fetch, where=where)
            best: dict = {}
            for h in hits:
                key = h.payload.get(group_by)
                if key is not None:
                    best.setdefault(key, h)
            if len(best) >= limit or len(hits) < fetch:
                return list(best.values())[:limit]
            fetch *= 2

    @abstractmethod
    def scroll(self, collection: str, *, with_vectors: bool = False, batch: int = 5000,
               where: Where | None = None, fields: Sequence[str] | None = None) -> Iterator[Record]:
        """Every point (matching ``where``), in id order; payloads with only ``fields`` when given, else
        without HEAVY_FIELDS."""

    def optimize(self, collection: str) -> None:
        """Build the HNSW index now (a server does it on its own)."""

    @abstractmethod
    def set_alias(self, alias: str, collection: str) -> None: ...

    @abstractmethod
    def aliases(self) -> dict[str, str]:
        """alias -> collection."""

    def resolve(self, name: str) -> str:
        """The collection an alias points at, or ``name`` itself."""
        return self.aliases().get(name, name)

    @abstractmethod
    def close(self) -> None: ...


def open_engine(*, url: str | None = None, path: str | Path | None = None, api_key: str | None = None,
                default_path: str | Path = DEFAULT_PATH, path_env: str = "QDRANT_PATH") -> Engine:
    """A Qdrant server when ``url`` or QDRANT_URL is set, else the embedded engine in ``path``, $``path_env``
    or ``default_path``. The API key comes from ``api_key`` or QDRANT_API_KEY."""
    if url and path:
        raise StoreError("give either a Qdrant server url or an embedded path, not both")
    url = url if url is not None else os.environ.get("QDRANT_URL") or None
    if url and path:
        raise StoreError(f"QDRANT_URL is set ({url}) and an embedded path was given ({path}): "
                         "give either a Qdrant server url or an embedded path, not both")
    if url:
        from qdrant_client import QdrantClient

        from client.store.server import ServerEngine

        client = QdrantClient(url=url, api_key=api_key or os.environ.get("QDRANT_API_KEY"), prefer_grpc=True)
        try:
            client.get_collections()  # the constructor succeeds even when the server is down
        except Exception as exc:  # noqa: BLE001 - transport errors vary (grpc, httpx)
            client.close()
            raise StoreError(f"cannot reach Qdrant at {url}: {exc}") from exc
        return ServerEngine(client, where=url)
    if api_key:
        raise StoreError("an API key applies to a Qdrant server: give url= (or set QDRANT_URL) with it")
    try:
        from client.store.edge import EdgeEngine
    except ImportError as exc:
        if exc.name != "qdrant_edge":
            raise
        raise StoreError("the embedded Qdrant engine needs `qdrant-edge-py` (pip install qdrant-edge-py==0.9.0), "
                         "or set QDRANT_URL to use a Qdrant server") from exc
    return EdgeEngine(Path(path or os.environ.get(path_env) or default_path))


class Collection:
    """What a store over one engine shares: it owns the engine and closes it, as a context manager too."""

    engine: Engine

    def close(self) -> None:
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
