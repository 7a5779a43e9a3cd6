"""What one image gives: the ensemble's outputs read into objects, the same for every runner.

``ImageResult.from_outputs`` turns the ``retrieval`` outputs (a mapping of tensor name -> array, names
from client/spec.py) into typed objects. The gRPC client (client/triton.py) and the in-process pipeline
over the same ONNX files (export/pipeline.py) both return this, so callers cannot tell them apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from client import spec


@dataclass
class DetectedObject:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels
    score: float
    fine_class: str
    category: str
    category_score: float
    embedding: np.ndarray
    whole_image: bool  # the whole-image row (no detection was valid)


@dataclass
class ImageResult:
    objects: list[DetectedObject]  # valid rows only: detections, or the whole image if none
    image_embedding: np.ndarray  # whole-image embedding (last row), always present
    embedder_id: str  # identity of the embedder weights that answered

    def best(self) -> DetectedObject:
        """The highest-scoring detection (or the whole image when nothing was detected)."""
        return max(self.objects, key=lambda o: (not o.whole_image, o.score))

    @classmethod
    def from_outputs(cls, out: Mapping[str, np.ndarray]) -> "ImageResult":
        boxes = np.asarray(out[spec.BOXES.name])
        scores = np.asarray(out[spec.SCORES.name])
        valid = np.asarray(out[spec.VALID.name]).astype(bool)
        fine = out[spec.FINE_CLASS.name]
        cats = out[spec.CATEGORY.name]
        cat_scores = np.asarray(out[spec.CATEGORY_SCORE.name])
        emb = np.asarray(out[spec.EMBEDDINGS.name], dtype=np.float32)
        whole = len(valid) - 1
        objects = [DetectedObject(tuple(float(v) for v in boxes[i]), float(scores[i]), _text(fine[i]), _text(cats[i]),
                                  float(cat_scores[i]), emb[i], i == whole)
                   for i in range(len(valid)) if valid[i]]
        return cls(objects, emb[whole], _text(np.asarray(out[spec.EMBEDDER_ID.name]).reshape(-1)[0]))


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
