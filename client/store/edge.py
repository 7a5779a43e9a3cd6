"""``EdgeEngine``: Qdrant's own engine in process (qdrant-edge), one folder on disk.

Layout: ``<folder>/<collection>/`` is one qdrant-edge shard (segments/, wal/) plus ``collection.json``
(dim, distance, indexed fields, metadata, point count at the last close); ``<folder>/aliases.json`` maps
alias -> collection (every call naming an alias follows it); ``<folder>/.lock`` is held (flock) while the engine is open, so one process at a time uses
the folder. Queries use the keyword payload indexes; before ``optimize()`` a search scans the vectors
exactly, after it uses the HNSW graph.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import qdrant_edge as qe

from client.store.engine import (HEAVY_FIELDS, Engine, Record, Scored, StoreError, Where, as_vector, check_distance,
                                 check_lengths)

META = "collection.json"
ALIASES = "aliases.json"
LOCK = ".lock"
NAME = re.compile(r"[A-Za-z0-9_-]+")
# Chosen by bench.store_scale (256-d cosine, 10k-1M points, filtered by category + grouped by product):
# HNSW candidates per search. Qdrant's default (ef_construct, 100) gave recall@10 0.96 at 100k; 512 gave 0.994+
# at 100k but 0.98 at 300k and 0.972 at 1M; at 300k 1024 gave 0.994 / 0.999 (plain / filtered), 2048 0.996 /
# 1.000 for ~3-5 ms a query
SEARCH_EF = 2048
# point ids and keyword indexes of optimized segments stay memory-mapped instead of being read into RAM at
# open (reopen at 100k: 0.6-1.2 s -> ~0.35 s). Not the vectors: with mapped vectors the HNSW graph built
# worse here (unfiltered recall@10 0.989 with a query at 0.1, against 0.995 / 0.9 in RAM, two builds each)
COLD = qe.Memory.Cold


def _filter(where: Where | None) -> qe.Filter | None:
    if where is None:
        return None
    must = [qe.FieldCondition(key=f, match=qe.MatchAny(list(v))) for f, v in where.must.items()]
    must_not = [qe.FieldCondition(key=f, match=qe.MatchAny(list(v))) for f, v in where.must_not.items()]
    return qe.Filter(must=must or None, must_not=must_not or None)


def _payload(wanted: bool):
    """Every payload field but HEAVY_FIELDS, or none."""
    return qe.PayloadSelector.Exclude(list(HEAVY_FIELDS)) if wanted else False


def _lock(folder: Path) -> int:
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{folder / LOCK}: cannot open the lock file: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise StoreError(f"embedded Qdrant at {folder} is in use by another process"
                         f"{f' (pid {holder})' if holder else ''}; stop it, or run a Qdrant server and set QDRANT_URL") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class EdgeEngine(Engine):
    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.where = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot create the store folder: {exc.strerror or exc}") from exc
        self._lock_fd: int | None = _lock(self.root)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._aliases: dict[str, str] | None = None  # aliases.json, read once: only this process writes it
        self._opening = threading.Lock()  # a shard is opened once, whichever thread asks first

    def location(self, collection: str) -> str:
        return str(self.root / collection)

    # collections -------------------------------------------------------------------------------------

    def _folder(self, collection: str) -> Path:
        if self._lock_fd is None:
            raise StoreError(f"embedded Qdrant at {self.root} is closed")
        if not NAME.fullmatch(collection):
            raise StoreError(f"collection name {collection!r}: use letters, digits, '_' or '-'")
        return self.root / collection

    def _meta(self, collection: str) -> dict:
        file = self._folder(self.resolve(collection)) / META
        try:
            return json.loads(file.read_text())
        except FileNotFoundError:
            raise StoreError(f"no collection {collection} at {self.root}") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{file}: unreadable ({exc}); delete {file.parent} and re-index") from exc

    def _write_meta(self, collection: str, meta: dict) -> None:
        file = self._folder(collection) / META
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(file)

    def _shard(self, collection: str) -> qe.EdgeShard:
        collection = self.resolve(collection)
        shard = self._shards.get(collection)
        if shard is None:
            with self._opening:
                shard = self._shards.get(collection) or self._load(collection)
        return shard

    def _load(self, collection: str) -> qe.EdgeShard:
        folder, meta = self._folder(collection), self._meta(collection)
        stored = int(meta.get("count", 0))
        if stored and not (folder / "segments").is_dir():
            raise StoreError(f"{folder}: segments/ is missing but {stored} points were stored; "
                             "the collection is damaged: delete the folder and re-index")
        shard = qe.EdgeShard.load(str(folder))
        if stored and int(shard.count(qe.CountRequest(exact=True))) == 0:
            shard.close()
            raise StoreError(f"{folder}: loaded 0 points but {stored} were stored; delete it and re-index")
        self._shards[collection] = shard
        return shard

    def exists(self, collection: str) -> bool:
        return (self._folder(self.resolve(collection)) / META).is_file()

    def collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / META).is_file())

    def create(self, collection: str, dim: int, distance: str = "cosine", keyword_fields: Sequence[str] = (), *,
               metadata: Mapping[str, str] | None = None, like: str | None = None) -> None:
        folder = self._folder(collection)
        if self.exists(collection):
            raise StoreError(f"collection {collection} exists already at {self.root}")
        if collection in self.aliases():
            raise StoreError(f"{collection} is an alias at {self.root}: choose another collection name")
        if folder.exists():
            raise StoreError(f"{folder} exists but holds no {META}: not a collection of this store; delete it")
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=getattr(qe.Distance, check_distance(distance))),
                               id_tracker_memory=COLD)
        shard = qe.EdgeShard.create(str(folder), config)
        for f in keyword_fields:
            shard.update(qe.UpdateOperation.create_field_index(f, qe.KeywordIndexParams(memory=COLD)))
        self._shards[collection] = shard
        self._write_meta(collection, {"collection": collection, "dim": dim, "distance": distance,
                                      "keyword_fields": list(keyword_fields), "metadata": dict(metadata or {}), "count": 0})

    def drop(self, collection: str) -> None:
        if collection in self.aliases():
            raise StoreError(f"{collection} is an alias at {self.root}: drop the collection it points at")
        shard = self._shards.pop(collection, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._folder(collection), ignore_errors=True)
        self._write_aliases({a: c for a, c in self.aliases().items() if c != collection})

    def vector_size(self, collection: str) -> int:
        return int(self._meta(collection)["dim"])

    def metadata(self, collection: str) -> dict:
        return dict(self._meta(collection).get("metadata") or {})

    def set_metadata(self, collection: str, values: Mapping[str, str]) -> None:
        collection = self.resolve(collection)
        meta = self._meta(collection)
        self._write_meta(collection, {**meta, "metadata": {**(meta.get("metadata") or {}), **values}})

    # points ------------------------------------------------------------------------------------------

    def upsert(self, collection: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict],
               batch: int = 1000) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        check_lengths(ids, vectors, payloads)
        shard = self._shard(collection)
        for s in range(0, len(ids), batch):
            shard.update(qe.UpdateOperation.upsert_points([qe.Point(ids[i], vectors[i].tolist(), payloads[i])
                                                           for i in range(s, min(len(ids), s + batch))]))

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if ids:
            self._shard(collection).update(qe.UpdateOperation.delete_points(list(ids)))

    def delete_where(self, collection: str, where: Where) -> None:
        self._shard(collection).update(qe.UpdateOperation.delete_points_by_filter(_filter(where)))

    def count(self, collection: str, where: Where | None = None) -> int:
        return int(self._shard(collection).count(qe.CountRequest(exact=True, filter=_filter(where))))

    def _request(self, vector: np.ndarray, limit: int, where: Where | None, threshold: float | None,
                 with_payload: bool) -> qe.QueryRequest:
        return qe.QueryRequest(limit=limit, query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist()),
                               filter=_filter(where), score_threshold=threshold, with_payload=_payload(with_payload),
                               params=qe.SearchParams(hnsw_ef=max(SEARCH_EF, limit)))

    def query(self, collection: str, vector: np.ndarray, *, limit: int, where: Where | None = None,
              threshold: float | None = None, with_payload: bool = True) -> list[Scored]:
        res = self._shard(collection).query(self._request(vector, limit, where, threshold, with_payload))
        return [Scored(str(p.id), float(p.score), dict(p.payload or {})) for p in res]

    def query_batch(self, collection: str, vectors: np.ndarray, *, limit: int, where: Where | None = None,
                    threshold: float | None = None, with_payload: bool = True) -> list[list[Scored]]:
        if len(vectors) == 0:
            return []
        res = self._shard(collection).query_batch(qe.QueryBatchRequest(
            [self._request(v, limit, where, threshold, with_payload) for v in vectors]))
        return [[Scored(str(p.id), float(p.score), dict(p.payload or {})) for p in r] for r in res]

    def scroll(self, collection: str, *, with_vectors: bool = False, batch: int = 5000,
               where: Where | None = None, fields: Sequence[str] | None = None) -> Iterator[Record]:
        shard, offset, flt = self._shard(collection), None, _filter(where)
        selector = qe.PayloadSelector.Include(list(fields)) if fields is not None else _payload(True)
        while True:
            pts, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=batch, filter=flt, with_payload=selector,
                                                        with_vector=with_vectors))
            for p in pts:
                yield Record(str(p.id), dict(p.payload or {}), as_vector(p.vector) if with_vectors else None)
            if offset is None:
                return

    def optimize(self, collection: str) -> None:
        collection = self.resolve(collection)
        shard = self._shard(collection)
        shard.optimize()
        self._save(collection, shard)

    # aliases and lifetime ----------------------------------------------------------------------------

    def set_alias(self, alias: str, collection: str) -> None:
        if not self.exists(collection) or collection in self.aliases():
            raise StoreError(f"alias {alias}: no collection {collection} at {self.root}")
        self._write_aliases({**self.aliases(), alias: collection})

    def aliases(self) -> dict[str, str]:
        if self._aliases is None:
            file = self.root / ALIASES
            try:
                self._aliases = dict(json.loads(file.read_text()))
            except FileNotFoundError:
                self._aliases = {}
            except (OSError, ValueError) as exc:
                raise StoreError(f"{file}: unreadable ({exc}); delete it and re-index") from exc
        return dict(self._aliases)

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        tmp = self.root / (ALIASES + ".tmp")
        tmp.write_text(json.dumps(aliases, sort_keys=True))
        tmp.replace(self.root / ALIASES)
        self._aliases = dict(aliases)

    def _save(self, collection: str, shard: qe.EdgeShard) -> None:
        shard.flush()
        self._write_meta(collection, {**self._meta(collection), "count": int(shard.count(qe.CountRequest(exact=True)))})

    def close(self) -> None:
        try:
            while self._shards:
                collection, shard = self._shards.popitem()
                try:
                    self._save(collection, shard)
                finally:
                    shard.close()
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None
