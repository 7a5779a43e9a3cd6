"""``DedupStore``: the feature collection of a dedup index (``dedup_<name>_<method>``), on any engine.

Embedded by default (folder $DEDUP_PATH or data/dedup, one collection per subfolder), on a Qdrant
server with QDRANT_URL. Scores are Qdrant's: cosine/dot similarity, Euclidean distance.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

from client.store.engine import POINT_NAMESPACE, Collection, Engine, StoreError, check_distance, open_engine

DEDUP_PATH = Path("data") / "dedup"


def dedup_point_id(path: str) -> str:
    """One point per file (exact copies are separate files): the id derives from the resolved path."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"dedup:{path}"))


class DedupStore(Collection):
    """One collection of per-file features. Opens the engine from ``url``/``path``/``api_key`` (see
    ``open_engine``; the embedded folder defaults to $DEDUP_PATH), or takes over ``engine``."""

    def __init__(self, name: str, method: str, dim: int, distance: str = "cosine", *, url: str | None = None,
                 path: str | Path | None = None, api_key: str | None = None, engine: Engine | None = None):
        check_distance(distance)
        if not name.replace("-", "_").isidentifier():
            raise StoreError(f"collection name {name!r}: use letters, digits, '_' or '-'")
        if engine is not None and (url or path or api_key):
            raise StoreError("give either an open engine or where to open one (url, path, api_key), not both")
        self.collection = f"dedup_{name}_{method}"
        self.dim, self.distance = dim, distance
        self.engine = engine or open_engine(url=url, path=path, api_key=api_key, default_path=DEDUP_PATH, path_env="DEDUP_PATH")
        self.where = self.engine.location(self.collection)
        try:
            if not self.engine.exists(self.collection):
                self.engine.create(self.collection, dim, distance, ("sha256",))
            elif (size := self.engine.vector_size(self.collection)) != dim:
                raise StoreError(f"{self.collection} holds {size}-d vectors, this method gives {dim}-d; "
                                 "use another --name or delete the collection")
        except BaseException:
            self.engine.close()
            raise

    def count(self) -> int:
        return self.engine.count(self.collection)

    def upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[dict], batch: int = 2000) -> None:
        self.engine.upsert(self.collection, ids, vectors, payloads, batch=batch)

    def delete(self, ids: list[str]) -> None:
        self.engine.delete(self.collection, ids)

    def optimize(self) -> None:
        """Build the HNSW index of an embedded collection (a server does it on its own)."""
        self.engine.optimize(self.collection)

    def records(self, with_vectors: bool = False, batch: int = 5000) -> Iterator[tuple[str, dict, np.ndarray | None]]:
        """Every stored point as (id, payload, vector or None)."""
        yield from self.engine.scroll(self.collection, with_vectors=with_vectors, batch=batch)

    def neighbours(self, vectors: np.ndarray, *, limit: int, threshold: float, batch: int = 256) -> list[list[tuple[str, float]]]:
        """Per query vector: up to ``limit`` stored points at or beyond ``threshold`` (similarity >= t, or
        Euclidean distance <= t), best first, as (id, score)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        out: list[list[tuple[str, float]]] = []
        for s in range(0, len(vectors), batch):
            res = self.engine.query_batch(self.collection, vectors[s:s + batch], limit=limit, threshold=threshold, with_payload=False)
            out += [[(h.id, h.score) for h in r] for r in res]
        return out
