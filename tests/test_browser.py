"""The page and the --html reports in a real headless browser: Debian's chromium (installed by deploy/setup.sh)
driven by Playwright's Python client; no browser is downloaded. Skipped, with the reason, where chromium cannot
run. The page runs against the real stack (tritonserver, the embedded store with the demo catalog)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.test_serve import _clip, live_server, make_settings, served_catalog  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
BENCH = ROOT / "data" / "bench"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: deploy/setup.sh installs Debian's chromium when run as root "
                    "(apt-get install -y chromium)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is missing (pip install -e '.[dev]')")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        except Error as exc:
            pytest.skip(f"chromium does not start here: {exc.message.splitlines()[0]}")
        yield b
        b.close()


@pytest.fixture
def page(browser):
    p = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    yield p
    p.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# the self-contained reports (no server) ----------------------------------------------------------------

def _report(tmp_path):
    thumbs = []
    for i, colour in enumerate(["red", "green", "blue"]):
        f = tmp_path / f"p{i}.jpg"
        Image.new("RGB", (120, 90), colour).save(f)
        thumbs.append(str(f))
    return {"image": "shop <photo>.jpg", "objects": [
        {"box": [20, 30, 200, 160], "score": 0.91, "category": "mugs", "fine_class": "mug", "whole_image": False, "valid": True,
         "searched_in": "mugs", "results": [{"product_id": "mug-<1>", "path": thumbs[0], "score": 0.83}, {"product_id": "mug-2", "path": thumbs[1], "score": 0.7}]},
        {"box": [250, 40, 380, 220], "score": 0.22, "category": "plants", "fine_class": "cactus", "whole_image": False,
         "valid": False, "searched_in": None, "results": [{"product_id": "cactus-9", "path": thumbs[2], "score": 0.61}]}]}


def test_search_report_draws_boxes_and_result_grids(page, tmp_path):
    from client import gallery

    report = _report(tmp_path)
    out = gallery.write_report(tmp_path / "report.html", report, {"query": Image.new("RGB", (400, 300), "white")})
    page.goto(out.as_uri())
    page.wait_for_selector(".g-box")
    assert page.locator("section.g-object").count() == 2 and page.locator(".g-box").count() == 2
    assert page.locator(".g-card").count() == 3
    assert page.inner_text("h1") == "shop <photo>.jpg"  # text, not markup
    assert "mug-<1>" in page.inner_text("#gallery") and "below the detector threshold" in page.inner_text("#gallery")
    titles = page.locator("section.g-object").all_inner_texts()  # where each object was searched (client/category.py)
    assert "searched in mugs" in titles[0] and "searched in the whole catalog" in titles[1]
    assert page.locator(".g-card img").evaluate_all("imgs => imgs.every(i => i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)


def test_video_report_shows_each_object_on_its_best_frame(page, tmp_path):
    from client import gallery

    report = _report(tmp_path)
    report["frames_used"], report["frame_count"] = [0, 5, 10], 40
    report["objects"][0].update(frames=[0, 5], results=[dict(r, votes=1.5) for r in report["objects"][0]["results"]])
    report["objects"][1].update(frames=[10])
    frames = {f"frame:{i}": Image.new("RGB", (400, 300), c) for i, c in ((0, "grey"), (10, "yellow"))}
    out = gallery.write_report(tmp_path / "video.html", report, frames)
    page.goto(out.as_uri())
    page.wait_for_selector(".g-box")
    assert page.locator("section.g-object .g-query").count() == 2  # one frame per object, each with its box
    text = page.inner_text("#gallery")
    assert "votes 1.50" in text and "seen in 2 frame(s): 0, 5" in text and "40 frame(s) in the clip" in text


def test_dedup_report_draws_the_groups(page, tmp_path):
    from client import gallery

    paths = []
    for i in range(3):
        f = tmp_path / f"d{i}.jpg"
        Image.new("RGB", (60, 60), (i * 80, 0, 0)).save(f)
        paths.append(str(f))
    result = {"method": "phash", "threshold": 8, "images": 5, "groups": [
        {"images": paths[:2], "count": 2, "keep": paths[0], "exact": False}, {"images": [paths[2], paths[2]], "count": 2,
                                                                             "keep": paths[2], "exact": True}]}
    out = gallery.write_dedup_report(tmp_path / "dups.html", result)
    page.goto(out.as_uri())
    page.wait_for_selector("section.g-object")
    assert page.locator("section.g-object").count() == 2 and page.locator(".g-card.g-keep").count() == 2
    assert "2 group(s) of copies among 5 images" in page.inner_text("h1")


# the page against the real stack ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(triton, served_catalog):  # noqa: F811 - the imported fixture
    from client.serve.app import create_app

    with live_server(create_app(make_settings(triton, served_catalog))) as url:
        yield url


@pytest.fixture(scope="module")
def truth(demo):
    return json.loads((demo / "queries" / "truth.json").read_text())


def _open(page, site):
    page.goto(site + "/")
    page.wait_for_function("document.getElementById('health').textContent.startsWith('ready')", timeout=60_000)


@pytest.mark.integration
def test_page_shows_the_products_of_an_uploaded_scene(page, site, demo, truth, tmp_path):
    _open(page, site)
    page.set_input_files("#file", str(demo / "queries" / "scene_0.jpg"))
    page.wait_for_selector("section.g-object .g-card", timeout=60_000)
    page.wait_for_function("[...document.querySelectorAll('.g-box')].length > 0")
    assert not page.is_visible("#video") and not page.is_visible("#error")  # a photo: no player, no error
    shown = page.locator(".g-card").evaluate_all("cards => cards.map(c => c.dataset.productId)")
    expected = [o["product_id"] for o in truth["scene_0.jpg"]["objects"]]
    assert sum(p in shown for p in expected) >= 2, (expected, shown)  # a floor, as the API test's for the same scenes
    page.wait_for_function("[...document.querySelectorAll('.g-card img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=30_000)  # every thumbnail came from /items/<id>/image
    href = page.locator(".g-card a").first.get_attribute("href")
    assert href.startswith("/items/") and page.request.get(site + href).status == 200  # links to its catalog image
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    BENCH.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, BENCH / "serve_page.png")


@pytest.mark.integration
def test_category_filter_switch_searches_again(page, site, demo):
    _open(page, site)
    page.set_input_files("#file", str(demo / "queries" / "scene_1.jpg"))
    page.wait_for_selector("section.g-object .g-card", timeout=60_000)
    options = page.locator("#category option").evaluate_all("os => os.map(o => o.value)")
    some = [o for o in options if o and o != "__off__"][0]
    page.select_option("#category", some)
    page.wait_for_function(f"document.querySelector('.g-meta').textContent.includes('category filter: {some}')", timeout=60_000)
    paths = page.locator(".g-card").evaluate_all("cards => cards.map(c => c.title)")
    assert paths and all(Path(p).parent.name == some for p in paths)  # the demo catalog's folders are its categories


@pytest.mark.integration
def test_page_shows_a_video_with_each_product_on_its_best_frame(page, site, demo, tmp_path):
    from client.serve.service import Service

    if Service.video_module() is None:
        pytest.skip("client.video (video search) is not available")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(_clip(demo))
    _open(page, site)
    page.set_input_files("#file", str(clip))
    page.wait_for_selector("section.g-object .g-card", timeout=120_000)
    assert page.is_visible("#video")  # the clip itself, playable
    page.wait_for_function("[...document.querySelectorAll('section.g-object .g-query img')].some(i => i.naturalWidth > 0)")
    assert "seen in" in page.inner_text("section.g-object h2 >> nth=0") and "votes" in page.inner_text("#results")
    page.screenshot(path=str(tmp_path / "video.png"), full_page=True)


@pytest.mark.integration
def test_broken_upload_shows_a_clear_message(page, site, tmp_path):
    _open(page, site)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    page.set_input_files("#file", str(broken))
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    message = page.inner_text("#error")
    assert "broken.jpg" in message and "HTTP 400" in message and "cannot" in message.lower()
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    page.set_input_files("#file", str(notes))
    page.wait_for_function("document.getElementById('error').textContent.includes('notes.txt')", timeout=60_000)
    assert "HTTP 415" in page.inner_text("#error")
    assert page.locator("section.g-object").count() == 0


@pytest.mark.integration
def test_find_duplicates_of_the_uploaded_photo(page, site, served_catalog):  # noqa: F811
    from client.dedup import dedup

    base, root = served_catalog
    dedup(root, "phash", store_path=base / "dedup", show_progress=False)  # what `python -m client.dedup ROOT` does
    src = sorted(root.rglob("*.jpg"))[2]
    _open(page, site)
    page.set_input_files("#file", str(src))
    page.wait_for_selector("section.g-object .g-card", timeout=60_000)
    page.click("#dedup")
    page.wait_for_selector("#dups .g-card", timeout=60_000)
    assert str(src) in page.locator("#dups .g-card").evaluate_all("cards => cards.map(c => c.dataset.path)")
    assert "copy(ies) of" in page.inner_text("#dups h2")
