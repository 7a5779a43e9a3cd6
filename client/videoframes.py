"""Video frames: which frames of a clip to use and how to get them cheaply.

    probe(path_or_bytes)                  -> VideoInfo (frames, fps, duration, size); VideoError if unreadable
    iter_frames(path_or_bytes, n=10)      -> Frame objects: n evenly spaced frames, near-repeats skipped
    Frame.from_image(index, pil_image)    -> a photo or frame ready to send (JPEG bytes + a small grey copy)

Decoding streams with PyAV: packets are demuxed without decoding until the GOP that holds a target (a keyframe
drops what was buffered), the demuxer seeks when a target is far ahead, and a frame nearly identical to the last
one kept is skipped. Only the kept frames stay in memory, as the JPEG sent to Triton and a small grey copy (view
quality, client.video). Split out of client.video, which tracks and votes over these frames.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from client import imaging

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".3gp", ".ogv", ".wmv")
DEFAULT_FRAMES = 10
SEND_SIDE = 1280  # frames are sent to Triton with at most this long side (the ensemble crops from 640 px)
QUALITY_SIDE = 480  # long side of the grey copy kept for view quality
SIMILAR_MAX_DIFF = 0.012  # mean |difference| (0..1) of 32x32 grey thumbnails under which a frame repeats the last kept one
SEEK_MIN_GAP = 8.0  # seconds ahead of the demuxer beyond which it seeks to the target's keyframe instead of reading on


class VideoError(ValueError):
    """A video that cannot be read or holds no frame; the message names the file and says why."""


@dataclass
class Frame:
    """One sampled frame (or photo): what is sent to Triton and what view quality is measured on."""
    index: int  # frame number in the clip (position among photos)
    data: bytes  # the encoded image sent to the ensemble
    size: tuple[int, int]  # (w, h) of the original frame; boxes are reported in these pixels
    gray: np.ndarray  # float32 0..1, long side <= QUALITY_SIDE
    time: float | None = None  # seconds from the clip's start
    scale: float = 1.0  # original pixels per pixel of ``data``

    @classmethod
    def from_image(cls, index: int, img: Image.Image, time_s: float | None = None, data: bytes | None = None) -> "Frame":
        img = img.convert("RGB")
        w, h = img.size
        scale = 1.0
        if data is None:
            sent = img
            if max(w, h) > SEND_SIDE:
                scale = max(w, h) / SEND_SIDE
                sent = img.resize((round(w / scale), round(h / scale)), Image.BILINEAR)
            data = imaging.encode_jpeg(sent, 90)
        g = img.convert("L")
        g.thumbnail((QUALITY_SIDE, QUALITY_SIDE))
        return cls(index, data, (w, h), np.asarray(g, np.float32) / 255.0, time_s, scale)

    def image(self) -> Image.Image:
        """The frame as sent, at its original size (for reports)."""
        img = imaging.decode(self.data)
        return img if img.size == self.size else img.resize(self.size, Image.BILINEAR)



def is_video(source: str | Path | bytes) -> bool:
    """Whether ``source`` (a path or the first bytes of a file) holds a video container, by content:
    container signatures first, then whether Pillow identifies an image, then whether PyAV finds a video
    stream. The suffix decides only for files neither can read (so an empty ``clip.mp4`` is a bad video)."""
    head = source[:64] if isinstance(source, (bytes, bytearray)) else _head(Path(source))
    if _video_signature(head):
        return True
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source):
            return False
    except Exception:  # noqa: BLE001 - Pillow: not an image it knows
        pass
    try:
        with _open_container(source) as c:  # FFmpeg's still-image and text demuxers are not videos
            if c.streams.video and not any(n.startswith("image2") or n.endswith("_pipe") or n == "tty" for n in c.format.name.split(",")):
                return True
    except (VideoError, OSError):
        pass
    return not isinstance(source, (bytes, bytearray)) and Path(source).suffix.lower() in VIDEO_SUFFIXES


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(64)
    except OSError:
        return b""


def _video_signature(head: bytes) -> bool:
    return (head[4:8] == b"ftyp" and head[8:11] not in (b"avi", b"hei", b"mif")  # MP4/MOV/3GP, not AVIF/HEIF stills
            or head[:4] == b"\x1a\x45\xdf\xa3"  # Matroska / WebM
            or head[:4] == b"RIFF" and head[8:12] == b"AVI "
            or head[:3] == b"FLV"
            or head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")  # MPEG-PS / MPEG-1/2 video
            or head[:4] == b"OggS"
            or head[:16] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9\x00\xaa\x00\x62\xce\x6c")  # ASF / WMV


def _name(source) -> str:
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def _open_container(source):
    import av

    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise VideoError("<bytes>: cannot read video: empty input (0 bytes)")
        target = io.BytesIO(source)
    else:
        path = Path(source)
        if path.stat().st_size == 0:  # OSError for a file that cannot be read
            raise VideoError(f"{path}: cannot read video: empty file (0 bytes)")
        target = str(path)
    try:
        return av.open(target, mode="r")
    except av.error.FFmpegError as exc:
        raise VideoError(f"{_name(source)}: cannot read video: {exc.strerror or exc}") from exc


@dataclass
class VideoInfo:
    frame_count: int
    fps: float
    duration: float  # seconds
    size: tuple[int, int]


def probe(source: str | Path | bytes) -> VideoInfo:
    """Frame count, rate, duration and size of a clip, from its headers (a demux pass, no decoding, when
    the container does not say)."""
    with _open_container(source) as c:
        return _info(c, source)


def _info(c, source) -> VideoInfo:
    if not c.streams.video:
        raise VideoError(f"{_name(source)}: cannot read video: no video stream")
    s = c.streams.video[0]
    fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
    duration = float(s.duration * s.time_base) if s.duration else (c.duration / 1e6 if c.duration else 0.0)
    count = int(s.frames or 0) or int(round(duration * fps))
    if count == 0:  # no count, no duration: count the packets (cheap, nothing decoded)
        import av

        try:
            count = sum(1 for p in c.demux(s) if p.size)
        except av.error.FFmpegError:
            pass
        duration = count / fps
    if count == 0:
        raise VideoError(f"{_name(source)}: empty video (no frames)")
    return VideoInfo(count, fps, duration or count / fps, (s.codec_context.width, s.codec_context.height))


def sample_indices(frame_count: int, n: int) -> list[int]:
    """``n`` evenly spaced frame numbers (the centre of each of n equal spans), all frames when n >= count."""
    if n < 1:
        raise ValueError(f"need at least one frame to sample, got {n}")
    if n >= frame_count:
        return list(range(frame_count))
    return sorted({min(frame_count - 1, int((i + 0.5) * frame_count / n)) for i in range(n)})


def thumb_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (0..1) of two grey images at 32x32: how much a frame changed."""
    def small(g):
        return np.asarray(Image.fromarray((g * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR), np.float32) / 255.0
    return float(np.abs(small(a) - small(b)).mean())


def iter_frames(source: str | Path | bytes, n: int = DEFAULT_FRAMES, *, skip_similar: float = SIMILAR_MAX_DIFF,
                info: VideoInfo | None = None, indices: list[int] | None = None) -> Iterator[Frame]:
    """The sampled frames of a clip (``sample_indices``, or these frame ``indices``), decoded one at a time; a
    frame whose thumbnail differs from the last yielded one by less than ``skip_similar`` is skipped."""
    with _open_container(source) as c:
        info = info or _info(c, source)
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        tb = float(s.time_base)
        start = s.start_time or 0
        per_frame = 1.0 / (info.fps * tb)  # pts units per frame
        wanted = sorted(set(indices)) if indices is not None else sample_indices(info.frame_count, n)
        targets = [start + round(i * per_frame) for i in wanted]
        last: np.ndarray | None = None
        decoded = 0
        for index, frame in _decode_at(c, s, targets, per_frame, SEEK_MIN_GAP / tb):
            decoded += 1
            w, h = frame.width, frame.height
            k = min(1.0, QUALITY_SIDE / max(w, h))
            gray = frame.reformat(width=max(1, round(w * k)), height=max(1, round(h * k)), format="gray").to_ndarray()
            gray = gray.astype(np.float32) / 255.0
            if last is not None and thumb_diff(gray, last) < skip_similar:
                continue
            last = gray
            k = min(1.0, SEND_SIDE / max(w, h))
            sent = frame.reformat(width=round(w * k), height=round(h * k), format="rgb24").to_image() if k < 1 else frame.to_image()
            t = (frame.pts - start) * tb if frame.pts is not None else index / info.fps
            yield Frame(index, imaging.encode_jpeg(sent, 90), (w, h), gray, round(t, 3), 1.0 / k)
        if decoded == 0:
            raise VideoError(f"{_name(source)}: cannot read video: no frame could be decoded")


def _decode_at(c, s, targets: list[int], per_frame: float, seek_gap: float):
    """Yields (frame number, av.VideoFrame) for the first frame at or after each target pts. Packets are
    kept undecoded since the last keyframe and decoded, in order, only once the stream reaches a target (so
    a GOP without a target is never decoded); the demuxer seeks when the next target is more than
    ``seek_gap`` pts ahead of the last packet read."""
    import av

    start = s.start_time or 0
    tol = per_frame / 2
    ti = 0
    position = None  # pts of the furthest packet read
    while True:
        if position is not None:
            try:  # lands on the keyframe at or before the target; PyAV flushes the decoder
                c.seek(int(targets[ti]), stream=s, backward=True, any_frame=False)
            except av.error.FFmpegError:
                seek_gap = math.inf
        buffered: list = []
        again = False
        for packet in c.demux(s):  # ends with an empty packet that drains the decoder
            if packet.is_keyframe:
                buffered = []
            buffered.append(packet)
            if packet.pts is not None:
                position = packet.pts if position is None else max(position, packet.pts)
                if packet.pts < targets[ti] - tol:
                    continue
            for p in buffered:
                try:
                    frames = p.decode()
                except av.error.FFmpegError:
                    continue  # a corrupt packet: its frame is lost, the rest goes on
                for f in frames:
                    if f.pts is None or f.pts < targets[ti] - tol:
                        continue
                    yield round((f.pts - start) / per_frame), f
                    while ti < len(targets) and targets[ti] - tol <= f.pts:
                        ti += 1
                    if ti == len(targets):
                        return
            buffered = []
            if targets[ti] - position > seek_gap:
                again = True
                break
        if not again:
            return
