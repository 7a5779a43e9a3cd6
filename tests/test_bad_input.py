"""Bad and odd input on the real stack (tritonserver + the embedded store): every file kind of issue 12
through ``python -m client.index`` (each named with its reason, the batch goes on, a summary at the end),
the odd-but-valid formats read as the pixels they show, and the same bytes sent straight to the ensemble
over plain gRPC, as another service would (INVALID_ARGUMENT, no crash, no hang, the server keeps serving)."""
from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from client import imaging, spec
from client.search import search_image
from client.store import QdrantStore
from client.triton import RetrievalClient

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
GRPC_DEADLINE = 120  # seconds: a request that takes longer counts as a hang


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw) -> bytes:
    return _encode(img, "PNG", **kw)


def _product(demo: Path, k: int) -> Image.Image:
    with Image.open(sorted((demo / "catalog").rglob("*.jpg"))[k]) as im:
        return im.convert("RGB")


def _cutout(img: Image.Image) -> Image.Image:
    """The product on a transparent background (the catalog's near-white background made transparent)."""
    rgba = img.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[..., 3] = np.where(np.asarray(img.convert("L")) > 235, 0, 255)
    return Image.fromarray(a, "RGBA")


def _on_white(rgba: Image.Image) -> Image.Image:
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, (0, 0), rgba)
    return out


def _animated(first: Image.Image) -> bytes:
    rng = np.random.default_rng(3)
    noise = [Image.fromarray(rng.integers(0, 256, (first.height, first.width, 3), dtype=np.uint8)) for _ in range(2)]
    return _encode(first, "GIF", save_all=True, append_images=noise, duration=100)


def _exif_rotated(upright: Image.Image) -> bytes:
    """Pixels stored turned 90° clockwise (as a camera held sideways), EXIF orientation 6 saying so."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _png(upright.rotate(90, expand=True), exif=exif)


def _corrupt_png(good: bytes) -> bytes:
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF  # inside IDAT: the zlib stream / CRC no longer check
    return bytes(data)


def _corrupt_jpeg(good: bytes) -> bytes:
    return good[:600] + bytes(len(good) - 600)  # headers intact, the entropy-coded data zeroed


def _corrupt_webp(good: bytes) -> bytes:
    return good[:12] + b"VP8 " + bytes(64)  # a RIFF/WEBP header, then a chunk that is not a VP8 stream


# file name -> the reason client.index prints (a regex); the ensemble answers INVALID_ARGUMENT to the
# same bytes (those that reach it: a file that cannot be read never does)
BAD = {
    "truncated.jpg": r"preprocess: cannot decode image \(\d+ bytes\): image file is truncated",
    "truncated.png": r"preprocess: cannot decode image \(\d+ bytes\): .*(truncated|broken)",
    "truncated.webp": r"preprocess: cannot decode image \(\d+ bytes\)",
    "corrupt.jpg": r"preprocess: cannot decode image \(\d+ bytes\)",
    "corrupt.png": r"preprocess: cannot decode image \(\d+ bytes\)",
    "corrupt.webp": r"preprocess: cannot decode image \(\d+ bytes\)",
    "not_an_image.jpg": r"preprocess: cannot decode image \(\d+ bytes\): not a known image format",
    "empty.png": r"preprocess: empty input \(0 bytes\)",
    "bomb.png": r"preprocess: cannot decode image \(\d+ bytes\): .*decompression bomb",
    "huge.png": r"preprocess: image too large \(12000x10000 = 120 Mpx\); the limit is 100 Mpx",
    "one_pixel.png": r"preprocess: image too small \(1x1\); need at least 8x8",
}
UNREAD = {  # never sent: the index names the file and why it could not be read
    "loop.jpg": r"cannot read: .*(Too many levels of symbolic links|Symlink loop)",
    "dangling.jpg": r"cannot read: .*No such file or directory",
    "outside.jpg": r"cannot read: links outside the catalog folder \(to .*\); not read",
    "unreadable.jpg": r"cannot read: Permission denied",
}
ODD = ["cmyk.jpg", "gray16.png", "gray.png", "palette.png", "rgba.png", "animated.gif", "exif_rotated.png",
       "strip_60000x20.png", "control.jpg"]


@pytest.fixture(scope="module")
def files(demo) -> dict[str, bytes]:
    """Every bad and odd file's bytes, and the references the odd ones must read as."""
    product, other = _product(demo, 0), _product(demo, 5)
    jpg, png, webp = imaging.encode_jpeg(product), _png(product), _encode(product, "WEBP", quality=90)
    gray = product.convert("L")
    palette = product.convert("P", palette=Image.ADAPTIVE, colors=64)
    cutout = _cutout(product)
    return {
        "truncated.jpg": jpg[: len(jpg) // 2], "truncated.png": png[: len(png) // 2], "truncated.webp": webp[: len(webp) // 2],
        "corrupt.jpg": _corrupt_jpeg(jpg), "corrupt.png": _corrupt_png(png), "corrupt.webp": _corrupt_webp(webp),
        "not_an_image.jpg": b"#!/bin/sh\necho this is a shell script, not a photo\n", "empty.png": b"",
        "bomb.png": _png(Image.new("1", (30000, 30000))),  # 900 Mpx in ~110 kB
        "huge.png": _png(Image.new("L", (12000, 10000))),  # 120 Mpx: over the limit, under Pillow's own error
        "one_pixel.png": _png(Image.new("RGB", (1, 1), (200, 10, 10))),
        "cmyk.jpg": _encode(product.convert("CMYK"), "JPEG", quality=95),
        "gray16.png": _png(Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)),  # 16-bit, same picture as gray
        "gray.png": _png(gray), "palette.png": _png(palette), "rgba.png": _png(cutout),
        "animated.gif": _animated(product), "exif_rotated.png": _exif_rotated(other),
        "strip_60000x20.png": _png(Image.new("RGB", (60000, 20), (30, 120, 200))),
        "control.jpg": jpg,
        # what the odd ones must read as
        "ref:cmyk.jpg": jpg, "ref:gray16.png": _png(gray.convert("RGB")), "ref:gray.png": _png(gray.convert("RGB")),
        "ref:palette.png": _png(palette.convert("RGB")), "ref:rgba.png": _png(_on_white(cutout)),
        "ref:animated.gif": _encode(product, "GIF"), "ref:exif_rotated.png": _png(other),
    }


