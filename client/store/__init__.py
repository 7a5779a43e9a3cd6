"""The vector store: one engine interface (embedded qdrant-edge on disk, or a Qdrant server with
QDRANT_URL) and the two stores built on it, products and dedup features."""
from client.store.dedup import DEDUP_PATH, DedupStore, dedup_point_id
from client.store.engine import DEFAULT_PATH, DISTANCES, Engine, Record, Scored, StoreError, Where, open_engine
from client.store.products import ALIAS, KEYWORD_FIELDS, CatalogPoint, Hit, QdrantStore, point_id

__all__ = ["ALIAS", "DEDUP_PATH", "DEFAULT_PATH", "DISTANCES", "KEYWORD_FIELDS", "CatalogPoint", "DedupStore", "Engine",
           "Hit", "QdrantStore", "Record", "Scored", "StoreError", "Where", "dedup_point_id", "open_engine", "point_id"]
