"""python -m export.video_clips OUT [--clips N]: generated live-shopping clips with their truth (tests, benchmark).

One or two products (export/products.py cutouts) move over a background photo (export/scenes.py
Backgrounds) while the camera pans and shakes, the light drifts in level and colour, each product turns and
breathes in scale; a share of the frames is badly degraded: blur, occlusion (a hand-coloured blob over
most of a product), darkness or heavy JPEG. Written as H.264 MP4 with PyAV (keyframe every 2 s, as
streaming encoders do). ``truth`` records each product's box per frame and each degraded frame's kind.

By default the products are the held-out ones of the models in model_repository/ (``product_split``
"test": never trained on, picked as ``export.evaluate`` picks them), on held-out background photos.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from tqdm import tqdm

from export.products import Product, fit
from export.scenes import Backgrounds

DEGRADATIONS = ("blur", "occlusion", "dark", "jpeg")


@dataclass
class ClipObject:
    product_id: str
    category: str
    fine_class: str
    boxes: list[list[float]]  # per frame: x1, y1, x2, y2 in pixels


@dataclass
class Clip:
    path: str
    size: tuple[int, int]
    fps: int
    frame_count: int
    background: str
    objects: list[ClipObject]
    degraded: dict[int, str] = field(default_factory=dict)  # frame -> one of DEGRADATIONS

    def to_json(self) -> dict:
        return asdict(self)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float, smooth: int = 3) -> np.ndarray:
    x = rng.normal(0, sigma, n + 2 * smooth)
    k = np.ones(2 * smooth + 1) / (2 * smooth + 1)
    return np.convolve(x, k, mode="same")[smooth:smooth + n] * math.sqrt(2 * smooth + 1)


def _path(rng: np.random.Generator, n: int, lo: tuple[float, float], hi: tuple[float, float]) -> np.ndarray:
    """Centre positions over n frames: a straight move between two random points of the box lo..hi plus a wobble."""
    a, b = rng.uniform(lo, hi), rng.uniform(lo, hi)
    t = np.linspace(0, 1, n)[:, None]
    wobble = np.stack([np.sin(2 * np.pi * (t[:, 0] * rng.uniform(0.5, 1.5) + rng.uniform(0, 1))) for _ in range(2)], 1)
    amp = (np.array(hi) - np.array(lo)) * 0.08
    return np.clip(a * (1 - t) + b * t + wobble * amp, lo, hi)


def render_frames(products: list[Product], backgrounds: Backgrounds, rng: np.random.Generator, *, size=(640, 360),
                  frames: int = 30, scale_range=(0.32, 0.5), degraded_share: float = 0.3):
    """(background name, an iterator of (frame image, {product_id: box}, degradation or None) per frame of one clip):
    everything random is drawn here, the frames are drawn one at a time as the iterator is read."""
    w, h = size
    margin = int(0.08 * w)
    bg, bg_name = backgrounds.sample(rng, (w + 2 * margin, h + 2 * margin))
    pan = _path(rng, frames, (0, 0), (2 * margin, 2 * margin))
    shake = np.stack([_smooth_noise(rng, frames, margin / 8, 1) for _ in range(2)], 1)
    cam = np.clip(pan + shake, 0, 2 * margin).round().astype(int)
    t = np.arange(frames) / max(frames - 1, 1)
    light = 1 + 0.2 * np.sin(2 * np.pi * (t * rng.uniform(0.5, 1.2) + rng.uniform(0, 1)))
    cast = 1 + 0.06 * np.sin(2 * np.pi * (t[:, None] * rng.uniform(0.3, 1, 3) + rng.uniform(0, 1, 3)))
    n = len(products)
    lanes = [((i + 0.5) / n) for i in range(n)]  # each product keeps to its own horizontal lane
    movers = []
    for i, p in enumerate(products):
        side = rng.uniform(*scale_range) * min(w, h) * (0.85 if n > 1 else 1)
        half = side * 0.6
        lo = (max(half, lanes[i] * w - w / (2 * n) + half), half)
        hi = (min(w - half, lanes[i] * w + w / (2 * n) - half), h - half)
        lo, hi = (min(lo[0], hi[0]), lo[1]), (max(lo[0], hi[0]), hi[1])
        movers.append({"product": p, "cut": fit(p.cutout, int(side)), "centre": _path(rng, frames, lo, hi),
                       "angle": rng.uniform(-12, 12) + 10 * np.sin(2 * np.pi * (t * rng.uniform(0.4, 1) + rng.uniform(0, 1))),
                       "scale": 1 + 0.1 * np.sin(2 * np.pi * (t * rng.uniform(0.4, 1) + rng.uniform(0, 1)))})
    bad = set(rng.choice(frames, size=int(round(degraded_share * frames)), replace=False).tolist()) if degraded_share > 0 else set()
    return bg_name, _frames(bg, movers, cam, light, cast, bad, rng, size)


def _frames(bg, movers, cam, light, cast, bad, rng, size):
    w, h = size
    for f in range(len(cam)):
        x, y = cam[f]
        img = bg.crop((x, y, x + w, y + h))
        boxes = {}
        for m in movers:
            cut = m["cut"]
            s = m["scale"][f]
            obj = cut.resize((max(2, round(cut.width * s)), max(2, round(cut.height * s))), Image.BICUBIC)
            obj = obj.rotate(float(m["angle"][f]), resample=Image.BICUBIC, expand=True)
            cx, cy = m["centre"][f]
            ox, oy = int(round(cx - obj.width / 2)), int(round(cy - obj.height / 2))
            img.paste(obj, (ox, oy), obj)
            a = obj.getchannel("A").point(lambda v: 255 if v > 64 else 0).getbbox()
            if a:
                box = [max(0, ox + a[0]), max(0, oy + a[1]), min(w, ox + a[2]), min(h, oy + a[3])]
                boxes[m["product"].product_id] = [float(v) for v in box]
        arr = np.asarray(img, np.float32) * light[f] * cast[f]
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        kind = None
        if f in bad:
            kind = DEGRADATIONS[int(rng.integers(len(DEGRADATIONS)))]
            img = degrade(img, kind, rng, list(boxes.values()))
        yield img, boxes, kind


def degrade(img: Image.Image, kind: str, rng: np.random.Generator, boxes: list[list[float]]) -> Image.Image:
    """One badly degraded frame: ``blur`` (defocus or motion), ``occlusion`` (a hand-coloured blob over 40-70 %
    of each product), ``dark`` (12-25 % of the light, with sensor noise) or ``jpeg`` (quality 3-8)."""
    if kind == "blur":
        if rng.random() < 0.5:
            return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(3, 6))))
        k = int(rng.integers(9, 19)) | 1  # horizontal motion blur
        arr = np.asarray(img, np.float32)
        out = sum(np.roll(arr, s, axis=1) for s in range(-(k // 2), k // 2 + 1)) / k
        return Image.fromarray(out.astype(np.uint8))
    if kind == "occlusion":
        img = img.copy()
        d = ImageDraw.Draw(img)
        skin = tuple(int(v) for v in rng.uniform([150, 100, 80], [235, 190, 160]))
        for x1, y1, x2, y2 in boxes:
            frac = rng.uniform(0.4, 0.7)
            bw, bh = x2 - x1, y2 - y1
            if rng.random() < 0.5:
                d.ellipse([x1 - bw * 0.2, y1 - bh * 0.1, x1 + bw * frac * 1.2, y2 + bh * 0.1], fill=skin)
            else:
                d.ellipse([x1 - bw * 0.1, y2 - bh * frac * 1.2, x2 + bw * 0.1, y2 + bh * 0.2], fill=skin)
        return img
    if kind == "dark":
        arr = np.asarray(img, np.float32) * rng.uniform(0.12, 0.25) + rng.normal(0, 4, (img.height, img.width, 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(3, 9)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    raise ValueError(f"unknown degradation {kind!r}; known: {DEGRADATIONS}")


def write_mp4(path: Path, frames, fps: int, size: tuple[int, int], crf: int = 23) -> int:
    """Encodes PIL frames as H.264 (yuv420p, keyframe every 2 s) into an MP4; returns the frame count."""
    import av

    n = 0
    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height = size
        st.pix_fmt = "yuv420p"
        st.options = {"crf": str(crf), "preset": "veryfast", "g": str(2 * fps)}
        for img in frames:
            for pkt in st.encode(av.VideoFrame.from_image(img)):
                out.mux(pkt)
            n += 1
        for pkt in st.encode():
            out.mux(pkt)
    return n


def make_clip(path: Path, products: list[Product], backgrounds: Backgrounds, rng: np.random.Generator, *,
              size: tuple[int, int] = (640, 360), seconds: float = 3.0, fps: int = 10, degraded_share: float = 0.3,
              scale_range=(0.32, 0.5)) -> Clip:
    """Renders and writes one clip of ``products`` (1 or 2) to ``path``; returns its truth."""
    if not 1 <= len(products) <= 2:
        raise ValueError(f"a clip shows 1 or 2 products, got {len(products)}")
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even width and height, got {size[0]}x{size[1]}")
    n = max(1, int(round(seconds * fps)))
    per_frame: list[dict] = []
    degraded: dict[int, str] = {}
    bg_name, frames = render_frames(products, backgrounds, rng, size=size, frames=n, scale_range=scale_range,
                                    degraded_share=degraded_share)

    def images():
        for img, boxes, kind in frames:
            if kind:
                degraded[len(per_frame)] = kind
            per_frame.append(boxes)
            yield img

    path.parent.mkdir(parents=True, exist_ok=True)
    count = write_mp4(path, images(), fps, size)
    objects = [ClipObject(p.product_id, p.category, p.fine_class, [f.get(p.product_id) for f in per_frame]) for p in products]
    return Clip(str(path), tuple(size), fps, count, bg_name, objects, degraded)


def clip_sources(repository: Path, *, held_out: bool = True, photoset: bool = True):
    """(products, backgrounds) for clips: the held-out products and background photos of the models trained
    in ``repository`` (their training log says which data), or with ``held_out=False`` the training products
    (the demo catalog's) on the same held-out backgrounds."""
    from export.evaluate import load_setup

    setup = load_setup(SimpleNamespace(repository=Path(repository), no_photoset=not photoset, synthetic_per_class=None))
    return (setup.sources.held_out if held_out else setup.sources.products), Backgrounds(setup.sources.eval_backgrounds)


def make_clips(out: Path, products: list[Product], backgrounds: Backgrounds, n: int, *, seed: int = 0, two_share: float = 0.3,
               progress: bool = True, **clip_args) -> list[Clip]:
    """``n`` clips under ``out`` (clip_000.mp4 ...), a share ``two_share`` of them with two products of different
    ids; every product is used in turn before any repeats; writes out/truth.json."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(products)))
    clips = []
    for i in tqdm(range(n), desc="clips", unit="clip", disable=not progress):
        k = 2 if len(products) > 1 and rng.random() < two_share else 1
        chosen = []
        while len(chosen) < k:
            if not order:
                order = list(rng.permutation(len(products)))
            j = order.pop()
            if all(products[j].product_id != c.product_id for c in chosen):
                chosen.append(products[j])
        clips.append(make_clip(out / f"clip_{i:03d}.mp4", chosen, backgrounds, rng, **clip_args))
    (out / "truth.json").write_text(json.dumps([c.to_json() for c in clips], indent=1))
    return clips


def main(argv: list[str] | None = None) -> int:
    from export import repository

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--train-products", action="store_true", help="clips of training products (the demo catalog's), not held-out ones")
    ap.add_argument("--no-photoset", action="store_true", help="drawn products and procedural backgrounds only")
    ap.add_argument("--repository", type=Path, default=repository.REPOSITORY)
    ap.add_argument("--size", default="640x360", help="WxH (even numbers)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--degraded", type=float, default=0.3, help="share of badly degraded frames")
    ap.add_argument("--two-products", type=float, default=0.3, help="share of clips with a second product")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size {args.size!r}: expected WxH, e.g. 640x360")
    products, bgs = clip_sources(args.repository, held_out=not args.train_products, photoset=not args.no_photoset)
    clips = make_clips(args.out, products, bgs, args.clips, seed=args.seed, two_share=args.two_products, size=(w, h),
                       seconds=args.seconds, fps=args.fps, degraded_share=args.degraded)
    print(f"wrote {len(clips)} clips ({sum(len(c.objects) == 2 for c in clips)} with two products) and truth.json under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
