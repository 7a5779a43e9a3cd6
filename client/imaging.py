"""Decoding and letterboxing shared by the server's preprocess model, training and tests.

Needs only numpy, Pillow and spec.py (imported relatively), so export.repository can copy the pair next
to the Python model that serves it, and the Triton Python backend, the training code and the thin client
all run exactly the same pixels through the models.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import spec

Image.MAX_IMAGE_PIXELS = 100_000_000  # refuse decompression bombs above 100 Mpx (decode checks it, not only Pillow's warning)
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # refuse larger encoded files before decoding them
MIN_SIDE = 8  # a smaller image is refused (decode)
MAX_SQUARE_SIDE = 4096  # letterbox: a longer side is first reduced (box filter), so a 60000x20 strip never pads to 60000²


class ImageDecodeError(ValueError):
    """The bytes are not an image this pipeline can read; the message says why."""


def decode(data: bytes) -> Image.Image:
    """Encoded bytes -> RGB image, EXIF orientation applied."""
    if not data:
        raise ImageDecodeError("empty input (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageDecodeError(f"file too large ({len(data) / 2**20:.0f} MiB); the limit is {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > Image.MAX_IMAGE_PIXELS:  # Pillow only warns below twice its limit
                raise ImageDecodeError(f"image too large ({im.width}x{im.height} = {im.width * im.height / 1e6:.0f} Mpx); "
                                       f"the limit is {Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx (decompression bomb?)")
            im.load()
            img = ImageOps.exif_transpose(im)
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                img = _to_8bit(img)
            if img.mode != "RGB":
                if "A" in img.getbands() or img.mode == "P":
                    rgba = img.convert("RGBA")
                    img = Image.new("RGB", rgba.size, (255, 255, 255))
                    img.paste(rgba, (0, 0), rgba)
                else:
                    img = img.convert("RGB")
            else:
                img = img.copy()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): not a known image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {exc}") from exc
    if img.width < MIN_SIDE or img.height < MIN_SIDE:
        raise ImageDecodeError(f"image too small ({img.width}x{img.height}); need at least {MIN_SIDE}x{MIN_SIDE}")
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey -> 8-bit grey ("L"): 16-bit samples keep their high byte; float samples in
    [0, 1] scale to 0..255, other ranges are stretched (Pillow's own conversion would clip them to white)."""
    a = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        lo, hi = (0.0, 1.0) if a.size and a.min() >= 0 and a.max() <= 1 else (float(a.min(initial=0)), float(a.max(initial=1)))
        a = (a - lo) / max(hi - lo, 1e-12) * 255
    elif img.mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
        a = (a - a.min()) / max(a.max() - a.min(), 1) * 255
    else:
        a = a / 256
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")


def to_chw(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def letterbox(img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads to a square (image at the top-left) and resizes.

    Returns (det_image [1,3,DET,DET], crop_source [1,3,SRC,SRC], image_size [h, w]): the outputs of
    the ``preprocess`` model, in the order of ``spec.PREPROCESS.outputs``. A box normalised to the padded square maps back to original
    pixels by multiplying with max(h, w).
    """
    w, h = img.size  # the caller's pixels: boxes map back to them
    if max(w, h) > MAX_SQUARE_SIDE:
        img = img.reduce(math.ceil(max(w, h) / MAX_SQUARE_SIDE))
    side = max(img.size)
    square = Image.new("RGB", (side, side), (spec.PAD_VALUE,) * 3)
    square.paste(img, (0, 0))
    src = square.resize((spec.CROP_SOURCE_SIZE,) * 2, Image.BILINEAR)
    det = src.resize((spec.DET_SIZE,) * 2, Image.BILINEAR)
    return to_chw(det)[None], to_chw(src)[None], np.array([h, w], dtype=np.float32)


def encode_jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def list_images(folder: Path) -> list[Path]:
    """Image files (by suffix, spec.IMAGE_SUFFIXES) anywhere under ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if spec.is_image_file(p) and p.is_file())


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU of boxes [N, 4] and [M, 4] (x1, y1, x2, y2) -> [N, M]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
