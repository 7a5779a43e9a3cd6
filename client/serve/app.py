"""The HTTP API and the page: ``create_app(Settings(...))`` (what ``python -m client.serve`` runs).

Every endpoint is a thin mapping onto ``client.serve.service.Service`` (the client library); bad input gets
a 4xx with ``{"detail": "<reason>"}``: 400 unreadable/empty, 413 too big, 415 not an image (or video),
404 unknown item, 409 nothing indexed yet, 503 Triton or the store unavailable. OpenAPI docs at /docs.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from client.serve.service import Service, ServiceError, Settings, image_bytes
from client.serve.uploads import UploadError, read_uploads
from client.store import StoreError
from client.triton import BadImage, TritonError

ASSETS = {"gallery.js": "text/javascript", "gallery.css": "text/css", "app.js": "text/javascript"}


def _upload_body(what: str, video: bool = True) -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    content = {"multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": what}}}}, "image/*": binary}
    if video:
        content["video/*"] = binary
    return {"requestBody": {"required": True, "content": content}}


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def create_app(settings: Settings | None = None, *, service: Service | None = None) -> FastAPI:
    """The app over a Service opened at startup from ``settings`` (or over ``service``, left open at shutdown)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own = service is None
        app.state.service = service or await run_in_threadpool(Service, settings)
        try:
            yield
        finally:
            if own:
                await run_in_threadpool(app.state.service.close)

    app = FastAPI(title="imgretrieval search service", lifespan=lifespan, version="1",
                  description="Products in a photo or a short video, from the catalog indexed in Qdrant, through the "
                              "Triton `retrieval` ensemble. The page at `/` uses this API.")
    assets = {name: (resources.files("client.serve") / "static" / name).read_bytes() for name in (*ASSETS, "index.html")}

    def svc(request: Request) -> Service:
        return request.app.state.service

    def max_bytes(request: Request) -> int:
        return svc(request).settings.max_upload_bytes

    @app.exception_handler(ServiceError)
    async def _service_error(request, exc: ServiceError):
        return _error(exc.status, exc.detail)

    @app.exception_handler(UploadError)
    async def _upload_error(request, exc: UploadError):
        return _error(exc.status, exc.detail)

    @app.exception_handler(BadImage)
    async def _bad_image(request, exc: BadImage):
        return _error(400, f"cannot read the image: {exc}")

    @app.exception_handler(TritonError)
    async def _triton_error(request, exc: TritonError):
        return _error(503, f"Triton: {exc}")

    @app.exception_handler(StoreError)
    async def _store_error(request, exc: StoreError):
        return _error(503, f"store: {exc}")

    # the page -----------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(assets["index.html"])

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in ASSETS:  # a fixed set of files held in memory: no request path reaches the disk
            return _error(404, f"no static file {name!r}")
        return Response(assets[name], media_type=ASSETS[name])

    # the API ------------------------------------------------------------------------------------------

    @app.get("/health", summary="Triton and store readiness (503 when either is not ready)")
    async def health(request: Request):
        ok, body = await run_in_threadpool(svc(request).health)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/categories", summary="Products per category in the catalog")
    async def categories(request: Request):
        return {"categories": await run_in_threadpool(svc(request).categories)}

    @app.post("/search", summary="Catalog products in a photo or a short video (the `client.search --json` structure)",
              openapi_extra=_upload_body("a photo (JPEG, PNG, WebP, ...) or a short video (MP4, WebM, ...)"))
    async def search(request: Request, top_k: int = Query(5, ge=1, le=100, description="results per object"),
                     category: str | None = Query(None, description="search every object within this category"),
                     category_filter: bool = Query(True, description="false: search the whole catalog for every object"),
                     frame_images: bool = Query(False, description="a video's answer also carries `frame_images`: each "
                                                                   "object's best frame as a JPEG data URI")):
        (upload,), _ = await read_uploads(request, max_bytes(request))
        return await run_in_threadpool(svc(request).search, upload, top_k=top_k, category=category or None,
                                       category_filter=category_filter, frame_images=frame_images)

    @app.post("/index", summary="Add a product (one or more images of it), replacing what is stored under its id",
              openapi_extra=_upload_body("an image of the product (repeat the field for more views)", video=False))
    async def index(request: Request, product_id: str | None = Query(None, description="default: the first file name "
                                                                                          "without extension"),
                    category: str | None = Query(None, description="default: the classifier's category")):
        s = svc(request)
        uploads, fields = await read_uploads(request, max_bytes(request), max_files=s.settings.max_index_files,
                                             allow_video=False)
        product_id = product_id or fields.get("product_id")
        if not product_id:
            name = uploads[0].name
            if name == "<upload>":
                raise ServiceError(400, "give product_id (query parameter or form field) for a raw upload")
            product_id = name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        return await run_in_threadpool(s.index, product_id, uploads, category or fields.get("category"))

    @app.get("/items/{product_id}", summary="A catalog product: its category and stored views")
    async def get_item(request: Request, product_id: str):
        return await run_in_threadpool(svc(request).get_item, product_id)

    @app.delete("/items/{product_id}", summary="Remove a product from the catalog")
    async def delete_item(request: Request, product_id: str):
        return await run_in_threadpool(svc(request).delete_item, product_id)

    @app.get("/items/{product_id}/image", summary="A product's catalog image (a JPEG thumbnail with `size`)",
             response_class=Response)
    async def item_image(request: Request, product_id: str,
                         path: str | None = Query(None, description="which stored view (default: the first)"),
                         size: int | None = Query(None, ge=16, le=2048, description="longest side of a thumbnail")):
        def load():
            return image_bytes(svc(request).item_image(product_id, path), size)
        data, media = await run_in_threadpool(load)
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=60"})

    @app.post("/dedup/check", summary="Copies of an uploaded image in the collection indexed by `client.dedup`",
              openapi_extra=_upload_body("an image", video=False))
    async def dedup_check(request: Request, method: str | None = Query(None, description="default: the service's (cnn)"),
                          threshold: float | None = Query(None, description="default: the calibrated one")):
        (upload,), _ = await read_uploads(request, max_bytes(request), allow_video=False)
        return await run_in_threadpool(svc(request).dedup_check, upload, method=method, threshold=threshold)

    @app.get("/dedup/image/{token}", summary="An image found by /dedup/check (links it handed out)", response_class=Response)
    async def dedup_image(request: Request, token: str,
                          size: int | None = Query(None, ge=16, le=2048, description="longest side of a thumbnail")):
        def load():
            return image_bytes(svc(request).signed_path(token), size)
        data, media = await run_in_threadpool(load)
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=60"})

    return app
