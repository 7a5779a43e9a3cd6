"""Self-contained HTML reports of search and dedup results, drawn by the same renderer as the web page.

The page of ``python -m client.serve`` and these files share one renderer: ``client/serve/static/gallery.js``
and ``gallery.css``. A report inlines both and feeds them the ``--json`` dict of the command, with every
picture embedded as a data URI (the query or the chosen video frames, and a thumbnail per result), so the
file can be mailed around and opened anywhere. Names from results only ever reach the page as JSON data
rendered with ``textContent``; the JSON is escaped so that no text can close its ``<script>`` element.

    write_report(path, report, {"query": photo})           # client.search --json dict of a photo
    write_report(path, report, {"frame:12": im, ...})      # ... of a video (objects with "frames")
    write_dedup_report(path, result.to_json())              # client.dedup --json dict
"""
from __future__ import annotations

import base64
import json
from importlib import resources
from pathlib import Path
from typing import Iterable

from PIL import Image

from client.imaging import encode_jpeg

QUERY_SIDE = 1024  # longest side of an embedded query photo or frame
THUMB_SIDE = 160  # longest side of an embedded result thumbnail


def asset(name: str) -> str:
    """One file of the shared renderer (client/serve/static/), as text."""
    return (resources.files("client.serve") / "static" / name).read_text(encoding="utf-8")


def data_uri(img: Image.Image, side: int) -> str:
    img = img.convert("RGB")
    img.thumbnail((side, side))
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(img, 85)).decode()


def _thumb(path: str, side: int = THUMB_SIDE) -> str:
    """A data URI of the image file at ``path`` ("" when it cannot be read: the card says so)."""
    try:
        with Image.open(path) as im:
            return data_uri(im, side)
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""


def _file_link(path: str) -> str:
    if not path:
        return ""
    try:
        return Path(path).resolve().as_uri()
    except (OSError, ValueError):
        return ""


def script_json(value) -> str:
    """JSON that is safe inside a <script> element (no "</script>", no "<!--")."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _thumbs(paths: Iterable[str], side: int) -> tuple[dict[str, str], dict[str, str]]:
    thumbs, links = {}, {}
    for p in paths:
        if p and p not in thumbs:
            thumbs[p] = _thumb(p, side)
            links[p] = _file_link(p)
    return thumbs, links


def render_html(kind: str, report: dict, *, images: dict[str, str] | None = None, thumbs: dict[str, str] | None = None,
                links: dict[str, str] | None = None, title: str = "", sizes: dict[str, list[int]] | None = None) -> str:
    """A page that draws ``report`` (kind "search" or "dedup") with the shared renderer; ``images`` (key -> URL),
    ``thumbs`` and ``links`` (result path -> URL) are what it shows and links."""
    if kind not in ("search", "dedup"):
        raise ValueError(f"unknown report kind {kind!r}; expected 'search' or 'dedup'")
    data = {"kind": kind, "report": report, "images": images or {}, "thumbs": thumbs or {}, "links": links or {},
            "sizes": sizes or {}}  # key -> [w, h] of the original picture (boxes are in its pixels; images may be shrunk)
    title = title or (report.get("image") if kind == "search" else "duplicates") or kind
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_escape(str(title))}</title>
<style>{asset("gallery.css")}</style></head>
<body><main id="gallery"><p class="g-meta">This report is drawn by JavaScript embedded in the file.</p></main>
<script type="application/json" id="g-data">{script_json(data)}</script>
<script>{asset("gallery.js")}</script>
<script>
(function () {{
  const d = JSON.parse(document.getElementById("g-data").textContent);
  const root = document.getElementById("gallery");
  const byPath = (m) => (p) => m[p] || null;
  if (d.kind === "dedup") Gallery.renderDedup(root, d.report, {{ thumb: byPath(d.thumbs), link: byPath(d.links) }});
  else Gallery.renderSearch(root, d.report, {{ image: (k) => d.images[k] || null, size: (k) => d.sizes[k] || null,
    thumb: (r, i, k) => d.thumbs[i + "/" + k] || null, link: (r, i, k) => d.links[i + "/" + k] || null }});
}})();
</script></body></html>
"""


def embedded(page: str) -> dict:
    """What a report page was given: {"kind", "report", "images", "thumbs", "links"} (the inverse of render_html)."""
    try:
        return json.loads(page.split('<script type="application/json" id="g-data">', 1)[1].split("</script>", 1)[0])
    except (IndexError, ValueError) as exc:
        raise ValueError("not a report page written by client.gallery") from exc


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def search_report_html(report: dict, images: dict[str, Image.Image], *, thumb_side: int = THUMB_SIDE) -> str:
    """``report``: the ``client.search --json`` dict; ``images``: "query" or "frame:<index>" -> picture."""
    for key in images:
        if key != "query" and not key.startswith("frame:"):
            raise ValueError(f"image key {key!r}: expected 'query' or 'frame:<index>'")
    thumbs, links = {}, {}  # per result ("<object>/<rank>"): the same product may answer several objects
    for i, o in enumerate(report.get("objects", [])):
        for k, r in enumerate(o.get("results", [])):
            thumbs[f"{i}/{k}"], links[f"{i}/{k}"] = _thumb(r.get("path", ""), thumb_side), _file_link(r.get("path", ""))
    return render_html("search", report, images={k: data_uri(im, QUERY_SIDE) for k, im in images.items()},
                       thumbs=thumbs, links=links, sizes={k: list(im.size) for k, im in images.items()})


def write_report(path: str | Path, report: dict, images: dict[str, Image.Image]) -> Path:
    """Writes the self-contained page of one search (a photo or a video) and returns its path."""
    path = Path(path)
    path.write_text(search_report_html(report, images), encoding="utf-8")
    return path


def dedup_report_html(result: dict, *, thumb_side: int = THUMB_SIDE) -> str:
    """``result``: the ``client.dedup --json`` dict (DedupResult.to_json())."""
    thumbs, links = _thumbs((p for g in result.get("groups", []) for p in g["images"]), thumb_side)
    return render_html("dedup", result, thumbs=thumbs, links=links, title="duplicates")


def write_dedup_report(path: str | Path, result: dict) -> Path:
    path = Path(path)
    path.write_text(dedup_report_html(result), encoding="utf-8")
    return path


def write(path: Path, query: Image.Image, name: str, objects: list) -> Path:
    """The page of a photo's search (``objects``: client.search.ObjectResults): ``write_report`` of its --json dict."""
    return write_report(path, {"image": name, "objects": [o.to_json() for o in objects]}, {"query": query})
