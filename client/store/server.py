"""``ServerEngine``: the engine interface over qdrant-client, for a Qdrant server.

Built by ``open_engine`` with ``QdrantClient(url=..., api_key=..., prefer_grpc=True)`` when QDRANT_URL is
set. ``QdrantClient(location=":memory:")`` implements the same API in process, which the tests use to
stand for a server (it ignores payload indexes and scans exactly). A collection's metadata is Qdrant's
collection metadata (server 1.16 or later); aliases are the server's own.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
from qdrant_client import QdrantClient, models

from client.store.engine import (HEAVY_FIELDS, Engine, Record, Scored, StoreError, Where, as_vector, check_distance,
                                 check_lengths)


def _payload(wanted: bool):
    """Every payload field but HEAVY_FIELDS, or none."""
    return models.PayloadSelectorExclude(exclude=list(HEAVY_FIELDS)) if wanted else False


def _filter(where: Where | None) -> models.Filter | None:
    if where is None:
        return None
    cond = lambda f, v: models.FieldCondition(key=f, match=models.MatchAny(any=list(v)))  # noqa: E731
    return models.Filter(must=[cond(f, v) for f, v in where.must.items()] or None,
                         must_not=[cond(f, v) for f, v in where.must_not.items()] or None)


class ServerEngine(Engine):
    def __init__(self, client: QdrantClient, *, where: str | None = None):
        self.client = client
        self.where = where or str(client.init_options.get("url") or client.init_options.get("location") or "qdrant")

    def exists(self, collection: str) -> bool:
        return self.client.collection_exists(collection) or collection in self.aliases()

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def create(self, collection: str, dim: int, distance: str = "cosine", keyword_fields: Sequence[str] = (), *,
               metadata: Mapping[str, str] | None = None, like: str | None = None) -> None:
        if self.exists(collection):
            raise StoreError(f"collection {collection} exists already at {self.where}")
        params = models.VectorParams(size=dim, distance=models.Distance(check_distance(distance)))
        layout = {}
        if like is not None:  # a new embedder's collection is sharded and replicated as the live one
            have = self.client.get_collection(like).config.params
            layout = {k: getattr(have, k) for k in ("shard_number", "replication_factor", "write_consistency_factor")
                      if getattr(have, k, None) is not None}
        self.client.create_collection(collection, vectors_config=params, metadata=dict(metadata or {}), **layout)
        for f in keyword_fields:
            self.client.create_payload_index(collection, f, field_schema=models.PayloadSchemaType.KEYWORD)

    def drop(self, collection: str) -> None:
        self.client.delete_collection(collection)

    def metadata(self, collection: str) -> dict:
        return dict(self.client.get_collection(collection).config.metadata or {})

    def set_metadata(self, collection: str, values: Mapping[str, str]) -> None:
        self.client.update_collection(self.resolve(collection), metadata={**self.metadata(collection), **values})

    def vector_size(self, collection: str) -> int:
        vectors = self.client.get_collection(collection).config.params.vectors
        if not isinstance(vectors, models.VectorParams):
            raise StoreError(f"collection {collection} at {self.where} has named vectors {sorted(vectors or {})}; "
                             "this store uses one unnamed vector")
        return int(vectors.size)

    def upsert(self, collection: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               batch: int = 1000) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        check_lengths(ids, vectors, payloads)
        for s in range(0, len(ids), batch):
            self.client.upsert(collection, points=[models.PointStruct(id=ids[i], vector=vectors[i].tolist(), payload=payloads[i])
                                                   for i in range(s, min(len(ids), s + batch))])

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(collection, points_selector=models.PointIdsList(points=list(ids)))

    def delete_where(self, collection: str, where: Where) -> None:
        self.client.delete(collection, points_selector=models.FilterSelector(filter=_filter(where)))

    def count(self, collection: str, where: Where | None = None) -> int:
        return self.client.count(collection, count_filter=_filter(where), exact=True).count

    def query(self, collection: str, vector: np.ndarray, *, limit: int, where: Where | None = None,
              threshold: float | None = None, with_payload: bool = True) -> list[Scored]:
        res = self.client.query_points(collection, query=np.asarray(vector, dtype=np.float32).tolist(), limit=limit,
                                       query_filter=_filter(where), score_threshold=threshold, with_payload=_payload(with_payload))
        return [Scored(str(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    def query_batch(self, collection: str, vectors: np.ndarray, *, limit: int, where: Where | None = None,
                    threshold: float | None = None, with_payload: bool = True) -> list[list[Scored]]:
        if len(vectors) == 0:
            return []
        flt = _filter(where)
        res = self.client.query_batch_points(collection, requests=[
            models.QueryRequest(query=np.asarray(v, dtype=np.float32).tolist(), limit=limit, filter=flt,
                                score_threshold=threshold, with_payload=_payload(with_payload)) for v in vectors])
        return [[Scored(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in res]

    def query_groups(self, collection: str, vector: np.ndarray, *, group_by: str, limit: int,
                     where: Where | None = None) -> list[Scored]:
        res = self.client.query_points_groups(collection, query=np.asarray(vector, dtype=np.float32).tolist(),
                                              group_by=group_by, limit=limit, group_size=1,
                                              query_filter=_filter(where), with_payload=_payload(True))
        return [Scored(str(g.hits[0].id), float(g.hits[0].score), dict(g.hits[0].payload or {})) for g in res.groups]

    def scroll(self, collection: str, *, with_vectors: bool = False, batch: int = 5000,
               where: Where | None = None, fields: Sequence[str] | None = None) -> Iterator[Record]:
        offset, flt = None, _filter(where)
        selector = models.PayloadSelectorInclude(include=list(fields)) if fields is not None else _payload(True)
        while True:
            pts, offset = self.client.scroll(collection, offset=offset, limit=batch, scroll_filter=flt, with_payload=selector,
                                             with_vectors=with_vectors)
            for p in pts:
                yield Record(str(p.id), dict(p.payload or {}), as_vector(p.vector) if with_vectors else None)
            if offset is None:
                return

    def set_alias(self, alias: str, collection: str) -> None:
        current = self.aliases().get(alias)
        if current == collection:
            return
        ops: list = [models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))]
        if current is not None:  # switch atomically: one request deletes the old alias and creates the new one
            ops.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def close(self) -> None:
        self.client.close()
