"""A typed client over tritonclient.grpc for the ``retrieval`` ensemble.

At connect time the server must be live, the ensemble ready, and its config must have every output
named in client/spec.py (a server built from another spec fails then, not mid-batch); the input name,
row count and embedding size are read from that config.

Every request goes through ``RetrievalClient.call``. A server that is unreachable (UNAVAILABLE: down,
restarting) or too slow (DEADLINE_EXCEEDED), or whose model process failed (INTERNAL "Stub process ... is not
healthy": the local server then goes down and its supervisor starts it again, deploy/local.py), is retried with
exponential backoff and full jitter for up to ``retry_seconds`` (default $TRITON_RETRY_SECONDS or 30 s) before
``ServerUnavailable``; the gRPC channel itself reconnects within ~2 s once the server is back. Inference is a pure function of the
image, so a retried request is safe.
"""
from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

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


DEFAULT_RETRY_SECONDS = 30.0
RETRY_STATUSES = ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # grpc.StatusCode names worth another attempt
# Other statuses worth another attempt only with one of these messages: INTERNAL when a model's Python process
# failed; NOT_FOUND while a server unloads its models on the way down (its gRPC port still answers) and the server
# the supervisor starts again will answer (a model that does not exist says "... is not found": not retried).
RETRY_MESSAGES = {"INTERNAL": ("is not healthy",), "NOT_FOUND": ("has no available versions",)}
FIRST_DELAY, MAX_DELAY = 0.1, 5.0  # backoff: 0.1, 0.2, 0.4 ... 5 s (before jitter)


def retryable(status: str, message: str) -> bool:
    """Whether a failed request is worth another attempt (the server is down, slow, shutting down, or a model
    process failed)."""
    return any(s in status for s in RETRY_STATUSES) or any(
        code in status and any(m in message for m in messages) for code, messages in RETRY_MESSAGES.items())


def channel_args() -> list[tuple]:
    """tritonclient's own channel options (message sizes, keepalive), plus a reconnect backoff capped at 2 s
    so a restarted server is found at once (gRPC's default grows to 120 s between connection attempts)."""
    keep = grpcclient.KeepAliveOptions()
    return [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
            ("grpc.keepalive_time_ms", keep.keepalive_time_ms), ("grpc.keepalive_timeout_ms", keep.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keep.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keep.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000)]


