"""A self-contained HTML page of search results: the query with its boxes, and per object the
top-k catalog thumbnails with ids and scores (images embedded, so the file can be mailed around)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from PIL import Image, ImageDraw

from client.imaging import encode_jpeg

COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990"]


def _data_uri(img: Image.Image, side: int) -> str:
    img = img.copy()
    img.thumbnail((side, side))
    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(img, 85)).decode()


def _thumb(path: str, side: int) -> str:
    try:
        with Image.open(path) as im:
            return _data_uri(im, side)
    except OSError:
        return ""


def render(query: Image.Image, name: str, objects: list, top_k_side: int = 140) -> str:
    """``objects``: client.search.ObjectResults in display order."""
    shown = query.convert("RGB").copy()
    draw = ImageDraw.Draw(shown)
    width = max(2, max(shown.size) // 250)
    for i, o in enumerate(objects):
        if not o.whole_image:
            draw.rectangle(o.box, outline=COLOURS[i % len(COLOURS)], width=width)
            draw.text((o.box[0] + 4, o.box[1] + 2), str(i + 1), fill=COLOURS[i % len(COLOURS)])
    rows = []
    for i, o in enumerate(objects):
        colour = COLOURS[i % len(COLOURS)]
        what = "whole image" if o.whole_image else f"score {o.score:.2f}" + ("" if o.valid else " (below the detector threshold)")
        cells = "".join(
            f'<figure><img src="{_thumb(r["path"], top_k_side)}" alt="{html.escape(r["product_id"])}">'
            f'<figcaption>{k}. {html.escape(r["product_id"])}<br>{r["score"]:.3f}</figcaption></figure>'
            for k, r in enumerate(o.results, 1)) or "<p>no catalog items in this category</p>"
        rows.append(f'<section style="border-left:6px solid {colour}"><h2>object {i + 1}: {html.escape(o.category)} '
                    f'({html.escape(o.fine_class)}), {what}</h2><div class="row">{cells}</div></section>')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>search: {html.escape(name)}</title><style>
body{{font-family:sans-serif;margin:1em}} .row{{display:flex;gap:8px;flex-wrap:wrap}} figure{{margin:0;width:150px;font-size:12px}}
section{{padding-left:8px;margin:12px 0}} h2{{font-size:15px}} img{{max-width:100%}}</style></head><body>
<h1>{html.escape(name)}</h1><img src="{_data_uri(shown, 800)}" style="max-width:800px">{''.join(rows)}</body></html>"""


def write(path: Path, query: Image.Image, name: str, objects: list) -> Path:
    path.write_text(render(query, name, objects))
    return path
