"""The search service (client.serve) against the real stack: a tritonserver, the embedded Qdrant engine with
the demo catalog indexed, the app run in process (FastAPI's TestClient, or uvicorn on a free loopback port
for the browser tests). Bad uploads get the right 4xx with the reason and the service keeps serving."""
from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from client.catalog import CATALOG_VIEWS
from client.serve.uploads import sniff
from deploy.check_demo import box_iou

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")


# no server needed ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (b"\xff\xd8\xff\xe0rest", ("image", "jpeg")), (b"\x89PNG\r\n\x1a\nrest", ("image", "png")),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", ("image", "webp")), (b"GIF89a...", ("image", "gif")),
    (b"\x00\x00\x00\x18ftypisom\x00\x00", ("video", "mp4/mov")), (b"\x00\x00\x00\x18ftypavif\x00", ("image", "avif")),
    (b"\x1aE\xdf\xa3webm", ("video", "webm/matroska")), (b"RIFF\x00\x00\x00\x00AVI LIST", ("video", "avi")),
    (b"hello world", None), (b"", None), (b"<html><body>", None)])
def test_uploads_are_recognised_by_their_bytes(data, expected):
    assert sniff(data) == expected


def test_the_shared_renderer_escapes_what_results_contain(tmp_path):
    from client import gallery

    report = {"image": "a</script><img src=x onerror=alert(1)>.jpg",
              "objects": [{"box": [1, 2, 30, 40], "score": 0.9, "category": "<b>cat</b>", "fine_class": "f", "whole_image": False,
                           "valid": True, "results": [{"product_id": "p&<1>", "path": str(tmp_path / "none.jpg"), "score": 0.5}]}]}
    page = gallery.write_report(tmp_path / "r.html", report, {"query": Image.new("RGB", (64, 48), "white")}).read_text()
    assert "</script><img" not in page and "<b>cat</b>" not in page  # only JSON inside the data script, no markup
    assert gallery.embedded(page)["report"] == report  # the report goes in exactly as given
    with pytest.raises(ValueError, match="expected 'query' or 'frame:<index>'"):
        gallery.write_report(tmp_path / "x.html", report, {"photo": Image.new("RGB", (8, 8))})


# the real stack -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def served_catalog(client, demo, tmp_path_factory):
    """A copy of the demo catalog (tests change it) indexed into its own embedded store, closed again."""
    from client.catalog import index_folder
    from client.store import QdrantStore

    base = tmp_path_factory.mktemp("serve")
    root = base / "catalog"
    shutil.copytree(demo / "catalog", root)
    with QdrantStore(path=base / "qdrant") as store:
        report = index_folder(root, client, store, category_from_folders=True)
    assert report.indexed > 0 and not report.skipped
    return base, root


def make_settings(triton, served_catalog, **kw):
    from client.serve.service import Settings

    base, root = served_catalog
    return Settings(triton_url=triton.grpc_url, qdrant_path=base / "qdrant", catalog_root=root, upload_dir=base / "uploads",
                    dedup_path=base / "dedup", dedup_method="phash", **kw)


@contextmanager
def live_server(app):
    """``app`` served by uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    from deploy.local import free_port

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def api(triton, served_catalog):
    from fastapi.testclient import TestClient

    from client.serve.app import create_app

    app = create_app(make_settings(triton, served_catalog, max_upload_bytes=3 * 2**20))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def truth(demo):
    return json.loads((demo / "queries" / "truth.json").read_text())


def _post(api, data: bytes, name="scene.jpg", ctype="image/jpeg", **params):
    return api.post("/search", params=params, files={"image": (name, data, ctype)})


def _found(report, truth_objects):
    """How many of the scene's products are in the top-k of the object covering them."""
    found = 0
    for t in truth_objects:
        match = max(report["objects"], key=lambda o: box_iou(o["box"], t["box"]))
        found += box_iou(match["box"], t["box"]) >= 0.5 and t["product_id"] in [r["product_id"] for r in match["results"]]
    return found