def backoff_delays(first: float = FIRST_DELAY, cap: float = MAX_DELAY, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with full jitter: attempt k waits uniform(0, min(cap, first * 2**k)) seconds."""
    rng = rng or random.Random()
    k = 0
    while True:
        yield rng.uniform(0.0, min(cap, first * 2 ** k))
        k += 1


class RetrievalClient:
    def __init__(self, url: str | None = None, *, model: str = spec.ENSEMBLE, timeout: float = 60.0,
                 retry_seconds: float | None = None):
        self.url = url or os.environ.get("TRITON_URL", spec.DEFAULT_TRITON_URL)
        self.model = model
        self.timeout = timeout
        if retry_seconds is None:
            try:
                retry_seconds = float(os.environ.get("TRITON_RETRY_SECONDS", DEFAULT_RETRY_SECONDS))
            except ValueError:
                raise TritonError(f"TRITON_RETRY_SECONDS={os.environ['TRITON_RETRY_SECONDS']!r} is not a number of seconds") from None
        if retry_seconds < 0:
            raise TritonError(f"retry_seconds must be >= 0, got {retry_seconds}")
        self.retry_seconds = retry_seconds
        self.retries = 0  # requests sent again after UNAVAILABLE / DEADLINE_EXCEEDED, since connecting
        self._count = threading.Lock()  # infer_many's threads retry concurrently
        self._client = grpcclient.InferenceServerClient(self.url, channel_args=channel_args())
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
        self.catalog_model = spec.CATALOG_ENSEMBLE  # what infer_catalog calls

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RetrievalClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, data: bytes, name: str = "<bytes>") -> ImageResult:
        """One encoded image -> its objects (BadImage when the server cannot read it)."""
        return ImageResult.from_outputs(self.outputs(data, name))

    def outputs(self, data: bytes, name: str = "<bytes>", model: str | None = None) -> dict[str, np.ndarray]:
        """The ensemble's raw outputs for one encoded image, every row, by tensor name (``model``: another ensemble
        of the same inputs and outputs, e.g. ``catalog_model``)."""
        return self.call(model or self.model, {self.input_name: np.array([data], dtype=object)}, self.output_names, name)

    def infer_catalog(self, data: bytes, name: str = "<bytes>") -> ImageResult:
        """``infer`` for a catalog image: the ``retrieval_catalog`` ensemble (``catalog_model``), the same outputs
        with each row's features from its own crop (no box jitter: a catalog box is tight). What client.catalog
        indexes. Retried like any call; a server that does not serve that ensemble at all (NOT_FOUND "is not
        found", not a restart's "has no available versions") gives ModelNotReady with the fix."""
        try:
            out = self.outputs(data, name, self.catalog_model)
        except ModelNotReady:
            raise
        except TritonError as exc:
            if "unknown model" in str(exc) and "is not found" in str(exc):
                raise ModelNotReady(f"model {self.catalog_model!r} is not served by {self.url}: the server's model repository "
                                    "predates it; run `python -m export.build` (or `python -m export.repository`) and restart "
                                    "the server") from exc
            raise
        return ImageResult.from_outputs(out)

    def whole_image_embedding(self, data: bytes, name: str = "<bytes>") -> np.ndarray:
        """The embedding of a whole encoded image, from the detector-free ``whole_image`` ensemble (no detection,
        no classifier): the same vector as the ``retrieval`` ensemble's whole-image row."""
        out = self.call(spec.WHOLE_IMAGE, {spec.IMAGE_BYTES.name: np.array([data], dtype=object)}, [spec.EMBEDDINGS.name], name)
        return np.asarray(out[spec.EMBEDDINGS.name], np.float32).reshape(-1)

    def call(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str], name: str = "<bytes>") -> dict[str, np.ndarray]:
        """One request to any served model (the ensemble or one of its steps), by tensor name. The server's
        INVALID_ARG becomes BadImage (about ``name``); UNAVAILABLE, DEADLINE_EXCEEDED and a model process that
        failed (``retryable``) are retried with backoff (``backoff_delays``) for up to ``retry_seconds``, then
        ServerUnavailable."""
        ins = []
        for key, arr in inputs.items():
            t = grpcclient.InferInput(key, list(arr.shape), np_to_triton_dtype(arr.dtype))
            t.set_data_from_numpy(arr)
            ins.append(t)
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
        start = time.monotonic()
        delays = backoff_delays()
        attempts = 0
        while True:
            attempts += 1
            try:
                res = self._client.infer(model, ins, outputs=requested, client_timeout=self.timeout)
                return {n: res.as_numpy(n) for n in outputs}
            except InferenceServerException as exc:
                status = str(exc.status())
                msg = (exc.message() or str(exc)).removeprefix(f"in ensemble '{model}', ")
                if "INVALID_ARG" in status:
                    raise BadImage(f"{name}: {msg}") from exc
                if not retryable(status, msg):
                    raise TritonError(f"{name}: {model} failed: {msg}") from exc
                delay = next(delays)
                waited = time.monotonic() - start
                if waited + delay > self.retry_seconds:
                    raise ServerUnavailable(f"Triton at {self.url} did not answer {name} ({attempts} attempt(s) in "
                                            f"{waited:.0f} s, the last: {msg}); is it running? "
                                            "`python -m deploy.local status`") from exc
            with self._count:
                self.retries += 1
            time.sleep(delay)  # backoff before the next attempt

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

    def infer_many(self, items: Iterable[tuple[str, bytes]], concurrency: int = 4,
                   fn: Callable[[bytes, str], Any] | None = None) -> Iterator[tuple[str, Any]]:
        """Yields (name, result or BadImage) in input order; ``concurrency`` requests in flight, and ``items``
        read only a few ahead of them (a catalog is never held in memory). ``fn(data, name)`` replaces ``infer``
        (client.catalog.describe: an image and its synthetic views). Other errors (ServerUnavailable once the
        retries are spent) propagate."""
        work = fn or self.infer

        def one(name: str, data: bytes) -> Any:
            try:
                return work(data, name)
            except BadImage as exc:
                return exc

        pool = ThreadPoolExecutor(max_workers=concurrency)
        window: deque[tuple[str, Future]] = deque()
        try:
            for name, data in items:
                window.append((name, pool.submit(one, name, data)))
                while len(window) > 2 * concurrency or (window and window[0][1].done()):
                    head, fut = window.popleft()
                    yield head, fut.result()
            while window:
                head, fut = window.popleft()
                yield head, fut.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
