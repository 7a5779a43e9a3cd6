"""Search by video: sample a clip's frames, follow each product across them, and let its views vote.

    search_video(path_or_bytes, client, store, frames=10)  -> the ``client.search --json`` dict of a clip
    search_frames([img, ...], client, store)                -> the same for frames in memory (photos of one scene)

Both return ``{"objects": [{"box", "score", "category", "searched_in", "frame", "frames", "support", "results": [{"product_id",
"path", "score", "votes"}]}], "frame_count", "frames_used", "timing", ...}``: one object per product followed
through the frames, its box and score from its best view (``frame``), ``frames`` every frame it was seen in.

1. decode (``client.videoframes``, PyAV, streaming): ``frames`` evenly spaced targets, near-repeats skipped; only the
   kept frames stay in memory, as the JPEG sent to Triton and a small grey copy (view quality).
2. inference: ``RetrievalClient.infer`` in a thread pool, fed while decoding goes on.
3. tracking: the objects ``client.search.select_objects`` reports per frame join the track whose mean
   embedding is closest (cosine, plus a bonus for overlapping the track's last box), or start one; tracks
   never seen in the same frame with near-identical embeddings merge. A track seen in fewer than
   ``min_support(frames used)`` frames is dropped. No track at all: the whole frames are the one track.
4. search + voting: each view's hits (in the track's category, when the classifier is consistently sure of it and
   the views' nearest catalog products agree: ``track_category``) vote with a softmax share of their similarity,
   times the similarity, the detection score and the view's quality (sharpness relative to the track's sharper
   views, exposure). Tracks that never share a frame are one product seen twice, and merge, when their winner is
   the same product or when the boxes of one lie where the other's are in the neighbouring frames (``continues``:
   a product's badly degraded views, occluded or dark, which look more like each other than like its clear views);
   a weaker track naming a stronger one's product is dropped when, in the frames both were seen in, the smaller
   box lies inside the other (a piece of that object, or a box around it) or when it is unsure (clutter that looks
   like it); two confident look-alikes both stay.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from client import category as narrowing
from client import imaging, spec
from client.videoframes import DEFAULT_FRAMES, Frame, VideoError, _name, iter_frames, probe
from client.result import DetectedObject
from client.search import select_objects
from client.store import QdrantStore
from client.triton import BadImage, RetrievalClient


# Tracking and voting: the view statistics are `python -m bench.video_views` (data/bench/video/view_stats.md): the
# clips of `python -m bench.video_search --clips 60 --two-products 0.6 --seed 7` and `--seed 11` (120 clips, 197
# products, 10 frames each), the views select_objects reports, a product's when its box overlaps the product's true
# box by IoU >= 0.5, else clutter. Measured 2026-12-04 on the shipped models (embedder v2, learned whitening, and
# the detector trained with feature dropout; the trained embedder before it gave views within 0.02 of these).
# The constants were chosen 2026-12-03, with older models, from a one-off analysis not in the repository:
# its one-product figures were within 0.02 of these; its two-object 95th percentiles were lower (0.35,
# 0.39, box IoU 0.11), and how it counted other objects is not known. Views of one product in two frames: cosine
# median 0.71, 0.85 when both frames are clear (5 % below 0.65); a clear view to the mean of the product's other
# clear views: median 0.90 (5 % below 0.77), a badly degraded one much lower: blurred 0.52, dark 0.47, occluded 0.28
# (25 % below 0.17: the occluding blob's colour rules the colour part). Views of two products in one frame: median
# 0.13, 95 % below 0.60; a view to another product's or clutter's mean: median 0.16, 95 % below 0.46. Box IoU of one
# product's views one sampled frame apart: median 0.67, 5 % below 0.40; with another object's view (clutter
# included, which may cover part of a product): 95 % below 0.24. So box overlap carries the associations the embedding cannot (degraded
# views): a product's degraded views that still start a track of their own (they look more like each other than
# like its clear views) are merged back by their boxes (``continues``), and tracks of one product that split
# otherwise merge by their votes. TRACK_MIN_COS 0.45 / 0.65, TRACK_MIN_COS_OVERLAP 0.25 / 0.45 and MERGE_COS 0.6 -
# 0.9 instead of 0.55, 0.35 and 0.8 gain nothing on seeds 7 and 11 (at most one clip or two products lost);
# VOTE_TEMPERATURE 0.01 / 0.03 / 0.1 / 1 gave vote top-1 0.882 / 0.877 / 0.877 / 0.877 (seeds 7 and 11, 211
# products); two valid views instead of one cut objects matching no product from 77 to 54 for 3 products less found.
TRACK_MIN_COS = 0.55  # a view joins a track whose mean embedding is at least this similar ...
TRACK_MIN_COS_OVERLAP = 0.35  # ... or this similar when its box overlaps the track's last box by TRACK_MIN_IOU
TRACK_MIN_IOU = 0.3
TRACK_IOU_WEIGHT = 0.3  # bonus per unit of IoU when ranking candidate tracks
MERGE_COS = 0.8  # tracks never seen in one frame whose mean embeddings are this similar are one track
PART_OF_SHARE = 0.5  # a track naming the same product as a stronger one, the smaller of their boxes this much inside the other: one object
DUPLICATE_MIN_VOTES = 0.5  # ... elsewhere in the frame, it must give that product at least this share of its votes
MIN_SUPPORT_SHARE = 0.08  # a track needs this share of the frames used (at least 2 once MIN_FRAMES_FOR_SUPPORT are used)
MIN_FRAMES_FOR_SUPPORT = 4
MIN_VALID_VIEWS = 2  # ... of which this many (at most all) above the detector's threshold: weak rows alone are clutter
SEARCH_K = 10  # hits per view (at least top_k)
VOTE_TEMPERATURE = 0.01  # softmax temperature over a view's hit similarities
MIN_QUALITY = 0.05


# --- views, tracks, votes -----------------------------------------------------------------------------

@dataclass
class View:
    """One object in one frame."""
    frame: Frame
    obj: DetectedObject  # box in the original frame's pixels
    sharpness: float  # variance of the Laplacian of its grey box
    exposure: float  # 0..1
    quality: float = 1.0  # set per track (sharpness relative to the track's views, times exposure)
    hits: list = field(default_factory=list)
    searched_in: str | None = None  # the category its track's search was narrowed to (None: the whole catalog)

    @property
    def weight(self) -> float:
        return max(self.obj.score, 0.05) * self.quality


def region_quality(gray: np.ndarray, box_px, frame_size: tuple[int, int]) -> tuple[float, float]:
    """(sharpness, exposure) of a box (original pixels) on the frame's grey copy: the variance of the
    Laplacian at a 128-px crop (scale-free), and 1 for a mean level in [0.2, 0.8] falling to 0 at 0 or 1,
    times the share of pixels not clipped to black or white."""
    k = gray.shape[1] / frame_size[0]
    x1, y1, x2, y2 = (int(round(v * k)) for v in box_px)
    crop = gray[max(0, y1):max(y1 + 2, min(gray.shape[0], y2)), max(0, x1):max(x1 + 2, min(gray.shape[1], x2))]
    if crop.size < 9:
        crop = gray
    side = 128 / max(crop.shape)
    c = np.asarray(Image.fromarray((crop * 255).astype(np.uint8)).resize(
        (max(3, round(crop.shape[1] * side)), max(3, round(crop.shape[0] * side))), Image.BILINEAR), np.float32) / 255.0
    lap = 4 * c[1:-1, 1:-1] - c[:-2, 1:-1] - c[2:, 1:-1] - c[1:-1, :-2] - c[1:-1, 2:]
    m = float(c.mean())
    level = min(1.0, min(m, 1 - m) / 0.2)
    unclipped = 1.0 - float(((c < 0.02) | (c > 0.98)).mean())
    return float(lap.var()), level * unclipped


@dataclass
class Track:
    views: list[View]

    @property
    def frames(self) -> set[int]:
        return {v.frame.index for v in self.views}

    @property
    def mean(self) -> np.ndarray:
        m = np.sum([v.obj.embedding * v.weight for v in self.views], axis=0)
        return m / max(float(np.linalg.norm(m)), 1e-9)


def min_support(frames_used: int) -> int:
    """Frames a track must be seen in: 1 with fewer than MIN_FRAMES_FOR_SUPPORT frames, else at least 2 and
    MIN_SUPPORT_SHARE of them (4 of 40: a product seen in one frame of forty is not a track)."""
    if frames_used < MIN_FRAMES_FOR_SUPPORT:
        return 1
    return max(2, math.ceil(MIN_SUPPORT_SHARE * frames_used))


def build_tracks(frames_views: list[list[View]]) -> list[Track]:
    """Associates each frame's views with the tracks so far (greedy on cosine + IoU bonus, one view per
    track per frame), then merges tracks that never share a frame and look alike (MERGE_COS)."""
    tracks: list[Track] = []
    for views in frames_views:
        cand = []
        for i, v in enumerate(views):
            for j, t in enumerate(tracks):
                cos = float(v.obj.embedding @ t.mean)
                iou = float(imaging.box_iou(v.obj.box, t.views[-1].obj.box)[0, 0])
                if cos >= TRACK_MIN_COS or (iou >= TRACK_MIN_IOU and cos >= TRACK_MIN_COS_OVERLAP):
                    cand.append((cos + TRACK_IOU_WEIGHT * iou, i, j))
        used_v, used_t = set(), set()
        for _, i, j in sorted(cand, reverse=True):
            if i not in used_v and j not in used_t:
                tracks[j].views.append(views[i])
                used_v.add(i), used_t.add(j)
        tracks += [Track([v]) for i, v in enumerate(views) if i not in used_v]
    return merge_tracks(tracks, lambda a, b: float(a.mean @ b.mean) >= MERGE_COS)


def merge_tracks(tracks: list[Track], same) -> list[Track]:
    """Merges pairs of tracks that never share a frame and for which ``same(a, b)``, until none is left."""
    tracks = list(tracks)
    merged = True
    while merged:
        merged = False
        for a in range(len(tracks)):
            for b in range(a + 1, len(tracks)):
                if not tracks[a].frames & tracks[b].frames and same(tracks[a], tracks[b]):
                    tracks[a] = Track(sorted(tracks[a].views + tracks[b].views, key=lambda v: v.frame.index))
                    del tracks[b]
                    merged = True
                    break
            if merged:
                break
    return tracks


def is_part_of(a: Track, b: Track) -> bool:
    """Whether the two tracks are one object, one of them boxing a piece of it or a box around it: in the frames
    both were seen in, the smaller of their two boxes lies mostly (on median, >= PART_OF_SHARE of its area) inside
    the other. (Two products side by side do not overlap so.)"""
    boxes = {v.frame.index: v.obj.box for v in b.views}
    inside = []
    for v in a.views:
        if v.frame.index in boxes:
            p, q = v.obj.box, boxes[v.frame.index]
            w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            smaller = min((p[2] - p[0]) * (p[3] - p[1]), (q[2] - q[0]) * (q[3] - q[1]))
            inside.append(w * h / max(smaller, 1e-9))
    return bool(inside) and float(np.median(inside)) >= PART_OF_SHARE


def continues(a: Track, b: Track) -> bool:
    """Whether two tracks never seen in one frame follow one object along one path: every view of the track with
    fewer views lies between two views of the other (in its gaps: a product shown after another one at the same
    place is not its continuation), and on median its box overlaps the other's in the nearest frame before or
    after by IoU >= TRACK_MIN_IOU. (The badly degraded views of a product, occluded or dark, look more like each
    other than like its clear views and start a track of their own in its frames.)"""
    if a.frames & b.frames:
        return False
    small, big = (a, b) if len(a.views) <= len(b.views) else (b, a)
    order = sorted(big.views, key=lambda v: v.frame.index)
    overlaps = []
    for v in small.views:
        before = [w for w in order if w.frame.index < v.frame.index][-1:]
        after = [w for w in order if w.frame.index > v.frame.index][:1]
        if not before or not after:
            return False
        overlaps.append(max(float(imaging.box_iou(v.obj.box, w.obj.box)[0, 0]) for w in before + after))
    return bool(overlaps) and float(np.median(overlaps)) >= TRACK_MIN_IOU


def set_quality(track: Track) -> None:
    """Each view's quality: the square root of its sharpness relative to the track's upper quartile (the
    Laplacian's variance grows with the square of edge contrast; capped at 1), times its exposure. The same
    product in all views, so the ratio compares focus, not texture; the quartile holds while up to a
    quarter of the views are sharper by noise or blocking."""
    ref = float(np.percentile([v.sharpness for v in track.views], 75)) or 1e-9
    for v in track.views:
        v.quality = max(MIN_QUALITY, math.sqrt(min(1.0, v.sharpness / ref)) * v.exposure)


def track_category(track: Track) -> str | None:
    """The category to narrow a track's searches to, or None: the one its views name most (weighted by category
    score), when the mean of its score over all views and of its share among each view's nearest catalog products
    (client/category.py; the views' ``hits`` from the whole catalog) reaches spec.CATEGORY_FILTER_MIN_SCORE."""
    votes: dict[str, float] = defaultdict(float)
    for v in track.views:
        votes[v.obj.category] += v.obj.category_score
    cat = max(votes, key=votes.get)
    share = float(np.mean([narrowing.neighbour_share(cat, [(h.score, h.category) for h in v.hits]) for v in track.views]))
    return cat if narrowing.agreement(votes[cat] / len(track.views), share) >= spec.CATEGORY_FILTER_MIN_SCORE else None


def vote(track: Track, top_k: int) -> list[dict]:
    """The track's products by votes: each view gives ``weight * softmax(sim / T) * sim`` to each of its hits;
    ``votes`` is the share of all the track's votes, ``score`` the best similarity any view had to it."""
    votes: dict[str, float] = defaultdict(float)
    best: dict[str, tuple[float, str]] = {}
    for v in track.views:
        if not v.hits:
            continue
        sims = np.array([h.score for h in v.hits], np.float64)
        share = np.exp((sims - sims.max()) / VOTE_TEMPERATURE)
        share /= share.sum()
        for h, s, sh in zip(v.hits, sims, share):
            votes[h.product_id] += v.weight * sh * max(s, 0.0)
            if h.product_id not in best or s > best[h.product_id][0]:
                best[h.product_id] = (float(s), h.path)
    total = sum(votes.values()) or 1.0
    ranked = sorted(votes, key=lambda p: (-votes[p], -best[p][0], p))[:top_k]
    return [{"product_id": p, "path": best[p][1], "score": round(best[p][0], 4), "votes": round(votes[p] / total, 4)} for p in ranked]


def best_view(track: Track, winner: str | None) -> View:
    def sim(v: View) -> float:
        return next((h.score for h in v.hits if h.product_id == winner), 0.0) if winner else 1.0
    return max(track.views, key=lambda v: (v.weight * max(sim(v), 1e-3), -v.frame.index))


def object_json(track: Track, results: list[dict]) -> dict:
    b = best_view(track, results[0]["product_id"] if results else None)
    o = b.obj
    return {"box": [round(x, 1) for x in o.box], "score": round(o.score, 4), "category": o.category, "fine_class": o.fine_class,
            "whole_image": o.whole_image, "valid": any(v.obj.valid for v in track.views), "searched_in": b.searched_in,
            "frame": b.frame.index,
            "frames": sorted(track.frames), "support": len(track.frames), "results": results}


# --- the pipeline ---------------------------------------------------------------------------------------

def _views(frame: Frame, result) -> tuple[list[View], View]:
    """The frame's reported objects (boxes in original pixels), and its whole-image view."""
    def view(o: DetectedObject) -> View:
        box = tuple(float(x * frame.scale) for x in o.box)
        sharp, expo = region_quality(frame.gray, box, frame.size)
        return View(frame, replace(o, box=box), sharp, expo)
    reported = [view(o) for o in select_objects(result) if not o.whole_image]
    return reported, view(result.whole)


def _infer(frames: Iterable[Frame], client: RetrievalClient, concurrency: int, timing: dict) -> tuple[list[Frame], list]:
    """Sends each frame to the ensemble as soon as it is decoded (``concurrency`` in flight); the frames and, in
    the same order, their ImageResult or BadImage."""
    kept: list[Frame] = []
    futures = []
    first_sent = None
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        it = iter(frames)
        while True:
            t = time.perf_counter()
            frame = next(it, None)
            timing["decode"] += time.perf_counter() - t
            if frame is None:
                break
            first_sent = first_sent or time.perf_counter()
            kept.append(frame)
            futures.append(pool.submit(client.infer, frame.data, f"frame {frame.index}"))
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result())
            except BadImage as exc:
                outcomes.append(exc)
    timing["inference"] = time.perf_counter() - (first_sent or time.perf_counter())
    return kept, outcomes


