"""The product catalog in Qdrant: ``QdrantStore`` over any engine (embedded on disk by default, a server
with QDRANT_URL).

One collection per served embedder (``products_<embedder id>``, the id ``RetrievalClient.embedder_id()``
reports, recorded in the collection's metadata) behind the alias ``products``: ``client.index`` writes
the collection of the embedder the server runs, searches read the alias, ``client.rollout`` moves it.
A catalog built by another embedder than the served one is refused with what to run. Payload:
product_id, category (merged), fine_category, path, box, sha256, object; an image's first point also
holds its ORB keypoints (``keypoints``, client/rerank.py), left out of every read but ``keypoints()``. Payload indexes are created
before upload. A point is one view of one product: its id derives from (product_id, the image's path
under the catalog root, object index), never from the image content, so re-indexing never duplicates
and two products that share a byte-identical photo stay two products. A file whose content changed
(same path, new sha256) has its old points replaced.
"""
from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client import rerank, spec
from client.geometry import Keypoints
from client.store.engine import POINT_NAMESPACE, Collection, Engine, StoreError, Where, open_engine

ALIAS = "products"
KEYWORD_FIELDS = ("product_id", "category", "fine_category", "sha256", "path")


def collection_for(embedder_id: str) -> str:
    """The collection of the catalog indexed with one embedder."""
    return "products_" + re.sub(r"[^A-Za-z0-9_-]", "_", embedder_id)


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
    or takes over ``engine`` (closed with the store).

    With ``embedder_id`` (indexing) the store reads and writes that embedder's collection. Without it
    (searching) it reads and writes through the alias, followed at every call, so a ``client.rollout
    switch`` is live at the next query; with no alias yet, the collection ``spec.collection_name(version)``."""

    def __init__(self, *, url: str | None = None, path: str | Path | None = None, api_key: str | None = None,
                 engine: Engine | None = None, version: int = spec.EMBEDDER_VERSION, alias: str = ALIAS,
                 embedder_id: str | None = None):
        if engine is not None and (url or path or api_key):
            raise StoreError("give either an open engine or where to open one (url, path, api_key), not both")
        self.engine = engine or open_engine(url=url, path=path, api_key=api_key)
        self.alias = alias
        self.where = self.engine.where
        self.embedder_id: str | None = None
        try:
            self.collection = alias if alias in self.engine.aliases() else spec.collection_name(version)
        except BaseException:
            self.engine.close()
            raise
        if embedder_id:
            self.use_embedder(embedder_id)

    def use_embedder(self, embedder_id: str) -> None:
        """From now on read and write the collection of this embedder."""
        self.embedder_id = embedder_id
        self.collection = collection_for(embedder_id)

    def exists(self) -> bool:
        return self.engine.exists(self.collection)

    def live(self) -> str | None:
        """The collection the alias points at (what searches read), if any."""
        return self.engine.aliases().get(self.alias)

    def _placeholder(self, collection: str) -> bool:
        """An empty collection that records no embedder (as deploy/k8s/create_collection.py makes): nothing to keep."""
        return not self.engine.metadata(collection).get("embedder_id") and self.engine.count(collection) == 0

    def ensure(self, dim: int = spec.EMBED_DIM, recreate: bool = False, *, live: bool = True) -> None:
        """Creates the collection this store writes (dropping it first with ``recreate``), recording its
        embedder, and checks its vector size and embedder. The alias is pointed at it when it points nowhere
        yet or at a placeholder (``_placeholder``), a new collection copies the live one's cluster layout.
        ``live`` (client.index): the alias must end up here, so a catalog serving another embedder's
        collection is refused before anything is written; without it (``client.rollout index``) the alias
        keeps serving the old collection until ``client.rollout switch``."""
        target = self.engine.resolve(self.collection)
        current = self.live()
        if live and current not in (None, target) and not self._placeholder(current):
            raise StoreError(self.mismatch(current))
        if recreate and self.engine.exists(target):
            self.engine.drop(target)
            current = self.live()
        if not self.engine.exists(target):
            self.engine.create(target, dim, "cosine", KEYWORD_FIELDS, like=current if current not in (None, target) else None,
                               metadata={"embedder_id": self.embedder_id} if self.embedder_id else None)
        else:
            size = self.engine.vector_size(target)
            if size != dim:
                raise StoreError(f"collection {target} holds {size}-d vectors but the model gives {dim}-d; "
                                 f"re-index with `python -m client.rollout index DIR`")
            recorded = self.engine.metadata(target).get("embedder_id")
            if self.embedder_id and recorded != self.embedder_id:
                raise StoreError(f"collection {target} records embedder {recorded}, not {self.embedder_id}; delete it and re-index")
        if current is None or (current != target and self._placeholder(current)):
            self.engine.set_alias(self.alias, target)

    def check_embedder(self, embedder_id: str, dim: int) -> None:
        """Refuses (StoreError, saying what to run) to use a catalog built with another embedder than the
        served one ``embedder_id`` or holding vectors of another size than ``dim``."""
        target = self.engine.resolve(self.collection)
        recorded = self.engine.metadata(target).get("embedder_id")
        size = self.engine.vector_size(target)
        if recorded != embedder_id or size != dim:
            raise StoreError(self.mismatch(target, embedder_id, dim))

    def mismatch(self, collection: str, embedder_id: str | None = None, dim: int | None = None) -> str:
        """Why ``collection`` cannot serve the embedder ``embedder_id`` (default: this store's), and what to do."""
        embedder_id = embedder_id or self.embedder_id
        recorded = self.engine.metadata(collection).get("embedder_id")
        built = f"embedder {recorded}" if recorded else "an embedder it does not record (indexed before collections recorded one)"
        size = self.engine.vector_size(collection)
        served = f"embedder {embedder_id}" + (f" ({dim}-d)" if dim else "")
        msg = (f"the catalog {collection} at {self.where} was built with {built} ({size}-d vectors) but the server "
               f"runs {served}: ")
        new = collection_for(embedder_id) if embedder_id else None
        if new and new != collection and self.engine.exists(new) and self.engine.count(new):
            return msg + f"{new} is indexed ({self.engine.count(new)} points); make it live with `python -m client.rollout switch`"
        return msg + "re-index with `python -m client.rollout index DIR`, then `python -m client.rollout switch`"

    def image_points(self, path: str) -> list[dict]:
        """The payloads of the points stored for the image file ``path`` (as indexed)."""
        return [r.payload for r in self.engine.scroll(self.collection, where=Where(must={"path": [path]}))]

    def aliases(self) -> dict[str, str]:
        return self.engine.aliases()

    def upsert(self, points: list[CatalogPoint]) -> None:
        if not points:
            return
        self.engine.delete_where(self.collection, Where(must={"path": sorted({p.path for p in points})},
                                                        must_not={"sha256": sorted({p.sha256 for p in points})}))
        # an image written again with fewer points (e.g. indexed before with synthetic views, now without) leaves
        # none of its old ones: per set of object indices, the other points of those images go
        objects: dict[str, set[int]] = defaultdict(set)
        for p in points:
            objects[p.path].add(p.object_index)
        by_set: dict[tuple[int, ...], list[str]] = defaultdict(list)
        for path, indices in objects.items():
            by_set[tuple(sorted(indices))].append(path)
        for indices, paths in by_set.items():
            self.engine.delete_where(self.collection, Where(must={"path": sorted(paths)}, must_not={"object": list(indices)}))
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

    def get_product(self, product_id: str) -> list[dict]:
        """The payloads of every stored point of one product (its views and objects), ordered by path and
        object; empty when the product is not in the catalog."""
        points = self.engine.scroll(self.collection, where=Where(must={"product_id": [product_id]}))
        return sorted((r.payload for r in points), key=lambda p: (str(p.get("path", "")), int(p.get("object", 0))))

    def delete_product(self, product_id: str) -> int:
        """Removes every point of one product; returns how many there were (0: not in the catalog)."""
        where = Where(must={"product_id": [product_id]})
        n = self.engine.count(self.collection, where)
        if n:
            self.engine.delete_where(self.collection, where)
        return n

    def keypoints(self, product_ids: list[str]) -> dict[str, list[Keypoints]]:
        """The keypoints stored at index time (client/rerank.py) of each view of these products, by product id;
        a product indexed without them is absent."""
        out: dict[str, list[Keypoints]] = {}
        if not product_ids:
            return out
        for r in self.engine.scroll(self.collection, where=Where(must={"product_id": sorted(set(product_ids))}),
                                    fields=["product_id", rerank.FIELD]):
            text = r.payload.get(rerank.FIELD)
            if isinstance(text, str):
                kp = rerank.unpack(text)
                if len(kp[0]):
                    out.setdefault(str(r.payload.get("product_id", "")), []).append(kp)
        return out

    def categories(self) -> dict[str, int]:
        """Number of products per category (a product's points share its category)."""
        products: dict[str, set[str]] = {}
        for r in self.engine.scroll(self.collection, fields=["category", "product_id"]):
            products.setdefault(str(r.payload.get("category", "")), set()).add(str(r.payload.get("product_id", "")))
        return {c: len(p) for c, p in sorted(products.items())}
