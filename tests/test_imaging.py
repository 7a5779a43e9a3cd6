import io

import numpy as np
import pytest
from PIL import Image

from client import imaging, spec


def _jpeg(img: Image.Image) -> bytes:
    return imaging.encode_jpeg(img, 75)


@pytest.mark.parametrize("data,reason", [(b"", "empty"), (b"not an image at all", "cannot decode"),
                                         (_jpeg(Image.new("RGB", (64, 64)))[:100], "cannot decode")])
def test_bad_bytes_raise_a_clear_error(data, reason):
    with pytest.raises(imaging.ImageDecodeError, match=reason):
        imaging.decode(data)


def test_tiny_image_is_refused():
    with pytest.raises(imaging.ImageDecodeError, match="too small"):
        imaging.decode(_jpeg(Image.new("RGB", (4, 4))))


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert imaging.decode(buf.getvalue()).size == (20, 60)


def test_transparent_png_goes_on_white():
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert imaging.decode(buf.getvalue()).getpixel((5, 5)) == (255, 255, 255)


def test_letterbox_pads_bottom_right_and_keeps_scale():
    img = Image.new("RGB", (400, 200), (10, 200, 30))
    det, src, size = imaging.letterbox(img)
    assert det.shape == (1, 3, spec.DET_SIZE, spec.DET_SIZE) and det.dtype == np.uint8
    assert src.shape == (1, 3, spec.CROP_SOURCE_SIZE, spec.CROP_SOURCE_SIZE)
    assert size.tolist() == [200.0, 400.0]
    assert tuple(src[0, :, 10, 10]) == (10, 200, 30)  # image at the top left
    assert tuple(src[0, :, -10, 10]) == (spec.PAD_VALUE,) * 3  # padding below