@pytest.mark.integration
def test_health_reports_triton_and_store_ready(api):
    r = api.get("/health")
    assert r.status_code == 200, r.text
    h = r.json()
    assert h["triton"]["ready"] and h["store"]["ready"] and h["store"]["points"] > 0
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/search", "/index", "/items/{product_id}", "/dedup/check", "/health"} <= set(paths)
    assert "multipart/form-data" in paths["/search"]["post"]["requestBody"]["content"]


@pytest.mark.integration
def test_search_finds_the_products_of_generated_scenes(api, demo, truth):
    found = total = 0
    for name, t in truth.items():
        r = _post(api, (demo / "queries" / name).read_bytes(), name, top_k=5)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["image"] == name and set(report) == {"image", "objects"}
        for o in report["objects"]:
            assert set(o) == {"box", "score", "category", "fine_class", "whole_image", "valid", "searched_in", "results"}
            assert 1 <= len(o["results"]) <= 5 and set(o["results"][0]) == {"product_id", "path", "score", "cosine", "inliers"}
        found += _found(report, t["objects"])
        total += len(t["objects"])
    assert total >= 15 and found / total >= 0.8  # the floor test_integration uses for the same scenes


@pytest.mark.integration
def test_search_answers_what_the_library_and_the_cli_give(api, client, demo):
    """Same library, same structure: the service's answer is client.search's --json dict, from a form or a raw body."""
    from client.search import search_image

    data = (demo / "queries" / "scene_2.jpg").read_bytes()
    served = _post(api, data, "scene_2.jpg", top_k=3).json()
    raw = api.post("/search", params={"top_k": 3}, content=data, headers={"content-type": "image/jpeg"}).json()
    assert raw["objects"] == served["objects"] and raw["image"] == "<upload>"
    store = api.app.state.service.store  # the service's own store (the embedded engine is locked per process)
    library = search_image(data, client, store, top_k=3, name="scene_2.jpg")
    assert served == {"image": "scene_2.jpg", "objects": [o.to_json() for o in library]}


@pytest.mark.integration
def test_category_parameters_filter_the_results(api, demo):
    cats = api.get("/categories").json()["categories"]
    assert len(cats) >= 2 and all(n > 0 for n in cats.values())
    data = (demo / "queries" / "scene_0.jpg").read_bytes()
    some = sorted(cats)[0]
    forced = _post(api, data, category=some, top_k=5).json()
    assert all(r["path"].split(os.sep)[-2] == some for o in forced["objects"] for r in o["results"])  # folders = categories
    unfiltered = _post(api, data, category_filter="false", top_k=5)
    assert unfiltered.status_code == 200 and unfiltered.json()["objects"]
    assert _post(api, data, top_k=0).status_code == 422


def _corrupt_jpeg(demo) -> bytes:
    good = (demo / "queries" / "scene_0.jpg").read_bytes()
    return good[:200] + bytes(range(256)) * 8  # a JPEG header, then garbage


@pytest.mark.integration
@pytest.mark.parametrize("case", ["empty", "text", "html as image/jpeg", "wrong content type", "too big", "corrupt jpeg",
                                  "truncated png", "no file field", "urlencoded form", "video for dedup"])
def test_bad_uploads_get_the_right_4xx_and_the_service_keeps_serving(api, demo, case):
    good = (demo / "queries" / "scene_1.jpg").read_bytes()
    png = io.BytesIO()
    Image.new("RGB", (300, 200), "red").save(png, "PNG")
    requests = {
        "empty": (lambda: _post(api, b""), 400, "empty"),
        "text": (lambda: _post(api, b"just some text, not a photo", "notes.txt", "text/plain"), 415, "text/plain"),
        "html as image/jpeg": (lambda: _post(api, b"<html><body>hi</body></html>", "x.jpg"), 415, "not an image or video"),
        "wrong content type": (lambda: api.post("/search", content=good, headers={"content-type": "application/json"}), 415,
                               "application/json"),
        "too big": (lambda: api.post("/search", content=good + b"\0" * (3 * 2**20), headers={"content-type": "image/jpeg"}),
                    413, "limit"),
        "corrupt jpeg": (lambda: _post(api, _corrupt_jpeg(demo), "broken.jpg"), 400, "broken.jpg"),
        "truncated png": (lambda: _post(api, png.getvalue()[:60], "cut.png", "image/png"), 400, "cut.png"),
        "no file field": (lambda: api.post("/search", files={"photo": ("a.jpg", good, "image/jpeg")}), 400, "'image'"),
        "urlencoded form": (lambda: api.post("/search", data={"image": "a.jpg"}), 415, "multipart/form-data"),
        "video for dedup": (lambda: api.post("/dedup/check", files={"image": ("v.mp4", b"\0\0\0\x18ftypisom" + b"\0" * 64,
                                                                             "video/mp4")}), 415, "video"),
    }
    send, status, words = requests[case]
    r = send()
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    ok = _post(api, good, "scene_1.jpg")  # still serving, with the same answer
    assert ok.status_code == 200 and ok.json()["objects"]
    assert api.get("/health").status_code == 200


