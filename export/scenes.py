"""Query scenes: 1-3 products pasted on a background, photographed badly.

Each scene records, per object, its box, product id, fine class, category and the transform applied
(scale, rotation, light, blur, noise, JPEG quality, occlusion), so evaluations can be split by it.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from client.imaging import encode_jpeg
from export.products import Product, fit, tight


@dataclass
class SceneObject:
    product_id: str
    fine_class: str
    category: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    transform: dict = field(default_factory=dict)


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    background: str


def procedural_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A cluttered, textured background with no external files: gradient, blobs, lines and noise."""
    w, h = size
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0.3, 1) + np.linspace(0, 1, h)[:, None, None] * rng.uniform(0, 0.7)
    t = np.clip(t, 0, 1)
    arr = c1[None, None] * (1 - t) + c2[None, None] * t
    img = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 14))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.03, 0.25) * max(w, h)
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.ellipse([x - r, y - r, x + r, y + r * rng.uniform(0.3, 1)], fill=col)
        else:
            d.line([x, y, x + rng.uniform(-1, 1) * r * 3, y + rng.uniform(-1, 1) * r * 3], fill=col, width=int(rng.integers(2, 20)))
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1, 6)))
    noise = rng.normal(0, rng.uniform(2, 12), (h, w, 1))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


class Backgrounds:
    """Background photos from a folder (random crops), else procedural ones."""

    def __init__(self, paths: list[Path] | None = None):
        self.paths = list(paths or [])
        self._cache: dict[Path, Image.Image] = {}

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> tuple[Image.Image, str]:
        if not self.paths or rng.random() < 0.25:
            return procedural_background(rng, size), "procedural"
        path = self.paths[int(rng.integers(len(self.paths)))]
        if path not in self._cache:
            with Image.open(path) as im:
                self._cache[path] = im.convert("RGB")
        photo = self._cache[path]
        w, h = size
        scale = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.8)
        big = photo.resize((max(w, round(photo.width * scale)), max(h, round(photo.height * scale))), Image.BILINEAR)
        x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        img = big.crop((x, y, x + w, y + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return img, path.name


def perspective(img: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """A random perspective warp (the object seen from an angle): corners move by up to ``strength`` x side."""
    w, h = img.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    dst = src + rng.uniform(-strength, strength, (4, 2)) * [w, h]
    dst -= dst.min(0)
    out_w, out_h = int(np.ceil(dst[:, 0].max())), int(np.ceil(dst[:, 1].max()))
    # PIL maps output -> input: solve the 8 homography coefficients from dst to src
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y]); a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(a), src.reshape(8))
    return img.transform((max(out_w, 1), max(out_h, 1)), Image.PERSPECTIVE, tuple(coeffs), Image.BICUBIC)


def uneven_light(img: Image.Image, rng: np.random.Generator, low: float = 0.45, high: float = 1.15) -> tuple[Image.Image, float]:
    """``img`` lit unevenly: brightness falls linearly from ``high`` to a random value in [``low``, 0.8] along a
    random direction, with a soft spot of light (a lamp, a window) at a random place. Returns the image and the
    ratio of its darkest to its brightest gain."""
    w, h = img.size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = float(rng.uniform(0, 2 * np.pi))
    t = (x - w / 2) * np.cos(angle) + (y - h / 2) * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)  # 0 .. 1 across the photo
    dark = float(rng.uniform(low, 0.8))
    gain = high - (high - dark) * t
    cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.2, 0.5) * max(w, h)
    gain = gain + 0.25 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    arr = np.asarray(img.convert("RGB"), np.float32) * gain[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), round(float(gain.min() / gain.max()), 2)


