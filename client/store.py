"""The vector store: one small interface over Qdrant (embedded on disk by default, a server with QDRANT_URL).

One collection per embedder version (``products_v<N>``) behind the alias ``products``. Payload:
product_id, category (merged), fine_category, path, box, sha256, object. Payload indexes are created
before upload. Point ids derive from (image sha256, object index), so re-indexing never duplicates.
The performance issue may swap the embedded engine behind this interface by measurement.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from client import spec

ALIAS = "products"
DEFAULT_PATH = Path("data") / "qdrant"
POINT_NAMESPACE = uuid.UUID("6f1c8e52-1d0b-4a53-9a6e-2f8f3d2c9b11")
KEYWORD_FIELDS = ("product_id", "category", "fine_category", "sha256", "path")


class StoreError(RuntimeError):
    pass


def point_id(sha256: str, object_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{sha256}:{object_index}"))


@dataclass
class CatalogPoint:
    vector: np.ndarray
    product_id: str
    category: str
    fine_category: str
    path: str
    sha256: str
    box: tuple[float, float, float, float]
    object_index: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return point_id(self.sha256, self.object_index)

    def payload(self) -> dict:
        return {"product_id": self.product_id, "category": self.category, "fine_category": self.fine_category,
                "path": self.path, "sha256": self.sha256, "box": [round(float(v), 1) for v in self.box],
                "object": self.object_index, **self.extra}


@dataclass
class Hit:
    product_id: str
    path: str
    score: float
    category: str
    payload: dict


class QdrantStore:
    def __init__(self, *, url: str | None = None, path: str | Path | None = None, api_key: str | None = None,
                 version: int = spec.EMBEDDER_VERSION, alias: str = ALIAS):
        url = url if url is not None else os.environ.get("QDRANT_URL") or None
        if url and path:
            raise StoreError("give either a Qdrant server url or an embedded path, not both")
        self.collection = spec.collection_name(version)
        self.alias = alias
        if url:
            self.where = url
            self.client = QdrantClient(url=url, api_key=api_key or os.environ.get("QDRANT_API_KEY"), prefer_grpc=True)
            try:
                self.client.get_collections()  # the constructor succeeds even when the server is down
            except Exception as exc:  # noqa: BLE001 - transport errors vary (grpc, httpx)
                raise StoreError(f"cannot reach Qdrant at {url}: {exc}") from exc
        else:
            folder = Path(path or os.environ.get("QDRANT_PATH") or DEFAULT_PATH)
            folder.mkdir(parents=True, exist_ok=True)
            self.where = str(folder)
            try:
                self.client = QdrantClient(path=str(folder))
            except RuntimeError as exc:
                raise StoreError(f"embedded Qdrant at {folder} is in use by another process ({exc}); "
                                 "stop it, or run a Qdrant server and set QDRANT_URL") from exc

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "QdrantStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def ensure(self, dim: int = spec.EMBED_DIM, recreate: bool = False) -> None:
        if recreate and self.exists():
            self.client.delete_collection(self.collection)
        if not self.exists():
            self.client.create_collection(self.collection, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
            for f in KEYWORD_FIELDS:
                self.client.create_payload_index(self.collection, f, field_schema=models.PayloadSchemaType.KEYWORD)
        else:
            size = self.client.get_collection(self.collection).config.params.vectors.size
            if size != dim:
                raise StoreError(f"collection {self.collection} holds {size}-d vectors but the model gives {dim}-d; "
                                 "bump spec.EMBEDDER_VERSION or re-create it")
        self.client.update_collection_aliases(change_aliases_operations=[
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=self.collection, alias_name=self.alias))])

    def upsert(self, points: list[CatalogPoint]) -> None:
        if not points:
            return
        # a file re-indexed with new content replaces its old points
        self.client.delete(self.collection, points_selector=models.FilterSelector(filter=models.Filter(
            must=[models.FieldCondition(key="path", match=models.MatchAny(any=sorted({p.path for p in points})))],
            must_not=[models.FieldCondition(key="sha256", match=models.MatchAny(any=sorted({p.sha256 for p in points})))])))
        self.client.upsert(self.collection, points=[
            models.PointStruct(id=p.id, vector=np.asarray(p.vector, dtype=np.float32).tolist(), payload=p.payload()) for p in points])

    def count(self, category: str | None = None) -> int:
        return self.client.count(self.collection, count_filter=_filter(category), exact=True).count

    def search(self, vector: np.ndarray, *, category: str | None = None, top_k: int = 5) -> list[Hit]:
        """Top-k products (one hit per product_id), optionally within one merged category."""
        res = self.client.query_points_groups(self.collection, query=np.asarray(vector, dtype=np.float32).tolist(),
                                              group_by="product_id", limit=top_k, group_size=1,
                                              query_filter=_filter(category), with_payload=True)
        hits = []
        for g in res.groups:
            h = g.hits[0]
            hits.append(Hit(str(g.id), h.payload.get("path", ""), float(h.score), h.payload.get("category", ""), h.payload))
        return hits


def _filter(category: str | None) -> models.Filter | None:
    if category is None:
        return None
    return models.Filter(must=[models.FieldCondition(key="category", match=models.MatchValue(value=category))])