@pytest.mark.integration
def test_a_video_upload_is_searched_or_refused_clearly(api, demo):
    from client.serve.service import Service

    clip = _clip(demo)
    r = _post(api, clip, "clip.mp4", "video/mp4", top_k=3)
    if Service.video_module() is None:  # client.video (issue 11) not there: a clear 415
        assert r.status_code == 415 and "video search is not available" in r.json()["detail"]
        return
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["image"] == "clip.mp4" and report["objects"] and "frames_used" in report and "frame_images" not in report
    assert all("frames" in o and all("votes" in x for x in o["results"]) for o in report["objects"])
    shown = _post(api, clip, "clip.mp4", "video/mp4", top_k=3, frame_images="true").json()
    assert shown["frame_images"] and all(v.startswith("data:image/jpeg;base64,") for v in shown["frame_images"].values())
    broken = _post(api, clip[: len(clip) // 3], "cut.mp4", "video/mp4")  # a truncated clip: a clear 400, not a 500
    assert broken.status_code == 400 and "cut.mp4" in broken.json()["detail"]


def _clip(demo) -> bytes:
    """A short H.264 MP4 of a demo scene (PyAV), or ISO-BMFF bytes that only look like one when PyAV is missing."""
    try:
        import av
        import numpy as np
    except ImportError:
        return b"\0\0\0\x18ftypisom\0\0\0\0isomiso2" + b"\0" * 256
    frame = np.asarray(Image.open(demo / "queries" / "scene_0.jpg").convert("RGB"))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
        for _ in range(10):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.integration
def test_index_get_search_and_delete_an_item(api, served_catalog):
    base, root = served_catalog
    src = sorted(root.rglob("*.jpg"))[3]
    data = src.read_bytes()
    r = api.post("/index", params={"product_id": "uploaded-item", "category": "uploads"},
                 files={"image": ("whatever.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    added = r.json()
    assert added["product_id"] == "uploaded-item" and added["category"] == "uploads" and added["points"] >= 1
    stored = Path(added["paths"][0])
    assert stored.parent == (base / "uploads").resolve() and stored.read_bytes() == data  # named by content, not request
    item = api.get("/items/uploaded-item").json()
    assert item["category"] == "uploads" and {v["path"] for v in item["views"]} == {str(stored)}
    img = api.get(item["views"][0]["image_url"] + "&size=64")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(img.content)).size) <= 64
    hits = _post(api, data, "again.jpg", category="uploads", top_k=1).json()
    assert hits["objects"][0]["results"][0]["product_id"] == "uploaded-item"
    assert "uploads" in api.get("/categories").json()["categories"]
    # re-indexing the id replaces its points (another image): the old upload is no longer referenced, so it is deleted
    other = sorted(root.rglob("*.jpg"))[4].read_bytes()
    again = api.post("/index", params={"product_id": "uploaded-item", "category": "uploads"},
                     files={"image": ("b.jpg", other, "image/jpeg")}).json()
    assert again["replaced_points"] == added["points"] and not stored.exists()
    views = api.get("/items/uploaded-item").json()["views"]
    assert len(views) == again["points"] and sorted(v["synthetic_view"] for v in views if v["synthetic_view"]) == sorted(CATALOG_VIEWS)
    gone = api.delete("/items/uploaded-item")
    assert gone.status_code == 200 and gone.json()["deleted_points"] == again["points"]
    assert api.get("/items/uploaded-item").status_code == 404 and api.delete("/items/uploaded-item").status_code == 404
    assert not Path(again["paths"][0]).exists()


@pytest.mark.integration
def test_index_refuses_bad_items_and_stores_nothing(api, served_catalog, demo):
    base, root = served_catalog
    good = sorted(root.rglob("*.jpg"))[0].read_bytes()
    before = api.get("/health").json()["store"]["points"]
    r = api.post("/index", params={"product_id": "mixed"}, files=[("image", ("a.jpg", good, "image/jpeg")),
                                                                   ("image", ("b.jpg", _corrupt_jpeg(demo), "image/jpeg"))])
    assert r.status_code == 400 and "b.jpg" in r.json()["detail"]
    assert api.post("/index", params={"product_id": "a/b"}, files={"image": ("a.jpg", good, "image/jpeg")}).status_code == 400
    assert api.post("/index", content=good, headers={"content-type": "image/jpeg"}).status_code == 400  # raw: no id
    assert api.get("/health").json()["store"]["points"] == before
    assert api.get("/items/mixed").status_code == 404


@pytest.mark.integration
def test_catalog_images_are_served_only_from_the_indexed_root(api, served_catalog, tmp_path):
    base, root = served_catalog
    item = sorted(root.rglob("*.jpg"))[5]
    pid = item.stem
    views = api.get(f"/items/{pid}").json()["views"]
    r = api.get(f"/items/{pid}/image")
    assert r.status_code == 200 and r.content == item.read_bytes() and r.headers["content-type"] == "image/jpeg"
    # a path that is not one of the product's stored views never reaches the disk
    assert api.get(f"/items/{pid}/image", params={"path": "/etc/passwd"}).status_code == 404
    assert api.get(f"/items/{pid}/image", params={"path": str(root / ".." / "qdrant")}).status_code == 404
    assert api.get("/static/..%2F__init__.py").status_code == 404
    # a stored view that became a symlink out of the root is refused
    outside = tmp_path / "secret.jpg"
    shutil.copy(item, outside)
    saved = item.read_bytes()
    item.unlink()
    item.symlink_to(outside)
    try:
        r = api.get(f"/items/{pid}/image", params={"path": views[0]["path"]})
        assert r.status_code == 403 and "outside" in r.json()["detail"]
    finally:
        item.unlink()
        item.write_bytes(saved)


@pytest.mark.integration
def test_dedup_check_finds_the_copy_of_an_uploaded_image(api, served_catalog):
    from client.dedup import dedup

    base, root = served_catalog
    assert api.post("/dedup/check", files={"image": ("x.jpg", b"\xff\xd8\xff" + b"1" * 50, "image/jpeg")}).status_code in (400, 409)
    dedup(root, "phash", store_path=base / "dedup", show_progress=False)
    src = sorted(root.rglob("*.jpg"))[7]
    img = Image.open(src).convert("RGB").resize((300, 300))  # a re-encoded, resized copy
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    r = api.post("/dedup/check", files={"image": ("copy.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 200, r.text
    check = r.json()
    assert check["method"] == "phash" and check["image"] == "copy.jpg"
    assert str(src) in [c["path"] for c in check["copies"]]
    link = next(c["image_url"] for c in check["copies"] if c["path"] == str(src))
    assert api.get(link).content == src.read_bytes()
    assert api.get(link[:-3] + "abc").status_code == 404  # a link the service did not sign
    assert api.post("/dedup/check", params={"method": "nope"}, files={"image": ("c.jpg", buf.getvalue(), "image/jpeg")}).status_code == 400


@pytest.mark.integration
def test_concurrent_searches_over_http_all_answer(api, triton, served_catalog, demo):
    """uvicorn on a loopback port over the same service: 8 searches from 4 threads, the same answer each time."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from client.serve.app import create_app

    data = (demo / "queries" / "scene_3.jpg").read_bytes()
    first = _post(api, data).json()["objects"]
    service = api.app.state.service
    with live_server(create_app(service.settings, service=service)) as url:
        with httpx.Client(base_url=url, timeout=120) as http:
            assert http.get("/health").status_code == 200
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: http.post("/search", files={"image": ("s.jpg", data, "image/jpeg")}), range(8)))
    assert all(a.status_code == 200 and a.json()["objects"] == first for a in answers)