def _overlap(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / max(area, 1e-6)


def make_scene(products: list[Product], backgrounds: Backgrounds, rng: np.random.Generator, *,
               size: tuple[int, int] | None = None, n_objects: int | None = None,
               scale_range: tuple[float, float] = (0.22, 0.55), max_rotation: float = 25.0,
               occlusion_p: float = 0.15, perspective_p: float = 0.3, degrade: bool = True,
               uneven_light_p: float = 0.0) -> Scene:
    """Pastes 1-3 of ``products`` (chosen by ``rng`` unless exactly len(products) <= n) on a background.
    ``uneven_light_p``: the share of scenes lit unevenly (``uneven_light``); 0 draws nothing from ``rng``, so
    scenes made without it stay the same."""
    if size is None:
        size = (int(rng.choice([480, 560, 640])), int(rng.choice([400, 480, 560])))
    w, h = size
    bg, bg_name = backgrounds.sample(rng, size)
    n = n_objects or int(rng.integers(1, 4))
    chosen = [products[int(i)] for i in rng.choice(len(products), size=min(n, len(products)), replace=False)]
    objects: list[SceneObject] = []
    for product in chosen:
        for _attempt in range(20):
            rel = rng.uniform(*scale_range)
            side = int(rel * min(w, h))
            obj = fit(product.cutout, side)
            angle = float(rng.uniform(-max_rotation, max_rotation))
            obj = obj.rotate(angle, resample=Image.BICUBIC, expand=True)
            warp = float(rng.uniform(0.05, 0.18)) if rng.random() < perspective_p else 0.0
            if warp:
                obj = perspective(obj, rng, warp)
            light = float(rng.uniform(0.55, 1.25))
            obj = Image.merge("RGBA", (*ImageEnhance.Brightness(obj.convert("RGB")).enhance(light).split(), obj.getchannel("A")))
            if obj.width >= w or obj.height >= h:
                continue
            x, y = int(rng.integers(0, w - obj.width)), int(rng.integers(0, h - obj.height))
            alpha_box = obj.getchannel("A").point(lambda a: 255 if a > 64 else 0).getbbox()
            if alpha_box is None:
                continue
            box = (x + alpha_box[0], y + alpha_box[1], x + alpha_box[2], y + alpha_box[3])
            if any(_overlap(box, o.box) > 0.15 for o in objects):
                continue
            bg.paste(obj, (x, y), obj)
            objects.append(SceneObject(product.product_id, product.fine_class, product.category, tuple(float(v) for v in box),
                                       {"scale": round(rel, 3), "rotation": round(angle, 1), "light": round(light, 2),
                                        **({"perspective": round(warp, 2)} if warp else {})}))
            break
    # occlusion: a grey or coloured bar over part of an object
    for o in objects:
        if rng.random() < occlusion_p:
            x1, y1, x2, y2 = o.box
            frac = rng.uniform(0.15, 0.3)
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            d = ImageDraw.Draw(bg)
            if rng.random() < 0.5:
                d.rectangle([x1, y1, x1 + (x2 - x1) * frac, y2], fill=col)
            else:
                d.rectangle([x1, y2 - (y2 - y1) * frac, x2, y2], fill=col)
            o.transform["occlusion"] = round(frac, 2)
    global_t: dict = {}
    if uneven_light_p and rng.random() < uneven_light_p:
        bg, global_t["uneven_light"] = uneven_light(bg, rng)
    if degrade:
        if rng.random() < 0.35:  # colour cast (white balance) and saturation
            gains = rng.uniform(0.82, 1.18, 3)
            sat = float(rng.uniform(0.5, 1.4))
            arr = np.asarray(ImageEnhance.Color(bg).enhance(sat), dtype=np.float32) * gains
            bg = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            global_t["colour"] = round(float(np.abs(gains - 1).max() + abs(sat - 1)), 2)
        if rng.random() < 0.5:
            c = float(rng.uniform(0.6, 1.3))
            bg = ImageEnhance.Contrast(bg).enhance(c)
            global_t["contrast"] = round(c, 2)
        if rng.random() < 0.4:
            r = float(rng.uniform(0.5, 2.0))
            bg = bg.filter(ImageFilter.GaussianBlur(r))
            global_t["blur"] = round(r, 2)
        if rng.random() < 0.4:
            sigma = float(rng.uniform(3, 12))
            arr = np.asarray(bg, dtype=np.float32) + rng.normal(0, sigma, (h, w, 3))
            bg = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            global_t["noise"] = round(sigma, 1)
        q = int(rng.integers(30, 95))
        bg = Image.open(io.BytesIO(encode_jpeg(bg, q))).convert("RGB")
        global_t["jpeg"] = q
    for o in objects:
        o.transform.update(global_t)
    return Scene(bg, objects, bg_name)


# --- more kinds of object, for the detector only ----------------------------------------------------
# A detector trained on ~120 real cutouts learns them: on scenes of held-out background photos it boxed
# training cutouts 0.86 of the time and held-out ones 0.72 (IoU >= 0.5; tight, IoU >= 0.7: 0.72 vs 0.44).
# Detector-only scenes therefore show varied objects: a product mirrored, re-coloured or stretched, or a
# pseudo-object (a patch of a background photo in a random blob shape): "a thing with an edge", not these
# particular things. The crops for the classifier and embedder never come from these scenes (a re-coloured
# product is not that product).

def recolour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``img`` (RGBA) with its hue turned by a random angle and its saturation scaled by 0.6-1.4."""
    hsv = np.asarray(img.convert("RGB").convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(0, 256))) % 256
    rgb = ImageEnhance.Color(Image.fromarray(hsv, "HSV").convert("RGB")).enhance(float(rng.uniform(0.6, 1.4)))
    return Image.merge("RGBA", (*rgb.split(), img.getchannel("A")))


def vary(product: Product, rng: np.random.Generator) -> Product:
    """The product mirrored, re-coloured and stretched (aspect x e^±0.3), each with probability 1/2."""
    c = product.cutout
    if rng.random() < 0.5:
        c = c.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        c = recolour(c, rng)
    if rng.random() < 0.5:
        f = float(np.exp(rng.uniform(-0.3, 0.3)))
        c = c.resize((max(1, round(c.width * f)), max(1, round(c.height / f))), Image.BICUBIC)
    return Product(product.product_id, product.fine_class, product.category, c)


def blob_mask(rng: np.random.Generator, side: int) -> Image.Image:
    """1-4 ellipses or random star-shaped polygons, soft-edged: the outline of a pseudo-object."""
    m = Image.new("L", (side, side), 0)
    d = ImageDraw.Draw(m)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0.25, 0.75, 2) * side
        rx, ry = rng.uniform(0.12, 0.35, 2) * side
        if rng.random() < 0.5:
            d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        else:
            k = int(rng.integers(3, 8))
            angles, radii = np.sort(rng.uniform(0, 2 * np.pi, k)), rng.uniform(0.4, 1.0, k)
            d.polygon([(cx + 1.4 * rx * r * np.cos(t), cy + 1.4 * ry * r * np.sin(t)) for t, r in zip(angles, radii)], fill=255)
    return m.filter(ImageFilter.GaussianBlur(1.0))


def pseudo_object(backgrounds: Backgrounds, rng: np.random.Generator, side: int = 200) -> Product:
    """A patch of a background (about 1/5 to 4/5 of its short side; half the time re-coloured) cut out in a random
    blob shape."""
    big = int(side / rng.uniform(0.3, 0.8))
    view, _ = backgrounds.sample(rng, (big, big))
    x, y = (int(v) for v in rng.integers(0, big - side + 1, 2))
    cut = view.crop((x, y, x + side, y + side)).convert("RGBA")
    if rng.random() < 0.5:
        cut = recolour(cut, rng)
    cut.putalpha(blob_mask(rng, side))
    return Product("pseudo", "pseudo", "pseudo", tight(cut))


class PlainBackground:
    """A uniform white-to-light-grey (sometimes faintly tinted) background: a product photographed on a table or
    a shop's white, where the detector must box a large object whose edge is the only cue."""

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> tuple[Image.Image, str]:
        colour = np.clip(rng.uniform(200, 255) + rng.normal(0, 6, 3), 0, 255).astype(np.uint8)
        return Image.new("RGB", size, tuple(int(c) for c in colour)), "plain"


SMALL_SCENE_P = 0.4  # detector-only scenes whose objects are small ...
SMALL_RANGE = (0.08, 0.3)  # ... this share of the short side (the query scenes of export.evaluate start at 0.22)


def detector_scene(products: list[Product], backgrounds: Backgrounds, rng: np.random.Generator,
                   pseudo_p: float = 0.3, plain_p: float = 0.2, small_p: float = SMALL_SCENE_P) -> Scene:
    """A training scene for the detector: 1-3 objects, each a pseudo-object with probability ``pseudo_p``,
    else one of ``products`` varied (``vary``); objects up to 0.8 of the short side (the query scenes stop at 0.55,
    but a photo of one object is often mostly that object); with probability ``plain_p`` on a plain background.
    With probability ``small_p`` the scene's objects are small instead (SMALL_RANGE): photographed products are
    often far off, and a detector that never saw an object under 0.22 of the side boxed held-out products of
    0.12-0.15 half the time (docs/measurements.md, "Small objects for the detector")."""
    n = int(rng.integers(1, 4))
    chosen = [products[int(i)] for i in rng.choice(len(products), size=min(n, len(products)), replace=False)]
    objects = [pseudo_object(backgrounds, rng) if rng.random() < pseudo_p else vary(p, rng) for p in chosen]
    where = PlainBackground() if rng.random() < plain_p else backgrounds
    scale_range = SMALL_RANGE if small_p and rng.random() < small_p else (0.22, 0.8)
    return make_scene(objects, where, rng, n_objects=len(objects), scale_range=scale_range)