def answer(frames: list[Frame], results: list, store: QdrantStore, *, top_k: int = 5, category: str | None = None,
           filter_by_category: bool = True, images: dict | None = None, timing: dict | None = None) -> dict:
    """Tracks, searches and votes over frames already through the ensemble (``results``: an ImageResult, or the
    BadImage the server gave, per frame): the dict of search_video without its clip fields."""
    timing = timing if timing is not None else {"decode": 0.0, "inference": 0.0}
    timing.update(search=0.0, voting=0.0)
    t = time.perf_counter()
    frames_views, wholes, skipped = [], [], []
    for frame, res in zip(frames, results):
        if isinstance(res, BadImage):
            skipped.append({"frame": frame.index, "error": str(res)})
            continue
        views, whole = _views(frame, res)
        frames_views.append(views)
        wholes.append(whole)
    if not wholes:
        raise VideoError(f"no frame could be searched: {skipped[0]['error'] if skipped else 'no frames'}")
    need = min_support(len(wholes))
    tracks = build_tracks(frames_views)
    kept_tracks = [tr for tr in tracks if len(tr.frames) >= need and sum(v.obj.valid for v in tr.views) >= min(need, MIN_VALID_VIEWS)]
    dropped = len(tracks) - len(kept_tracks)
    if not kept_tracks:  # nothing detected in enough frames: the whole frames are the one object
        kept_tracks = [Track(wholes)]
    for tr in kept_tracks:
        set_quality(tr)
    timing["voting"] += time.perf_counter() - t
    t = time.perf_counter()
    k = max(top_k, SEARCH_K)
    for tr in kept_tracks:
        for v in tr.views:  # the whole catalog first: the neighbours that decide the category (client/category.py)
            v.hits = store.search(v.obj.embedding, category=category, top_k=max(k, narrowing.NEIGHBOURS))
        cat = track_category(tr) if category is None and filter_by_category else None
        for v in tr.views:
            v.hits = store.search(v.obj.embedding, category=cat, top_k=k) if cat is not None else v.hits[:k]
            v.searched_in = category if category is not None else cat
    timing["search"] = time.perf_counter() - t
    t = time.perf_counter()
    def winner(tr: Track) -> str | None:
        return (vote(tr, 1) or [{"product_id": None}])[0]["product_id"]

    kept_tracks = merge_tracks(kept_tracks, lambda a, b: winner(a) is not None and winner(a) == winner(b) or continues(a, b))
    kept_tracks.sort(key=lambda tr: -sum(v.weight for v in tr.views))
    kept_tracks = [tr for i, tr in enumerate(kept_tracks) if not any(  # a stronger track names the same product
        winner(tr) == winner(big) and (is_part_of(tr, big) or vote(tr, 1)[0]["votes"] < DUPLICATE_MIN_VOTES) for big in kept_tracks[:i])]
    scored = [(tr, vote(tr, top_k)) for tr in kept_tracks]
    objects = [object_json(tr, res) for tr, res in scored]
    timing["voting"] += time.perf_counter() - t
    if images is not None:
        by_index = {f.index: f for f in frames}
        for o in objects:
            images[f"frame:{o['frame']}"] = by_index[o["frame"]].image()
    return {"objects": objects, "frames_used": [w.frame.index for w in wholes], "min_support": need,
            "tracks_dropped": dropped, "skipped": skipped, "timing": timing}


