"""Products: procedurally drawn ones (no external files needed) and real RGBA cutouts from a folder.

A product is an RGBA cutout plus its identity (product id, fine class, merged category). Pasting the
cutout on white gives its catalog image; pasting it on a photo gives a query scene (export/scenes.py).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CUTOUT_SIDE = 256

# fine class -> merged category for the drawn products
SYNTHETIC_CLASSES = {
    "watch_round": "watches",
    "watch_square": "watches",
    "bottle": "drinks",
    "can": "drinks",
    "tshirt": "apparel",
    "shoe": "apparel",
    "book": "media",
    "disc": "media",
}


@dataclass
class Product:
    product_id: str
    fine_class: str
    category: str
    cutout: Image.Image  # RGBA, tight around the object

    def catalog_image(self, side: int = 320, margin: float = 0.12) -> Image.Image:
        """The product centred on white, as a shop would photograph it."""
        return self.catalog_image_and_box(side, margin)[0]

    def catalog_image_and_box(self, side: int = 320, margin: float = 0.12) -> tuple[Image.Image, tuple[float, float, float, float]]:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        obj = fit(self.cutout, int(side * (1 - 2 * margin)))
        x, y = (side - obj.width) // 2, (side - obj.height) // 2
        canvas.paste(obj, (x, y), obj)
        return canvas, (float(x), float(y), float(x + obj.width), float(y + obj.height))


def fit(img: Image.Image, side: int) -> Image.Image:
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.BICUBIC)


def tight(img: Image.Image) -> Image.Image:
    bbox = img.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox()
    if bbox is None:
        raise ValueError("cutout has an empty alpha channel")
    return img.crop(bbox)


# --- drawing --------------------------------------------------------------------------------------

def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    h = rng.random()
    s = rng.uniform(0.35, 1.0)
    v = rng.uniform(0.25, 0.95)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _pattern(rng: np.random.Generator, side: int) -> Image.Image:
    """A random surface: plain, stripes, dots, checks or a gradient in 2-3 colours."""
    c1, c2, c3 = _colour(rng), _colour(rng), _colour(rng)
    kind = rng.integers(0, 5)
    img = Image.new("RGB", (side, side), c1)
    d = ImageDraw.Draw(img)
    if kind == 1:  # stripes
        w = int(rng.integers(6, 28))
        angle = rng.uniform(0, math.pi)
        big = Image.new("RGB", (side * 2, side * 2), c1)
        bd = ImageDraw.Draw(big)
        for x in range(0, side * 2, 2 * w):
            bd.rectangle([x, 0, x + w - 1, side * 2], fill=c2)
        big = big.rotate(math.degrees(angle))
        img = big.crop((side // 2, side // 2, side // 2 + side, side // 2 + side))
    elif kind == 2:  # dots
        r = int(rng.integers(4, 14))
        step = int(r * rng.uniform(2.5, 4))
        for y in range(0, side, step):
            for x in range((y // step) % 2 * step // 2, side, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=c2)
    elif kind == 3:  # checks
        s = int(rng.integers(10, 40))
        for y in range(0, side, s):
            for x in range(0, side, s):
                if (x // s + y // s) % 2:
                    d.rectangle([x, y, x + s - 1, y + s - 1], fill=c2)
    elif kind == 4:  # gradient
        t = np.linspace(0, 1, side)[None, :, None]
        arr = np.array(c1)[None, None] * (1 - t) + np.array(c2)[None, None] * t
        img = Image.fromarray(np.repeat(arr, side, axis=0).astype(np.uint8))
    # a "logo": a small shape in the third colour makes products of one class distinct
    d = ImageDraw.Draw(img)
    cx, cy, r = side * rng.uniform(0.35, 0.65), side * rng.uniform(0.35, 0.65), side * rng.uniform(0.06, 0.14)
    if rng.random() < 0.5:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c3)
    else:
        d.regular_polygon((cx, cy, r), int(rng.integers(3, 7)), rotation=rng.uniform(0, 90), fill=c3)
    return img


def _fill(canvas: Image.Image, mask: Image.Image, surface: Image.Image) -> None:
    canvas.paste(surface, (0, 0), mask)


def _mask(side: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    m = Image.new("L", (side, side), 0)
    return m, ImageDraw.Draw(m)


def draw_product(fine_class: str, rng: np.random.Generator, side: int = CUTOUT_SIDE) -> Image.Image:
    """Draws one product of ``fine_class`` as an RGBA cutout; ``rng`` decides its look."""
    if fine_class not in SYNTHETIC_CLASSES:
        raise ValueError(f"unknown synthetic class {fine_class!r}; known: {sorted(SYNTHETIC_CLASSES)}")
    s = side
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    surface = _pattern(rng, s)
    accent = _colour(rng)
    d = ImageDraw.Draw(img)
    if fine_class in ("watch_round", "watch_square"):
        strap_w = s * rng.uniform(0.22, 0.34)
        d.rounded_rectangle([s / 2 - strap_w / 2, 0, s / 2 + strap_w / 2, s - 1], radius=int(strap_w / 4), fill=accent + (255,))
        r = s * rng.uniform(0.27, 0.36)
        m, md = _mask(s)
        box = [s / 2 - r, s / 2 - r, s / 2 + r, s / 2 + r]
        metal = tuple(int(v) for v in rng.integers(120, 230, 3))
        if fine_class == "watch_round":
            d.ellipse(box, fill=metal + (255,))
            md.ellipse([box[0] + 8, box[1] + 8, box[2] - 8, box[3] - 8], fill=255)
        else:
            d.rounded_rectangle(box, radius=int(r * 0.25), fill=metal + (255,))
            md.rounded_rectangle([box[0] + 8, box[1] + 8, box[2] - 8, box[3] - 8], radius=int(r * 0.2), fill=255)
        _fill(img, m, surface)
        d = ImageDraw.Draw(img)
        for k in range(12):
            a = k * math.pi / 6
            d.line([s / 2 + (r - 14) * math.cos(a), s / 2 + (r - 14) * math.sin(a),
                    s / 2 + (r - 24) * math.cos(a), s / 2 + (r - 24) * math.sin(a)], fill=(20, 20, 20, 255), width=3)
        for length, width in ((0.5, 6), (0.8, 3)):
            a = rng.uniform(0, 2 * math.pi)
            d.line([s / 2, s / 2, s / 2 + r * length * math.cos(a), s / 2 + r * length * math.sin(a)], fill=(10, 10, 10, 255), width=width)
    elif fine_class == "bottle":
        bw = s * rng.uniform(0.32, 0.45)
        nw = bw * rng.uniform(0.3, 0.45)
        shoulder = s * rng.uniform(0.3, 0.42)
        m, md = _mask(s)
        md.rounded_rectangle([s / 2 - bw / 2, shoulder, s / 2 + bw / 2, s - 2], radius=int(bw / 5), fill=255)
        md.polygon([(s / 2 - bw / 2, shoulder + 10), (s / 2 - nw / 2, s * 0.14), (s / 2 + nw / 2, s * 0.14), (s / 2 + bw / 2, shoulder + 10)], fill=255)
        glass = _colour(rng)
        img.paste(Image.new("RGBA", (s, s), glass + (255,)), (0, 0), m)
        d.rectangle([s / 2 - nw / 2 - 2, 2, s / 2 + nw / 2 + 2, s * 0.15], fill=accent + (255,))
        label = Image.new("L", (s, s), 0)
        ImageDraw.Draw(label).rectangle([s / 2 - bw / 2, shoulder + s * 0.12, s / 2 + bw / 2, s * 0.82], fill=255)
        _fill(img, label, surface)
    elif fine_class == "can":
        cw = s * rng.uniform(0.45, 0.6)
        top, bottom = s * 0.1, s * 0.92
        eh = cw * 0.18
        m, md = _mask(s)
        md.rectangle([s / 2 - cw / 2, top + eh / 2, s / 2 + cw / 2, bottom - eh / 2], fill=255)
        md.ellipse([s / 2 - cw / 2, bottom - eh, s / 2 + cw / 2, bottom], fill=255)
        _fill(img, m, surface)
        d.ellipse([s / 2 - cw / 2, top, s / 2 + cw / 2, top + eh], fill=(200, 200, 205, 255), outline=(120, 120, 120, 255), width=2)
    elif fine_class == "tshirt":
        w = s * rng.uniform(0.5, 0.62)
        pts = [(s / 2 - w / 2, s * 0.2), (s / 2 - w * 0.15, s * 0.12), (s / 2 + w * 0.15, s * 0.12), (s / 2 + w / 2, s * 0.2),
               (s * 0.98, s * 0.38), (s / 2 + w * 0.62, s * 0.48), (s / 2 + w / 2, s * 0.4), (s / 2 + w / 2, s * 0.92),
               (s / 2 - w / 2, s * 0.92), (s / 2 - w / 2, s * 0.4), (s / 2 - w * 0.62, s * 0.48), (s * 0.02, s * 0.38)]
        m, md = _mask(s)
        md.polygon(pts, fill=255)
        _fill(img, m, surface)
        d.chord([s / 2 - w * 0.15, s * 0.07, s / 2 + w * 0.15, s * 0.2], 0, 180, fill=accent + (255,))
    elif fine_class == "shoe":
        h = s * rng.uniform(0.3, 0.42)
        y0 = s * 0.72 - h
        m, md = _mask(s)
        md.polygon([(s * 0.06, s * 0.72), (s * 0.08, y0 + h * 0.2), (s * 0.38, y0), (s * 0.5, y0 + h * 0.45),
                    (s * 0.86, y0 + h * 0.6), (s * 0.96, s * 0.72)], fill=255)
        _fill(img, m, surface)
        d.rectangle([s * 0.05, s * 0.72, s * 0.97, s * 0.8], fill=accent + (255,))
        for k in range(3):
            x = s * (0.3 + 0.06 * k)
            d.line([x, y0 + h * 0.15 + k * 6, x + s * 0.08, y0 + h * 0.25 + k * 6], fill=(245, 245, 245, 255), width=3)
    elif fine_class == "book":
        bw, bh = s * rng.uniform(0.5, 0.7), s * rng.uniform(0.75, 0.95)
        x0, y0 = (s - bw) / 2, (s - bh) / 2
        m, md = _mask(s)
        md.rectangle([x0, y0, x0 + bw, y0 + bh], fill=255)
        _fill(img, m, surface)
        d.rectangle([x0, y0, x0 + bw * 0.08, y0 + bh], fill=accent + (255,))
        for k in range(int(rng.integers(1, 4))):
            y = y0 + bh * (0.12 + 0.08 * k)
            d.rectangle([x0 + bw * 0.2, y, x0 + bw * rng.uniform(0.5, 0.9), y + bh * 0.04], fill=(250, 250, 250, 255))
    elif fine_class == "disc":
        r = s * 0.47
        m, md = _mask(s)
        md.ellipse([s / 2 - r, s / 2 - r, s / 2 + r, s / 2 + r], fill=255)
        _fill(img, m, surface)
        d.ellipse([s / 2 - r * 0.3, s / 2 - r * 0.3, s / 2 + r * 0.3, s / 2 + r * 0.3], fill=accent + (255,))
        d.ellipse([s / 2 - r * 0.08, s / 2 - r * 0.08, s / 2 + r * 0.08, s / 2 + r * 0.08], fill=(0, 0, 0, 0))
    # soft edge like a real cutout
    a = img.getchannel("A").filter(ImageFilter.GaussianBlur(0.8))
    img.putalpha(a)
    return tight(img)


def synthetic_products(per_class: int, seed: int = 0, prefix: str = "") -> list[Product]:
    """``per_class`` drawn products of every synthetic fine class, deterministic by seed."""
    rng = np.random.default_rng(seed)
    products = []
    for fine, category in SYNTHETIC_CLASSES.items():
        for i in range(per_class):
            products.append(Product(f"{prefix}{fine}_{i:03d}", fine, category, draw_product(fine, rng)))
    return products


def product_split(product_id: str) -> str:
    """``test`` (20%: never used in training, only by export.evaluate) or ``train``, by a hash of the
    product id, so the split is stable across runs, profiles and machines."""
    h = int(hashlib.sha256(f"product:{product_id}".encode()).hexdigest(), 16) % 5
    return "test" if h == 0 else "train"


def cutout_identity(path: Path) -> tuple[str, str, str]:
    """(product id, fine class, category) from a cutout's file name.

    Names like ``source__animals-mammals-cats__tabby.png`` (the photoset's convention) give fine class
    ``animals-mammals`` and category ``animals``; other names take the parent folder as the fine class
    and as the category.
    """
    parts = path.stem.split("__")
    if len(parts) >= 3:
        group = parts[1].split("-")
        return path.stem, "-".join(group[:2]), group[0]
    return path.stem, path.parent.name, path.parent.name


def load_cutouts(folder: Path, min_per_category: int = 3) -> tuple[list[Product], list[str]]:
    """Every RGBA image in ``folder`` as a product; returns (products, errors).

    Categories with fewer than ``min_per_category`` products are merged into ``other`` so that the
    classifier has examples of each. Unreadable files and files without transparency are reported
    in ``errors`` (``"path: reason"``) and skipped.
    """
    products, errors = [], []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in (".png", ".webp", ".tif", ".tiff"):
            continue
        try:
            with Image.open(path) as im:
                im.load()
                if "A" not in im.getbands() and im.mode != "P":
                    raise ValueError("no alpha channel (a cutout needs a transparent background)")
                rgba = im.convert("RGBA")
            cut = fit(tight(rgba), CUTOUT_SIDE)
        except Exception as exc:  # noqa: BLE001 - any decoder error is reported per file
            errors.append(f"{path}: {exc}")
            continue
        pid, fine, cat = cutout_identity(path)
        products.append(Product(pid, fine, cat, cut))
    counts: dict[str, int] = {}
    for p in products:
        counts[p.category] = counts.get(p.category, 0) + 1
    for p in products:
        if counts[p.category] < min_per_category:
            p.category = "other"
            p.fine_class = "other"
    return products, errors
