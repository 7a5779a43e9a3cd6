"""What the web service holds for its whole life and does per request, without HTTP: the Triton client, the
products store (the embedded engine is locked per process, so it is opened once), the folders it may serve
images from, and the library calls behind each endpoint (client.search, client.catalog, client.dedup,
client.video). ``client.serve.app`` maps HTTP onto this.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import importlib
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from client import spec
from client.catalog import describe, points_for
from client.imaging import encode_jpeg
from client.search import search_image
from client.serve.uploads import Upload, UploadError, sniff
from client.store import QdrantStore, StoreError, Where
from client.triton import RetrievalClient, TritonError

log = logging.getLogger("client.serve")

MAX_PRODUCT_ID = 200
EXTENSIONS = {"jpeg": "jpg", "png": "png", "gif": "gif", "tiff": "tif", "bmp": "bmp", "webp": "webp"}


class ServiceError(Exception):
    """A request the service refuses or cannot answer now: HTTP status and reason."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Settings:
    triton_url: str | None = None  # default $TRITON_URL or spec.DEFAULT_TRITON_URL
    qdrant_url: str | None = None  # default $QDRANT_URL; unset: the embedded engine
    qdrant_path: Path | None = None  # default $QDRANT_PATH or data/qdrant
    catalog_root: Path | None = None  # images served only from here; default: the folder holding every stored image
    upload_dir: Path = Path("data") / "uploads"  # where POST /index keeps uploaded catalog images
    dedup_folder: Path | None = None  # the folder indexed by `python -m client.dedup` (default: the catalog root)
    dedup_name: str | None = None  # its collection name (default: the one client.dedup derives from the folder)
    dedup_method: str = "cnn"
    dedup_path: Path | None = None  # default $DEDUP_PATH or data/dedup
    max_upload_bytes: int = 32 * 2**20
    max_index_files: int = 16  # views of one product per POST /index
    video_frames: int = 10


class _Locked:
    """A store whose every method call holds the service's store lock (writes never interleave with reads)."""

    def __init__(self, store: QdrantStore, lock: threading.RLock):
        self._store, self._lock = store, lock

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)
        return call


