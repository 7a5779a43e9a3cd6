"""Perceptual hashes (imagehash: average, perceptual, difference, wavelet), 64 bits, Hamming distance.

One HashMethod says how a hash is stored and searched; each hash is a subclass naming its function.
A code is stored as a +-1 vector (dot = 64 - 2 * Hamming, so a Qdrant server can answer it too) with the
code itself in the payload; candidates come from multi-index hashing (hashindex.py), not the store.
"""
from __future__ import annotations

from typing import ClassVar, Iterable

import numpy as np
from PIL import Image
from tqdm import tqdm

from client.dedup.base import Method, Plan
from client.dedup.hashindex import HammingIndex, bits_to_int, hamming
from client.store import DedupStore

BITS = 64
_BIT_SHIFTS = np.arange(BITS - 1, -1, -1, dtype=np.uint64)  # most significant bit first


class HashMethod(Method):
    lower_is_similar = True
    dim = BITS
    distance = "dot"
    read_vectors = False  # the code is in the payload
    function: ClassVar[str]  # imagehash's function: (image, hash_size) -> ImageHash

    def feature(self, img: Image.Image) -> int:
        import imagehash

        return bits_to_int(getattr(imagehash, self.function)(img, hash_size=8).hash)

    def score(self, a: int, b: int) -> float:
        return float(hamming(int(a), int(b)))

    def to_vector(self, feature) -> np.ndarray:
        bits = (np.uint64(int(feature)) >> _BIT_SHIFTS) & np.uint64(1)
        return np.where(bits == 1, 1.0, -1.0).astype(np.float32)

    def payload(self, feature) -> dict:
        return {"code": f"{int(feature):016x}"}

    def from_record(self, payload: dict, vector) -> int:
        return int(payload["code"], 16)

    def after_upsert(self, store: DedupStore, added: int) -> None:
        """Nothing: the candidates come from the Hamming index, not from the store's HNSW."""

    def candidate_pairs(self, plan: Plan, ids: list[str], feats: list, store: DedupStore,
                        show_progress: bool = True) -> Iterable[tuple[int, int]]:
        index = HammingIndex(np.array(feats, dtype=np.uint64))
        for i, j, _ in tqdm(index.pairs(int(plan.store_threshold)), desc="searching (hash index)", unit="block",
                            disable=not show_progress):
            yield from zip(i.tolist(), j.tolist())

    def lookup(self, plan: Plan, store: DedupStore, ids: list[str], feats: list, queries: list[int]) -> list[list[tuple[int, float]]]:
        index = HammingIndex(np.array(feats[:len(ids)], dtype=np.uint64))
        return [[(i, float(d)) for i, d in index.query(int(feats[q]), int(plan.store_threshold))] for q in queries]


class AverageHash(HashMethod):
    name, function, description = "ahash", "average_hash", "average hash (imagehash.average_hash), Hamming distance of 64 bits"


class PerceptualHash(HashMethod):
    name, function, description = "phash", "phash", "perceptual DCT hash (imagehash.phash), Hamming distance of 64 bits"


class DifferenceHash(HashMethod):
    name, function, description = "dhash", "dhash", "difference hash (imagehash.dhash), Hamming distance of 64 bits"


class WaveletHash(HashMethod):
    name, function, description = "whash", "whash", "wavelet hash (imagehash.whash, Haar), Hamming distance of 64 bits"