def _run(frames: Iterable[Frame], client: RetrievalClient, store: QdrantStore, *, concurrency: int, **kw) -> dict:
    t_start = time.perf_counter()
    timing = {"decode": 0.0, "inference": 0.0}
    kept, outcomes = _infer(frames, client, concurrency, timing)
    out = answer(kept, outcomes, store, timing=timing, **kw)
    timing["total"] = time.perf_counter() - t_start
    out["timing"] = {k: round(v, 4) for k, v in timing.items()}
    return out


def search_video(source: str | Path | bytes, client: RetrievalClient, store: QdrantStore, *, frames: int = DEFAULT_FRAMES,
                 top_k: int = 5, category: str | None = None, filter_by_category: bool = True, concurrency: int = 4,
                 name: str | None = None, images: dict | None = None) -> dict:
    """One clip (a path or its bytes) -> ``{"image", "kind": "video", "objects", "frame_count", "frames_used", "fps",
    "duration", "size", "timing", ...}``. ``images``: a dict to fill with "frame:<index>" -> each object's best
    view (for client.gallery.write_report). VideoError for a file that is not a readable, non-empty video."""
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    t = time.perf_counter()
    info = probe(source)
    probe_s = time.perf_counter() - t
    out = _run(iter_frames(source, frames, info=info), client, store, top_k=top_k, category=category,
               filter_by_category=filter_by_category, concurrency=concurrency, images=images)
    out["timing"]["decode"] = round(out["timing"]["decode"] + probe_s, 4)
    out["timing"]["total"] = round(out["timing"]["total"] + probe_s, 4)
    return {"image": name or _name(source), "kind": "video", "frame_count": info.frame_count, "fps": round(info.fps, 3),
            "duration": round(info.duration, 3), "size": list(info.size), **out}


