"""The product catalog in Qdrant: ``QdrantStore`` over any engine (embedded on disk by default, a server
with QDRANT_URL).

One collection per embedder version (``products_v<N>``) behind the alias ``products``. Payload:
product_id, category (merged), fine_category, path, box, sha256, object. Payload indexes are created
before upload. A point is one view of one product: its id derives from (product_id, the image's path
under the catalog root, object index), never from the image content, so re-indexing never duplicates
and two products that share a byte-identical photo stay two products. A file whose content changed
(same path, new sha256) has its old points replaced.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client import spec
from client.store.engine import POINT_NAMESPACE, Collection, Engine, StoreError, Where, open_engine

ALIAS = "products"
KEYWORD_FIELDS = ("product_id", "category", "fine_category", "sha256", "path")


def point_id(product_id: str, view: str, object_index: int) -> str:
    """The id of one object of one view (image path under the catalog root, or file name) of a product."""
    return str(uuid.uuid5(POINT_NAMESPACE, json.dumps([product_id, view, object_index])))


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
    view: str = ""  # the image's path relative to the catalog root; empty: its file name
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return point_id(self.product_id, self.view or Path(self.path).name, self.object_index)

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


def _category(category: str | None) -> Where | None:
    return None if category is None else Where(must={"category": [category]})


class QdrantStore(Collection):
    """The products collection. Opens the engine from ``url``/``path``/``api_key`` (see ``open_engine``),
    or takes over ``engine`` (closed with the store)."""

    def __init__(self, *, url: str | None = None, path: str | Path | None = None, api_key: str | None = None,
                 engine: Engine | None = None, version: int = spec.EMBEDDER_VERSION, alias: str = ALIAS):
        if engine is not None and (url or path or api_key):
            raise StoreError("give either an open engine or where to open one (url, path, api_key), not both")
        self.engine = engine or open_engine(url=url, path=path, api_key=api_key)
        self.collection = spec.collection_name(version)
        self.alias = alias
        self.where = self.engine.where

    def exists(self) -> bool:
        return self.engine.exists(self.collection)

    def ensure(self, dim: int = spec.EMBED_DIM, recreate: bool = False) -> None:
        """Create the collection (dropping it first with ``recreate``) and point the alias at it."""
        if recreate and self.exists():
            self.engine.drop(self.collection)
        if not self.exists():
            self.engine.create(self.collection, dim, "cosine", KEYWORD_FIELDS)
        else:
            size = self.engine.vector_size(self.collection)
            if size != dim:
                raise StoreError(f"collection {self.collection} holds {size}-d vectors but the model gives {dim}-d; "
                                 "bump spec.EMBEDDER_VERSION or re-create it")
        self.engine.set_alias(self.alias, self.collection)

    def aliases(self) -> dict[str, str]:
        return self.engine.aliases()

    def upsert(self, points: list[CatalogPoint]) -> None:
        if not points:
            return
        self.engine.delete_where(self.collection, Where(must={"path": sorted({p.path for p in points})},
                                                        must_not={"sha256": sorted({p.sha256 for p in points})}))
        self.engine.upsert(self.collection, [p.id for p in points], np.stack([np.asarray(p.vector, dtype=np.float32) for p in points]),
                           [p.payload() for p in points])

    def optimize(self) -> None:
        """Build the HNSW index of an embedded collection (a server does it on its own)."""
        self.engine.optimize(self.collection)

    def count(self, category: str | None = None) -> int:
        return self.engine.count(self.collection, _category(category))

    def search(self, vector: np.ndarray, *, category: str | None = None, top_k: int = 5) -> list[Hit]:
        """Top-k products (one hit per product_id), optionally within one merged category."""
        hits = self.engine.query_groups(self.collection, vector, group_by="product_id", limit=top_k, where=_category(category))
        return [Hit(str(h.payload["product_id"]), h.payload.get("path", ""), h.score, h.payload.get("category", ""), h.payload)
                for h in hits]
