"""The vector store: one small interface over Qdrant (embedded on disk by default, a server with QDRANT_URL).

One collection per embedder version (``products_v<N>``) behind the alias ``products``. Payload:
product_id, category (merged), fine_category, path, box, sha256, object. Payload indexes are created
before upload. Point ids derive from (image sha256, object index), so re-indexing never duplicates.
The performance issue may swap the embedded engine behind this interface by measurement.
"""
from __future__ import annotations

import json
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


# Duplicate finding (client.dedup) ---------------------------------------------------------------------

DEDUP_PATH = Path("data") / "dedup"
DISTANCES = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT, "euclid": models.Distance.EUCLID}


def dedup_point_id(path: str) -> str:
    """One point per file (exact copies are separate files): the id derives from the resolved path."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"dedup:{path}"))


class DedupStore:
    """One feature collection of a dedup index: ``dedup_<name>_<method>``.

    With QDRANT_URL (or ``url=``) it lives on a Qdrant server through qdrant-client, like the products
    collection. Otherwise it is an embedded ``qdrant-edge`` shard (Qdrant's own Rust segment/HNSW engine,
    in process) under ``path/<collection>``: qdrant-client's embedded mode scans every point in Python
    per query (~190 ms at 100k), which makes a 100k self-join take hours; the edge shard answers a
    100k k-NN batch at ~5,000 queries/s. Scores are Qdrant's: cosine/dot similarity, Euclidean distance.
    """

    def __init__(self, name: str, method: str, dim: int, distance: str = "cosine", *, url: str | None = None,
                 path: str | Path | None = None, api_key: str | None = None):
        if distance not in DISTANCES:
            raise StoreError(f"unknown distance {distance!r}; expected one of {sorted(DISTANCES)}")
        if not name.replace("-", "_").isidentifier():
            raise StoreError(f"collection name {name!r}: use letters, digits, '_' or '-'")
        url = url if url is not None else os.environ.get("QDRANT_URL") or None
        if url and path:
            raise StoreError("give either a Qdrant server url or an embedded path, not both")
        self.collection = f"dedup_{name}_{method}"
        self.dim, self.distance = dim, distance
        self._edge = None
        if url:
            self.where = url
            self.client = QdrantClient(url=url, api_key=api_key or os.environ.get("QDRANT_API_KEY"), prefer_grpc=True)
            try:
                exists = self.client.collection_exists(self.collection)
            except Exception as exc:  # noqa: BLE001 - transport errors vary (grpc, httpx)
                raise StoreError(f"cannot reach Qdrant at {url}: {exc}") from exc
            if not exists:
                self.client.create_collection(self.collection, vectors_config=models.VectorParams(size=dim, distance=DISTANCES[distance]))
                self.client.create_payload_index(self.collection, "sha256", field_schema=models.PayloadSchemaType.KEYWORD)
            else:
                self._check_dim(self.client.get_collection(self.collection).config.params.vectors.size)
        else:
            self._open_edge(Path(path or os.environ.get("DEDUP_PATH") or DEDUP_PATH) / self.collection)

    def _check_dim(self, size: int) -> None:
        if size != self.dim:
            raise StoreError(f"{self.collection} holds {size}-d vectors, this method gives {self.dim}-d; "
                             "use another --name or delete the collection")

    def _open_edge(self, folder: Path) -> None:
        try:
            import qdrant_edge as qe
        except ImportError as exc:
            raise StoreError("the embedded dedup index needs `qdrant-edge-py` (pip install -e '.[dedup]'), "
                             "or set QDRANT_URL to use a Qdrant server") from exc
        self._qe = qe
        self.where = str(folder)
        meta_file = folder / "dedup_meta.json"
        dist = {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot, "euclid": qe.Distance.Euclid}[self.distance]
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=self.dim, distance=dist))
        self._meta_file = meta_file
        if meta_file.exists():
            meta = json.loads(meta_file.read_text())
            self._check_dim(int(meta["dim"]))
            if not (folder / "segments").is_dir() and meta.get("count", 0):
                raise StoreError(f"{folder}: segments/ is missing but {meta['count']} points were stored; "
                                 "the index is damaged: delete the folder and re-index")
            self._edge = qe.EdgeShard.load(str(folder), config)
            if meta.get("count", 0) and self.count() == 0:
                raise StoreError(f"{folder}: loaded 0 points but {meta['count']} were stored; delete it and re-index")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            self._edge = qe.EdgeShard.create(str(folder), config)
            self._write_meta()

    def _write_meta(self) -> None:
        self._meta_file.write_text(json.dumps({"collection": self.collection, "dim": self.dim, "distance": self.distance,
                                               "count": self.count()}))

    def close(self) -> None:
        if self._edge is not None:
            self._edge.flush()
            self._write_meta()
            self._edge.close()
            self._edge = None
        elif getattr(self, "client", None) is not None:
            self.client.close()

    def __enter__(self) -> "DedupStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def count(self) -> int:
        if self._edge is not None:
            return int(self._edge.count(self._qe.CountRequest(exact=True)))
        return self.client.count(self.collection, exact=True).count

    def upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[dict], batch: int = 2000) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        for s in range(0, len(ids), batch):
            part = range(s, min(len(ids), s + batch))
            if self._edge is not None:
                qe = self._qe
                self._edge.update(qe.UpdateOperation.upsert_points([qe.Point(ids[i], vectors[i].tolist(), payloads[i]) for i in part]))
            else:
                self.client.upsert(self.collection, points=[models.PointStruct(id=ids[i], vector=vectors[i].tolist(), payload=payloads[i])
                                                            for i in part])

    def delete(self, ids: list[str]) -> None:
        if not ids:
            return
        if self._edge is not None:
            self._edge.update(self._qe.UpdateOperation.delete_points(list(ids)))
        else:
            self.client.delete(self.collection, points_selector=models.PointIdsList(points=list(ids)))

    def optimize(self) -> None:
        """Build the HNSW index of the embedded shard (servers do it on their own)."""
        if self._edge is not None:
            self._edge.optimize()

    def records(self, with_vectors: bool = False, batch: int = 5000):
        """Every stored point as (id, payload, vector or None)."""
        offset = None
        while True:
            if self._edge is not None:
                pts, offset = self._edge.scroll(self._qe.ScrollRequest(offset=offset, limit=batch, with_payload=True,
                                                                        with_vector=with_vectors))
            else:
                pts, offset = self.client.scroll(self.collection, offset=offset, limit=batch, with_payload=True,
                                                 with_vectors=with_vectors)
            for p in pts:
                vec = p.vector
                if isinstance(vec, dict):  # edge returns {"": [...]} for the default vector
                    vec = next(iter(vec.values()), None)
                yield str(p.id), dict(p.payload or {}), (np.asarray(vec, dtype=np.float32) if with_vectors and vec is not None else None)
            if offset is None:
                break

    def neighbours(self, vectors: np.ndarray, *, limit: int, threshold: float, batch: int = 256) -> list[list[tuple[str, float]]]:
        """Per query vector: up to ``limit`` stored points at or beyond ``threshold`` (similarity >= t, or
        Euclidean distance <= t), best first, as (id, score)."""
        out: list[list[tuple[str, float]]] = []
        vectors = np.asarray(vectors, dtype=np.float32)
        for s in range(0, len(vectors), batch):
            part = vectors[s:s + batch]
            if self._edge is not None:
                qe = self._qe
                res = self._edge.query_batch(qe.QueryBatchRequest([
                    qe.QueryRequest(limit=limit, query=qe.Query.Nearest(v.tolist()), score_threshold=threshold) for v in part]))
                out += [[(str(p.id), float(p.score)) for p in r] for r in res]
            else:
                res = self.client.query_batch_points(self.collection, requests=[
                    models.QueryRequest(query=v.tolist(), limit=limit, score_threshold=threshold) for v in part])
                out += [[(str(p.id), float(p.score)) for p in r.points] for r in res]
        return out