def search_frames(frames: Iterable[Frame | Image.Image | np.ndarray | bytes], client: RetrievalClient, store: QdrantStore, *,
                  top_k: int = 5, category: str | None = None, filter_by_category: bool = True, concurrency: int = 4,
                  name: str = "<frames>", images: dict | None = None) -> dict:
    """Frames already at hand (PIL images, HxWx3 uint8 arrays, encoded images or Frame objects; frame numbers
    are their positions unless Frame objects say otherwise), voted as one scene: the same dict as search_video,
    with ``frame_count`` the number given. Encoded images are sent as they are; one that cannot be decoded
    here raises imaging.ImageDecodeError naming its position."""
    prepared: list[Frame] = []
    for i, f in enumerate(frames):
        if isinstance(f, Frame):
            prepared.append(f)
        elif isinstance(f, (bytes, bytearray)):
            try:
                prepared.append(Frame.from_image(i, imaging.decode(bytes(f)), data=bytes(f)))
            except imaging.ImageDecodeError as exc:
                raise imaging.ImageDecodeError(f"frame {i}: {exc}") from exc
        elif isinstance(f, np.ndarray):
            prepared.append(Frame.from_image(i, Image.fromarray(np.asarray(f, np.uint8))))
        else:
            prepared.append(Frame.from_image(i, f))
    if not prepared:
        raise VideoError(f"{name}: no frames given")
    out = _run(prepared, client, store, top_k=top_k, category=category, filter_by_category=filter_by_category,
               concurrency=concurrency, images=images)
    return {"image": name, "kind": "frames", "frame_count": len(prepared), **out}


