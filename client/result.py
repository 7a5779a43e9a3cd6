"""What one image gives: the ensemble's outputs read into objects, the same for every runner.

``ImageResult.from_outputs`` turns the ``retrieval`` outputs (a mapping of tensor name -> array, names
from client/spec.py) into typed objects. The gRPC client (client/triton.py) and the in-process pipeline
over the same ONNX files (export/pipeline.py) both return this, so callers cannot tell them apart.

It keeps every row (``rows``: the detections the crop step passed on, in score order, then the whole
image), each with its ``valid`` flag; ``objects`` are the valid rows only. Which detections are rows is
the row policy of client/spec.py, applied by the served crop graph.
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
    whole_image: bool  # the whole-image row (the last)
    valid: bool = True  # above the detector's threshold (spec.SCORE_THRESHOLD); the whole image: no detection was
    row: int = -1  # its row in the ensemble's outputs (the whole image is the last)


@dataclass
class ImageResult:
    rows: list[DetectedObject]  # every row of the outputs, in row order (the last = the whole image)
    image_embedding: np.ndarray  # whole-image embedding (last row), always present
    embedder_id: str  # identity of the embedder weights that answered

    @property
    def objects(self) -> list[DetectedObject]:
        """The valid rows: detections above the threshold, or the whole image if none."""
        return [o for o in self.rows if o.valid]

    @property
    def whole(self) -> DetectedObject:
        """The whole-image row."""
        return self.rows[-1]

    def best(self) -> DetectedObject:
        """The highest-scoring valid detection (or the whole image when nothing was detected)."""
        return max(self.objects, key=lambda o: (not o.whole_image, o.score))

    def arrays(self) -> dict[str, np.ndarray]:
        """``boxes``, ``scores`` and ``valid`` of every row, by spec name (what row policies read)."""
        return {spec.BOXES.name: np.array([o.box for o in self.rows], np.float32).reshape(-1, 4),
                spec.SCORES.name: np.array([o.score for o in self.rows], np.float32),
                spec.VALID.name: np.array([o.valid for o in self.rows], bool)}

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
        rows = [DetectedObject(tuple(float(v) for v in boxes[i]), float(scores[i]), _text(fine[i]), _text(cats[i]),
                               float(cat_scores[i]), emb[i], i == whole, bool(valid[i]), i)
                for i in range(len(valid))]
        return cls(rows, emb[whole], _text(np.asarray(out[spec.EMBEDDER_ID.name]).reshape(-1)[0]))


def row_arrays(source: "ImageResult | Mapping[str, np.ndarray]") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [N, 4], scores [N], valid [N]) of every row, from an ImageResult or the raw outputs by spec name
    (the ensemble's, or the crop step's in process): what the row policies of the client read."""
    if isinstance(source, ImageResult):
        source = source.arrays()
    return (np.asarray(source[spec.BOXES.name], np.float32).reshape(-1, 4), np.asarray(source[spec.SCORES.name], np.float32),
            np.asarray(source[spec.VALID.name]).astype(bool))


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