def valid_product_id(product_id: str) -> str:
    product_id = product_id.strip()
    if not product_id or len(product_id) > MAX_PRODUCT_ID:
        raise ServiceError(400, f"product_id must be 1 to {MAX_PRODUCT_ID} characters, got {len(product_id)}")
    if any(c in product_id for c in "/\\") or not product_id.isprintable():
        raise ServiceError(400, f"product_id {product_id!r}: no '/', '\\' or control characters")
    return product_id


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._store_lock = threading.RLock()
        self._client_lock = threading.Lock()
        self._dedup_lock = threading.Lock()
        self._client: RetrievalClient | None = None
        self._client_error = ""
        self._categories: dict[str, int] | None = None
        self._secret = secrets.token_bytes(32)  # signs the image links the service hands out (dedup copies)
        self.raw_store = QdrantStore(url=settings.qdrant_url, path=settings.qdrant_path)
        self.store = _Locked(self.raw_store, self._store_lock)
        try:
            self.upload_dir = settings.upload_dir.resolve()
            self.catalog_root = self._catalog_root()
            self.roots = [r for r in (self.catalog_root, self.upload_dir) if r is not None]
            self.dedup_folder = (settings.dedup_folder or self.catalog_root)
            self.dedup_folder = self.dedup_folder.resolve() if self.dedup_folder else None
        except BaseException:
            self.raw_store.close()
            raise
        log.info("catalog images served from %s", ", ".join(map(str, self.roots)))
        try:
            self.client()
        except ServiceError as exc:  # the service starts anyway: /health says what is missing
            log.warning("%s", exc.detail)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        with self._store_lock:
            self.raw_store.close()

    # what the service is connected to ------------------------------------------------------------------

    def _catalog_root(self) -> Path | None:
        if self.settings.catalog_root is not None:
            root = self.settings.catalog_root.resolve()
            if not root.is_dir():
                raise StoreError(f"catalog root {root} is not a folder")
            return root
        if not self.raw_store.exists():
            return None
        parents = {Path(r.payload["path"]).resolve().parent for r in self.raw_store.engine.scroll(self.raw_store.collection)
                   if r.payload.get("path")}
        parents = {p for p in parents if not _inside(p, [self.upload_dir])}
        if not parents:
            return None
        root = Path(os.path.commonpath([str(p) for p in parents]))
        if len(root.parts) < 3:  # "/" or "/home": too wide to serve files from; say how to set it
            log.warning("the stored catalog images share only the folder %s: not serving catalog images from it; "
                        "give --catalog-root", root)
            return None
        return root

    def client(self) -> RetrievalClient:
        """The Triton client, connected on first use (and again after a failed attempt)."""
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = RetrievalClient(self.settings.triton_url)
                    self._client_error = ""
                except TritonError as exc:
                    self._client_error = str(exc)
                    raise ServiceError(503, f"Triton is not available: {exc}") from exc
            return self._client

    def health(self) -> tuple[bool, dict]:
        triton: dict = {"url": self.settings.triton_url or os.environ.get("TRITON_URL", spec.DEFAULT_TRITON_URL)}
        try:
            c = self.client()
            triton["ready"] = c.models_ready([c.model, c.catalog_model])  # searches, and uploads to the catalog
            triton["url"] = c.url
            if not triton["ready"]:
                triton["detail"] = f"model {c.model!r} or {c.catalog_model!r} is not ready"
        except ServiceError as exc:
            triton.update(ready=False, detail=exc.detail)
        store: dict = {"where": self.raw_store.where, "collection": self.raw_store.collection}
        try:
            exists = self.store.exists()
            store.update(ready=exists, points=self.store.count() if exists else 0)
            if not exists:
                store["detail"] = "no catalog indexed: POST /index or run `python -m client.index DIR`"
        except StoreError as exc:
            store.update(ready=False, detail=str(exc))
        ok = bool(triton["ready"] and store["ready"])
        return ok, {"status": "ok" if ok else "unavailable", "triton": triton, "store": store,
                    "catalog_root": str(self.catalog_root) if self.catalog_root else None, "upload_dir": str(self.upload_dir),
                    "video": self.video_module() is not None, "max_upload_bytes": self.settings.max_upload_bytes}

    def _need_catalog(self) -> None:
        if not self.store.exists():
            raise ServiceError(409, f"no catalog indexed at {self.raw_store.where}: POST /index or run `python -m client.index DIR`")

    @staticmethod
    def video_module():
        try:
            video = importlib.import_module("client.video")
        except ModuleNotFoundError as exc:
            if exc.name not in ("client.video", "av"):
                raise
            return None
        return video if hasattr(video, "search_video") else None

    # search -------------------------------------------------------------------------------------------

    def search(self, upload: Upload, *, top_k: int, category: str | None, category_filter: bool,
               frame_images: bool = False) -> dict:
        """The client.search --json dict of a photo or a video; ``frame_images``: a video's answer also carries
        "frame_images" ({"frame:<index>": JPEG data URI}: each object's best view, what the page shows)."""
        client = self.client()
        self._need_catalog()
        if upload.kind == "video":
            video = self.video_module()
            if video is None:
                raise ServiceError(415, f"{upload.name}: video search is not available on this service "
                                        "(client.video or PyAV is missing); send a photo")
            images: dict = {}
            try:
                report = video.search_video(upload.data, client, self.store, frames=self.settings.video_frames, top_k=top_k,
                                            category=category, filter_by_category=category_filter, name=upload.name,
                                            images=images)
            except (ValueError, OSError) as exc:  # unreadable or empty video (video.VideoError is a ValueError)
                raise ServiceError(400, str(exc) if upload.name in str(exc) else f"{upload.name}: {exc}") from exc
            if frame_images:
                from client.gallery import QUERY_SIDE, data_uri

                report["frame_images"] = {k: data_uri(im, QUERY_SIDE) for k, im in images.items()}
                report["frame_sizes"] = {k: list(im.size) for k, im in images.items()}  # boxes are in these pixels
            return report
        objects = search_image(upload.data, client, self.store, top_k=top_k, category=category, name=upload.name,
                               filter_by_category=category_filter)
        return {"image": upload.name, "objects": [o.to_json() for o in objects]}

    def categories(self) -> dict[str, int]:
        with self._store_lock:
            if self._categories is None:
                self._categories = self.raw_store.categories() if self.raw_store.exists() else {}
            return dict(self._categories)

    # catalog items ------------------------------------------------------------------------------------

    def index(self, product_id: str, uploads: list[Upload], category: str | None) -> dict:
        """Adds the product (its uploaded views), replacing what was stored under its id."""
        product_id = valid_product_id(product_id)
        if category is not None and not (category := category.strip()):
            category = None
        client = self.client()
        results = []
        for u in uploads:  # every view is read before anything is stored: a bad one leaves the catalog as it was
            if u.kind != "image":
                raise ServiceError(415, f"{u.name}: a catalog item is an image, not a {u.kind}")
            results.append(describe(client, u.data, u.name))
        try:
            self.upload_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceError(500, f"cannot create the upload folder {self.upload_dir}: {exc.strerror or exc}") from exc
        points, files = [], []
        for u, result in zip(uploads, results):
            sha = hashlib.sha256(u.data).hexdigest()
            dest = self.upload_dir / f"{sha[:32]}.{EXTENSIONS.get(u.format, 'img')}"  # the name never comes from the request
            if not dest.exists():
                tmp = dest.with_suffix(".part")
                tmp.write_bytes(u.data)
                tmp.replace(dest)
            files.append(str(dest))
            points += [dataclasses.replace(p, product_id=product_id, extra={**p.extra, "upload_name": u.name})
                       for p in points_for(dest, self.upload_dir, sha, result, category)]
        served = client.embedder_id()
        with self._store_lock:
            # as client.index: write the collection of the served embedder, which must be the one searches read
            if self.raw_store.embedder_id is None:
                self.raw_store.use_embedder(served)
            elif self.raw_store.embedder_id != served:
                raise ServiceError(409, f"the store writes the catalog of embedder {self.raw_store.embedder_id} but Triton "
                                        f"now runs {served}: restart the service")
            old = self.raw_store.get_product(product_id) if self.raw_store.exists() else []
            self.raw_store.ensure(client.dim)
            if old:
                self.raw_store.delete_product(product_id)
            self.raw_store.upsert(points)
            self._categories = None
            self._forget_uploads({p.get("path", "") for p in old} - set(files))
        return {"product_id": product_id, "category": points[0].category, "views": len(uploads), "points": len(points),
                "replaced_points": len(old), "paths": files}

    def _forget_uploads(self, paths: set[str]) -> None:
        """Deletes uploaded images no point refers to any more (only ever inside the upload folder)."""
        for p in paths:
            path = Path(p)
            if path.parent != self.upload_dir or self.raw_store.engine.count(self.raw_store.collection, Where(must={"path": [p]})):
                continue
            path.unlink(missing_ok=True)

    def get_item(self, product_id: str) -> dict:
        payloads = self._payloads(product_id)
        views = []
        for p in payloads:
            views.append({"path": p.get("path", ""), "object": p.get("object", 0), "box": p.get("box"),
                          "whole_image": p.get("whole_image"), "synthetic_view": p.get("synthetic_view"),
                          "fine_category": p.get("fine_category"),
                          "sha256": p.get("sha256"), "image_url": f"/items/{_q(product_id)}/image?path={_q(p.get('path', ''))}"})
        return {"product_id": product_id, "category": payloads[0].get("category", ""), "points": len(payloads), "views": views}

    def delete_item(self, product_id: str) -> dict:
        with self._store_lock:
            payloads = self._payloads(product_id)
            n = self.raw_store.delete_product(product_id)
            self._categories = None
            self._forget_uploads({p.get("path", "") for p in payloads})
        return {"product_id": product_id, "deleted_points": n}

    def _payloads(self, product_id: str) -> list[dict]:
        self._need_catalog()
        payloads = self.store.get_product(product_id)
        if not payloads:
            raise ServiceError(404, f"no product {product_id!r} in the catalog")
        return payloads

    def item_image(self, product_id: str, path: str | None) -> Path:
        """The file of one of the product's stored views (``path``: which one, compared with the stored paths only)."""
        stored = [p.get("path", "") for p in self._payloads(product_id)]
        if path is not None and path not in stored:
            raise ServiceError(404, f"product {product_id!r} has no view {path!r}")
        return self.servable(path if path is not None else stored[0], self.roots)

    def servable(self, stored: str, roots: list[Path]) -> Path:
        """A stored path, resolved (symlinks followed), if it is a file inside one of ``roots``."""
        try:
            real = Path(stored).resolve(strict=True)
        except (OSError, RuntimeError):
            raise ServiceError(404, f"the image {stored} is gone from the disk") from None
        if not _inside(real, roots):
            raise ServiceError(403, f"the image {stored} is outside the folders this service serves "
                                    f"({', '.join(map(str, roots)) or 'none: give --catalog-root'})")
        if not real.is_file():
            raise ServiceError(404, f"the image {stored} is not a file")
        return real

    # duplicates ---------------------------------------------------------------------------------------

    def dedup_check(self, upload: Upload, *, method: str | None, threshold: float | None) -> dict:
        from client.dedup import METHODS
        from client.dedup.base import default_name

        name = method or self.settings.dedup_method
        if name not in METHODS:
            raise ServiceError(400, f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
        if upload.kind != "image":
            raise ServiceError(415, f"{upload.name}: duplicates are checked for images, not a {upload.kind}")
        if self.dedup_folder is None:
            raise ServiceError(409, "no folder to check duplicates in: give --dedup-folder (or --catalog-root)")
        cls = METHODS[name]
        m = cls(self.client() if cls.needs_server else None)
        try:
            t = m.resolve(threshold)
        except ValueError as exc:
            raise ServiceError(400, str(exc)) from exc
        collection = self.settings.dedup_name or default_name(self.dedup_folder)
        with self._dedup_lock:  # the embedded dedup folder is locked while open: open it only for the check
            try:
                with m.open_store(collection, self.settings.dedup_path) as store:
                    if store.count() == 0:
                        raise ServiceError(409, f"{store.where} is empty: index the folder first "
                                                f"(python -m client.dedup {self.dedup_folder} --method {name})")
                    found, errors = m.check_data([(upload.name, upload.data)], store, threshold)
                    where = store.collection
            except StoreError as exc:
                raise ServiceError(503, f"dedup index: {exc}") from exc
        if errors:
            raise ServiceError(400, "; ".join(f"{n}: {r}" for n, r in errors))
        copies = [{"path": p, "score": round(float(s), 4), "image_url": f"/dedup/image/{self.sign(p)}"}
                  for p, s in found.get(upload.name, [])]
        return {"image": upload.name, "method": name, "threshold": t, "collection": where,
                "folder": str(self.dedup_folder), "copies": copies}

    def sign(self, path: str) -> str:
        raw = path.encode()
        mac = hmac.new(self._secret, raw, hashlib.sha256).digest()[:12]
        return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def signed_path(self, token: str) -> Path:
        """The file of a link this service signed (a stored path), if still inside the dedup folder."""
        try:
            body, mac = token.split(".", 1)
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            ok = hmac.compare_digest(base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4)),
                                     hmac.new(self._secret, raw, hashlib.sha256).digest()[:12])
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise ServiceError(404, "unknown image link (links are valid while the service that gave them runs)")
        return self.servable(raw.decode(), [r for r in (self.dedup_folder,) if r is not None])


def _q(text: str) -> str:
    return quote(text, safe="")


def image_bytes(path: Path, size: int | None) -> tuple[bytes, str]:
    """A file's bytes and media type, or a JPEG thumbnail of at most ``size`` pixels a side."""
    if size is None:
        data = path.read_bytes()
        kind = sniff(data)
        if kind is None or kind[0] != "image":
            raise UploadError(415, f"{path.name} is not an image")
        return data, f"image/{kind[1]}"
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return encode_jpeg(im, 85), "image/jpeg"
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ServiceError(415, f"{path.name}: cannot be read as an image ({exc})") from exc