@pytest.fixture(scope="module")
def catalog(files, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("bad_input")
    folder = base / "catalog"
    (folder / "odd").mkdir(parents=True)
    (folder / "bad").mkdir()
    for name in ODD:
        (folder / "odd" / name).write_bytes(files[name])
    for name in BAD:
        (folder / "bad" / name).write_bytes(files[name])
    (base / "elsewhere.jpg").write_bytes(files["control.jpg"])
    (folder / "bad" / "outside.jpg").symlink_to(base / "elsewhere.jpg")
    (folder / "bad" / "loop.jpg").symlink_to("loop.jpg")
    (folder / "bad" / "dangling.jpg").symlink_to("no_such_file.jpg")
    locked = folder / "bad" / "unreadable.jpg"
    locked.write_bytes(files["control.jpg"])
    locked.chmod(0)
    (folder / "bad" / "folder.jpg").mkdir()  # a folder named like an image is not a file: not listed
    return folder


def _as_unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` run so that file permissions apply: as root, without the capabilities that bypass them
    (so a mode-000 file really cannot be read, and the error path is the one a user meets)."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a mode-000 file stays readable")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *cmd]


@pytest.fixture(scope="module")
def indexed(triton, catalog, tmp_path_factory):
    store = tmp_path_factory.mktemp("bad_input_store") / "q"
    env = dict(os.environ, TRITON_URL=triton.grpc_url, QDRANT_PATH=str(store))
    t = time.monotonic()
    proc = subprocess.run(_as_unprivileged([sys.executable, "-m", "client.index", str(catalog)]), capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    return proc, store, time.monotonic() - t


def test_each_bad_file_is_named_with_its_reason_and_the_batch_goes_on(indexed, catalog):
    proc, store, seconds = indexed
    assert proc.returncode == 3, proc.stderr  # some files skipped, the rest indexed
    skipped = dict(re.findall(r"^skipped (\S+): (.*)$", proc.stderr, re.M))
    want = {**BAD, **UNREAD}
    assert set(skipped) == {str(catalog / "bad" / n) for n in want}, proc.stderr
    for name, reason in want.items():
        assert re.match(reason, skipped[str(catalog / "bad" / name)]), (name, skipped[str(catalog / "bad" / name)])
    n = len(ODD) + len(want)
    assert f"indexed {len(ODD)} of {n} images ({len(ODD)} products;" in proc.stdout
    assert proc.stderr.rstrip().endswith(f"{len(want)} file(s) skipped")
    with QdrantStore(path=store) as s:
        stored = {p["product_id"] for p in s.engine.scroll(s.collection) for p in [p.payload]}
    assert stored == {Path(n).stem for n in ODD}
    print(proc.stdout, proc.stderr, f"{seconds:.1f} s", sep="\n")


@pytest.mark.parametrize("name", [n for n in ODD if n in {"cmyk.jpg", "gray16.png", "gray.png", "palette.png", "rgba.png",
                                                          "animated.gif", "exif_rotated.png"}])
def test_odd_formats_are_read_as_the_picture_they_show(client, files, name):
    """CMYK, 16-bit, palette, grey, transparent, animated (first frame) and EXIF-rotated files give the
    embedding of the plain RGB picture a viewer shows."""
    got = client.infer(files[name], name).image_embedding
    want = client.infer(files[f"ref:{name}"], f"ref:{name}").image_embedding
    similarity = float(np.dot(got, want))
    # lossless conversions are the same pixels; the CMYK JPEG is re-encoded (lossy) and GIFs are quantised
    assert similarity > (0.97 if name in {"cmyk.jpg", "animated.gif"} else 0.999), similarity


def test_an_extreme_strip_is_answered_quickly_with_bounded_memory(client, files):
    t = time.monotonic()
    result = client.infer(files["strip_60000x20.png"], "strip")
    assert time.monotonic() - t < 30  # it padded a 60000x60000 square before: 37 s and 14 GB
    assert result.rows[-1].whole_image and result.rows[-1].box == (0.0, 0.0, 60000.0, 20.0)


def test_an_exif_rotated_photo_is_found_by_its_upright_picture(indexed, client, files):
    upright = files["ref:exif_rotated.png"]
    with QdrantStore(path=indexed[1]) as store:
        objects = search_image(upright, client, store, top_k=3, filter_by_category=False)
    best = max((r for o in objects for r in o.results), key=lambda r: r["score"])
    assert best["product_id"] == "exif_rotated" and best["score"] > 0.99, objects


# --- the same bytes straight to the ensemble, over plain gRPC ------------------------------------------------

@pytest.fixture(scope="module")
def stub(triton):
    big = 256 * 2**20
    with grpc.insecure_channel(triton.grpc_url, options=[("grpc.max_send_message_length", big),
                                                         ("grpc.max_receive_message_length", big)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _lp(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _send(stub, raw: bytes, *, datatype: str = "BYTES", shape: tuple[int, ...] = (1,)):
    request = service_pb2.ModelInferRequest(model_name=spec.ENSEMBLE)
    request.inputs.add(name=spec.IMAGE_BYTES.name, datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(raw)
    return stub.ModelInfer(request, timeout=GRPC_DEADLINE)


def _still_serving(stub, files) -> None:
    reply = _send(stub, _lp(files["control.jpg"]))
    assert {o.name for o in reply.outputs} >= {spec.EMBEDDINGS.name, spec.VALID.name}


@pytest.mark.parametrize("name", sorted(BAD))
def test_grpc_caller_gets_invalid_argument_for_each_bad_file(stub, files, name):
    with pytest.raises(grpc.RpcError) as err:
        _send(stub, _lp(files[name]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert re.search(BAD[name], err.value.details()), err.value.details()
    _still_serving(stub, files)


@pytest.mark.parametrize("name", [n for n in ODD if n != "control.jpg"])
def test_grpc_caller_gets_an_answer_for_each_odd_file(stub, files, name):
    reply = _send(stub, _lp(files[name]))
    assert spec.EMBEDDINGS.name in {o.name for o in reply.outputs}


def test_several_images_in_one_request_are_refused(stub, files):
    with pytest.raises(grpc.RpcError) as err:
        _send(stub, _lp(files["control.jpg"], files["gray.png"], files["cmyk.jpg"]), shape=(3,))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"unexpected shape for input '{spec.IMAGE_BYTES.name}'" in err.value.details() and "got [3]" in err.value.details()
    _still_serving(stub, files)


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_a_wrong_dtype_is_refused(stub, files, datatype):
    raw = files["control.jpg"]
    raw = raw[: len(raw) // 4 * 4]
    n = len(raw) if datatype == "UINT8" else len(raw) // 4
    with pytest.raises(grpc.RpcError) as err:
        _send(stub, raw, datatype=datatype, shape=(n,))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "data-type" in err.value.details() or "datatype" in err.value.details().lower()
    _still_serving(stub, files)


def test_an_oversized_payload_is_refused_without_a_hang(stub, files):
    # a real JPEG followed by padding, past imaging.MAX_IMAGE_BYTES: refused before Pillow reads it
    payload = files["control.jpg"] + bytes(imaging.MAX_IMAGE_BYTES + 1 - len(files["control.jpg"]))
    t = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        _send(stub, _lp(payload))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"file too large (64 MiB); the limit is {imaging.MAX_IMAGE_BYTES // 2**20} MiB" in err.value.details()
    print(f"oversized payload ({len(payload) / 2**20:.0f} MiB) refused in {time.monotonic() - t:.1f} s")
    _still_serving(stub, files)


def test_the_client_library_names_the_file_of_a_refused_request(triton, files):
    with RetrievalClient(triton.grpc_url) as c:
        from client.triton import BadImage

        with pytest.raises(BadImage, match=r"^huge\.png: preprocess: image too large"):
            c.infer(files["huge.png"], "huge.png")
        assert c.infer(files["control.jpg"], "control.jpg").rows
