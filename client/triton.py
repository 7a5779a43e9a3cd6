"""A typed client over tritonclient.grpc for the ``retrieval`` ensemble.

At connect time the server must be live, the ensemble ready, and its config must have every output
named in client/spec.py (a server built from another spec fails then, not mid-batch); the input name,
row count and embedding size are read from that config.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client import imaging, spec
from client.result import ImageResult


class TritonError(RuntimeError):
    """Base class of this module's errors."""


class ServerUnavailable(TritonError):
    pass


class ModelNotReady(TritonError):
    pass


class BadImage(TritonError):
    """The server refused one image (cannot be decoded, too small ...); other images are unaffected."""


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
        self._embedder_id: str | None = None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RetrievalClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, data: bytes, name: str = "<bytes>") -> ImageResult:
        """One encoded image -> its objects (BadImage when the server cannot read it)."""
        return ImageResult.from_outputs(self.outputs(data, name))

    def outputs(self, data: bytes, name: str = "<bytes>") -> dict[str, np.ndarray]:
        """The ensemble's raw outputs for one encoded image, every row, by tensor name."""
        return self.call(self.model, {self.input_name: np.array([data], dtype=object)}, self.output_names, name)

    def call(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], name: str = "<bytes>") -> dict[str, np.ndarray]:
        """One request to any served model (the ensemble or one of its steps), by tensor name. The server's
        INVALID_ARG becomes BadImage (about ``name``), a lost server ServerUnavailable."""
        ins = []
        for key, arr in inputs.items():
            t = grpcclient.InferInput(key, list(arr.shape), np_to_triton_dtype(arr.dtype))
            t.set_data_from_numpy(arr)
            ins.append(t)
        try:
            res = self._client.infer(model, ins, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
                                     client_timeout=self.timeout)
        except InferenceServerException as exc:
            msg = (exc.message() or str(exc)).removeprefix(f"in ensemble '{model}', ")
            if "INVALID_ARG" in str(exc.status()):
                raise BadImage(f"{name}: {msg}") from exc
            if "UNAVAILABLE" in str(exc.status()):
                raise ServerUnavailable(f"Triton at {self.url} went away: {msg}") from exc
            raise TritonError(f"{name}: {model} failed: {msg}") from exc
        return {n: res.as_numpy(n) for n in outputs}

    def models_ready(self, models) -> bool:
        """Whether every one of these models is served and ready."""
        try:
            return all(self._client.is_model_ready(m, client_timeout=min(self.timeout, 10.0)) for m in models)
        except InferenceServerException:
            return False

    def embedder_id(self) -> str:
        """Identity of the embedder weights the server runs (asked once with a small blank image)."""
        if self._embedder_id is None:
            from PIL import Image

            probe = imaging.encode_jpeg(Image.new("RGB", (32, 32), (spec.PAD_VALUE,) * 3))
            self._embedder_id = self.infer(probe, "<embedder probe>").embedder_id
        return self._embedder_id

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