def format_report(report: dict) -> str:
    """The text ``client.search`` prints for a video (or photos voted as one)."""
    t = report.get("timing", {})
    used = report.get("frames_used", [])
    head = (f"{report.get('image')}: {report.get('kind', 'video')}, {report.get('frame_count')} frame(s), {len(used)} used "
            f"({', '.join(map(str, used))}), {len(report['objects'])} object(s); "
            + ", ".join(f"{k} {t[k]:.2f} s" for k in ("decode", "inference", "search", "voting", "total") if k in t))
    lines = [head]
    for i, o in enumerate(report["objects"], 1):
        what = "whole frame (no detection)" if o["whole_image"] else f"box {[round(v) for v in o['box']]} score {o['score']:.2f}"
        lines.append(f"  object {i}: {what} in frame {o['frame']}, category {o['category']} ({o['fine_class']}), "
                     f"seen in {o['support']} frame(s), searched in {o.get('searched_in') or 'the whole catalog'}")
        if not o["results"]:
            lines.append("    no catalog items in this category")
        for r, hit in enumerate(o["results"], 1):
            lines.append(f"    {r:>2}. {hit['product_id']:<40} {hit['score']:.3f}  votes {hit['votes']:.2f}  {hit['path']}")
    for s in report.get("skipped", []):
        lines.append(f"  frame {s['frame']} skipped: {s['error']}")
    return "\n".join(lines)
