"""A typed client over tritonclient.grpc for the ``retrieval`` ensemble.

Tensor names and sizes are read from the server's model config and checked against client/spec.py,
so a server built from another spec fails at connect time with a clear message, not mid-batch.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client import spec



class TritonError(RuntimeError):
    """Base class of this module's errors."""


class ServerUnavailable(TritonError):
    pass


class ModelNotReady(TritonError):
    pass


class BadImage(TritonError):
    """The server refused one image (cannot be decoded, too small ...); other images are unaffected."""


@dataclass
class DetectedObject:
    index: int  # row in the ensemble outputs; index == rows - 1 is the whole image
    box: tuple[float, float, float, float]
    score: float
    fine_class: str
    category: str
    category_score: float
    embedding: np.ndarray
    whole_image: bool


@dataclass
class ImageResult:
    objects: list[DetectedObject]  # valid rows only: detections, or the whole image if none
    image_embedding: np.ndarray  # whole-image embedding (row K), always present
    image_category: str

    def best(self) -> DetectedObject:
        """The highest-scoring detection (or the whole image when nothing was detected)."""
        return max(self.objects, key=lambda o: (not o.whole_image, o.score))


def _decode_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RetrievalClient:
    def __init__(self, url: str | None = None, *, model: str = spec.ENSEMBLE, timeout: float = 60.0):
        self.url = url or os.environ.get("TRITON_URL", spec.DEFAULT_TRITON_URL)
        self.model = model
        self.timeout = timeout
        self._client = grpcclient.InferenceServerClient(self.url)
        try:
            live = self._client.is_server_live(client_timeout=min(timeout, 10.0))
        except InferenceServerException as exc:
            raise ServerUnavailable(f"cannot reach Triton at {self.url} ({exc.message()}); start it with "
                                    "`python -m deploy.local up` or set TRITON_URL") from exc
        if not live:
            raise ServerUnavailable(f"Triton at {self.url} is not live")
        try:
            ready = self._client.is_model_ready(model, client_timeout=min(timeout, 10.0))
        except InferenceServerException as exc:
            raise ModelNotReady(f"model {model!r} on {self.url}: {exc.message()}") from exc
        if not ready:
            raise ModelNotReady(f"model {model!r} is not ready on {self.url}; see the server log "
                                "(`python -m deploy.local status`)")
        config = self._client.get_model_config(model, as_json=True)["config"]
        outputs = {o["name"]: o for o in config.get("output", [])}
        wanted = [t.name for t in spec.ENSEMBLE_OUTPUTS]
        missing = [n for n in wanted if n not in outputs]
        if missing:
            raise ModelNotReady(f"model {model!r} on {self.url} lacks outputs {missing}; it has {sorted(outputs)}")
        self.input_name = config["input"][0]["name"]
        self.rows = int(outputs["valid"]["dims"][0])
        self.dim = int(outputs["embeddings"]["dims"][-1])
        self.output_names = wanted

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RetrievalClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, data: bytes, name: str = "<bytes>") -> ImageResult:
        inp = grpcclient.InferInput(self.input_name, [1], "BYTES")
        inp.set_data_from_numpy(np.array([data], dtype=object))
        outs = [grpcclient.InferRequestedOutput(n) for n in self.output_names]
        try:
            res = self._client.infer(self.model, [inp], outputs=outs, client_timeout=self.timeout)
        except InferenceServerException as exc:
            msg = (exc.message() or str(exc)).removeprefix(f"in ensemble '{self.model}', ")
            if "INVALID_ARG" in str(exc.status()):
                raise BadImage(f"{name}: {msg}") from exc
            if "UNAVAILABLE" in str(exc.status()):
                raise ServerUnavailable(f"Triton at {self.url} went away: {msg}") from exc
            raise TritonError(f"{name}: inference failed: {msg}") from exc
        return self._parse(res)

    def infer_many(self, items: Iterable[tuple[str, bytes]], concurrency: int = 4) -> Iterator[tuple[str, ImageResult | Exception]]:
        """Yields (name, result or BadImage) in input order; ``concurrency`` requests in flight."""
        def one(item):
            name, data = item
            try:
                return name, self.infer(data, name)
            except BadImage as exc:
                return name, exc

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            yield from pool.map(one, items)

    def _parse(self, res) -> ImageResult:
        boxes = res.as_numpy("boxes")
        scores = res.as_numpy("scores")
        valid = res.as_numpy("valid").astype(bool)
        fine = res.as_numpy("fine_class")
        cats = res.as_numpy("category")
        cat_scores = res.as_numpy("category_score")
        emb = res.as_numpy("embeddings")
        whole = self.rows - 1
        objects = [DetectedObject(i, tuple(float(v) for v in boxes[i]), float(scores[i]), _decode_str(fine[i]), _decode_str(cats[i]),
                                  float(cat_scores[i]), emb[i].astype(np.float32), i == whole)
                   for i in range(self.rows) if valid[i]]
        return ImageResult(objects, emb[whole].astype(np.float32), _decode_str(cats[whole]))
