"""What the service accepts as an upload: read with a size cap, its declared type checked, its kind (image or
video) sniffed from the bytes. Every refusal is an ``UploadError`` with the HTTP status and the reason.

An upload is either the raw request body with an image/* or video/* content type, or a multipart form whose
file field (``image`` by default) holds it. The bytes stay in memory: a file name from the request is only
ever a label, never a path.
"""
from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

ACCEPTED_TYPES = ("image/", "video/")
GENERIC_TYPES = ("application/octet-stream", "")  # no declared type: the bytes decide
MAX_NAME = 200  # characters of an upload's file name kept as its label


class UploadError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Upload:
    name: str  # the client's file name (a label only), or "<upload>"
    data: bytes
    declared: str  # the declared content type ("" when none)
    kind: str  # "image" or "video", from the bytes
    format: str  # e.g. "jpeg", "png", "mp4"


# (offset, magic, kind, format): the containers and image formats the stack reads (Pillow, PyAV)
_MAGIC = [
    (0, b"\xff\xd8\xff", "image", "jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image", "png"),
    (0, b"GIF87a", "image", "gif"),
    (0, b"GIF89a", "image", "gif"),
    (0, b"II*\x00", "image", "tiff"),
    (0, b"MM\x00*", "image", "tiff"),
    (0, b"BM", "image", "bmp"),
    (0, b"\x1aE\xdf\xa3", "video", "webm/matroska"),
    (0, b"\x00\x00\x01\xba", "video", "mpeg-ps"),
]
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"}  # ISO-BMFF stills


def sniff(data: bytes) -> tuple[str, str] | None:
    """(kind, format) of the bytes by their signature, or None when they are neither an image nor a video."""
    if data[:4] == b"RIFF" and len(data) >= 12:
        return {b"WEBP": ("image", "webp"), b"AVI ": ("video", "avi")}.get(data[8:12])
    if data[4:8] == b"ftyp":  # ISO base media: mp4, mov, 3gp ... or a HEIF/AVIF still
        brand = data[8:12]
        return ("image", brand.decode("ascii", "replace").strip()) if brand in _IMAGE_BRANDS else ("video", "mp4/mov")
    if len(data) > 376 and data[0] == data[188] == data[376] == 0x47:
        return "video", "mpeg-ts"
    for offset, magic, kind, fmt in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return kind, fmt
    return None


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def check(name: str, data: bytes, declared: str, *, allow_video: bool = True) -> Upload:
    """An Upload of these bytes, or UploadError: empty (400), a declared type that is not an image/video (415),
    bytes that are neither (415), a video where only images are taken (415)."""
    label = f"upload {name!r}" if name != "<upload>" else "the upload"
    if declared not in GENERIC_TYPES and not declared.startswith(ACCEPTED_TYPES):
        raise UploadError(415, f"{label}: content type {declared!r} is not accepted; send an image/* or video/* file "
                               "(JPEG, PNG, WebP, GIF, BMP, TIFF; MP4, MOV, WebM, AVI)")
    if not data:
        raise UploadError(400, f"{label} is empty (0 bytes)")
    found = sniff(data)
    if found is None:
        head = data[:8].hex(" ")
        raise UploadError(415, f"{label} ({len(data)} bytes, declared {declared or 'no type'}) is not an image or video "
                               f"in a supported format (first bytes: {head})")
    kind, fmt = found
    if kind == "video" and not allow_video:
        raise UploadError(415, f"{label} is a video ({fmt}); this endpoint takes an image")
    return Upload(name, data, declared, kind, fmt)


async def _body(request: Request, max_bytes: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise UploadError(400, f"bad Content-Length header {length!r}") from None
        if n > max_bytes:
            raise UploadError(413, f"the upload is {n} bytes; the limit is {max_bytes} bytes ({max_bytes / 2**20:g} MiB)")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise UploadError(413, f"the upload exceeds the limit of {max_bytes} bytes ({max_bytes / 2**20:g} MiB)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, max_bytes: int, *, max_files: int = 1) -> list[tuple[str, str | UploadFile]]:
    """The fields of a multipart form, the whole body capped at ``max_bytes``."""
    body = await _body(request, max_bytes)

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=20, max_part_size=64 * 1024)
    parser.spool_max_size = max_bytes  # the body is in memory already: no file part is spooled to a temporary file
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UploadError(400, f"bad multipart form: {exc.message}") from None
    return list(form.multi_items())


async def _file(item: UploadFile) -> tuple[str, bytes, str]:
    data = await item.read()
    await item.close()
    return (item.filename or "<upload>")[:MAX_NAME], data, _base_type(item.content_type)


async def read_uploads(request: Request, max_bytes: int, *, field: str = "image", max_files: int = 1,
                       allow_video: bool = True) -> tuple[list[Upload], dict[str, str]]:
    """The uploaded files (raw body, or the form's ``field`` files) and the form's text fields."""
    content_type = _base_type(request.headers.get("content-type"))
    if content_type == "multipart/form-data":
        items = await read_form(request, max_bytes, max_files=max_files)
        files = [await _file(v) for k, v in items if k == field and isinstance(v, UploadFile)]
        fields = {k: v for k, v in items if isinstance(v, str)}
        if field in fields:
            raise UploadError(400, f"form field {field!r} is text; send the image as a file")
        if not files:
            others = sorted({k for k, _ in items})
            raise UploadError(400, f"no file in the form field {field!r}" + (f" (fields sent: {', '.join(others)})" if others else ""))
        return [check(n, d, t, allow_video=allow_video) for n, d, t in files], fields
    if content_type == "application/x-www-form-urlencoded":
        raise UploadError(415, f"send the image as multipart/form-data (field {field!r}) or as the raw body with an "
                               "image/* or video/* content type, not a urlencoded form")
    if not content_type:
        raise UploadError(415, "no Content-Type: send the raw body as image/* or video/*, or a multipart/form-data "
                               f"form with the file in the field {field!r}")
    if content_type not in GENERIC_TYPES and not content_type.startswith(ACCEPTED_TYPES):
        return [check("<upload>", b"", content_type)], {}  # raises 415 naming the type, before reading the body
    data = await _body(request, max_bytes)
    return [check("<upload>", data, content_type, allow_video=allow_video)], {}
