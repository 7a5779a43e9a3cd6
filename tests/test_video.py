"""Search by video (client/video.py, export/video_clips.py): decoding, sampling, tracking and voting on real
H.264 clips written by PyAV, then end to end against a real tritonserver and the embedded Qdrant engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client import imaging, video, videoframes
from client.result import DetectedObject
from client.store import Hit
from export.products import synthetic_products
from export.scenes import Backgrounds, procedural_background
from export.video_clips import DEGRADATIONS, degrade, make_clip, write_mp4

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def products():
    return synthetic_products(1, seed=3)


@pytest.fixture(scope="module")
def clip(products, tmp_path_factory):
    """3 s at 10 fps, 320x180, one product, no degraded frames."""
    path = tmp_path_factory.mktemp("clip") / "one.mp4"
    truth = make_clip(path, products[:1], Backgrounds([]), np.random.default_rng(0), size=(320, 180), seconds=3, fps=10,
                      degraded_share=0.0)
    return path, truth


def _reference_frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [np.asarray(f.to_image().convert("L"), np.float32) for f in c.decode(video=0)]


# --- decoding and sampling ----------------------------------------------------------------------------

def test_sample_indices_are_even_and_cover_short_clips():
    assert videoframes.sample_indices(300, 10) == [15, 45, 75, 105, 135, 165, 195, 225, 255, 285]
    assert videoframes.sample_indices(4, 10) == [0, 1, 2, 3]
    assert videoframes.sample_indices(1, 3) == [0]
    with pytest.raises(ValueError):
        videoframes.sample_indices(10, 0)


def test_probe_reads_the_clip_header(clip):
    path, truth = clip
    info = videoframes.probe(path)
    assert (info.frame_count, info.fps, info.size) == (30, 10.0, (320, 180)) and truth.frame_count == 30
    assert info.duration == pytest.approx(3.0, abs=0.15)


def test_sampled_frames_are_the_frames_at_their_indices(clip):
    path, _ = clip
    ref = _reference_frames(path)
    frames = list(videoframes.iter_frames(path, 5, skip_similar=0.0))
    assert [f.index for f in frames] == videoframes.sample_indices(30, 5) == [3, 9, 15, 21, 27]
    for f in frames:
        got = np.asarray(imaging.decode(f.data).convert("L"), np.float32)
        diffs = [np.abs(got - r).mean() for r in ref]
        assert int(np.argmin(diffs)) == f.index and diffs[f.index] < 4.0  # JPEG of that very frame
        assert f.size == (320, 180) and f.time == pytest.approx(f.index / 10, abs=0.01)


def test_bytes_and_path_give_the_same_frames(clip):
    path, _ = clip
    a = [(f.index, f.data) for f in videoframes.iter_frames(path, 4)]
    b = [(f.index, f.data) for f in videoframes.iter_frames(path.read_bytes(), 4)]
    assert a == b and len(a) == 4


def test_keyframe_seeking_finds_frames_far_into_a_long_gop_clip(tmp_path, monkeypatch):
    """A 40 s clip with a keyframe every 2 s: with a short seek gap the demuxer seeks, and still returns the
    right frames (numbered by their own timestamps)."""
    imgs = [Image.new("RGB", (64, 64), (int(255 * i / 399), 40, 255 - int(255 * i / 399))) for i in range(400)]
    path = tmp_path / "long.mp4"
    write_mp4(path, imgs, fps=10, size=(64, 64))
    monkeypatch.setattr(videoframes, "SEEK_MIN_GAP", 3.0)
    frames = list(videoframes.iter_frames(path, 5, skip_similar=0.0))
    assert [f.index for f in frames] == [40, 120, 200, 280, 360]
    for f in frames:
        red = np.asarray(imaging.decode(f.data), np.float32)[..., 0].mean()
        assert abs(red - 255 * f.index / 399) < 6


def test_near_identical_frames_are_skipped(tmp_path):
    still = Image.new("RGB", (96, 64), (120, 90, 60))
    path = tmp_path / "still.mp4"
    write_mp4(path, [still] * 20 + [Image.new("RGB", (96, 64), (20, 200, 220))] * 20, fps=10, size=(96, 64))
    frames = list(videoframes.iter_frames(path, 8))
    assert [f.index for f in frames] == [2, 22]  # one per distinct picture, the first of each run
    assert len(list(videoframes.iter_frames(path, 8, skip_similar=0.0))) == 8


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"\x00\x00\x00\x18ftypmp42" + bytes(200), "cannot read video"),
                                             (os.urandom(3000), "cannot read video")])
def test_unreadable_or_empty_video_is_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    assert videoframes.is_video(path)  # the suffix decides for what neither Pillow nor PyAV can read
    with pytest.raises(video.VideoError, match=f"{path}.*{reason}"):
        list(videoframes.iter_frames(path, 5))
    with pytest.raises(video.VideoError, match=reason):
        videoframes.probe(content)


def test_truncated_clip_gives_the_frames_before_the_cut(clip, tmp_path):
    path, _ = clip
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    try:
        frames = list(videoframes.iter_frames(cut, 10))
    except video.VideoError as exc:  # an MP4 cut before its index: no frame to give, and it says so
        assert str(cut) in str(exc)
    else:
        assert frames and all(f.index < 30 for f in frames)


def test_videos_are_told_from_images_by_content(clip, tmp_path):
    path, _ = clip
    disguised = tmp_path / "clip.jpg"
    disguised.write_bytes(path.read_bytes())
    photo = tmp_path / "photo.mp4"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(photo, "JPEG")
    assert videoframes.is_video(path) and videoframes.is_video(disguised) and videoframes.is_video(path.read_bytes())
    assert not videoframes.is_video(photo) and not videoframes.is_video(photo.read_bytes())


# --- clip generator -----------------------------------------------------------------------------------

def test_clip_truth_boxes_follow_the_product(clip):
    _, truth = clip
    boxes = np.array(truth.objects[0].boxes)
    assert boxes.shape == (30, 4) and np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.abs(np.diff(boxes[:, :2], axis=0)).max() > 0  # it moves


def test_two_product_clips_keep_products_apart_and_degrade_a_share(products, tmp_path):
    truth = make_clip(tmp_path / "two.mp4", products[:2], Backgrounds([]), np.random.default_rng(1), size=(320, 180),
                      seconds=4, fps=10, degraded_share=0.3)
    assert len(truth.objects) == 2 and len(truth.degraded) == 12 and set(truth.degraded.values()) <= set(DEGRADATIONS)
    a, b = (np.array(o.boxes) for o in truth.objects)
    assert float(imaging.box_iou(a, b).diagonal().max()) < 0.3


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_each_degradation_changes_the_frame_and_blur_and_dark_lower_the_view_quality(products, kind):
    rng = np.random.default_rng(0)
    base = procedural_background(rng, (320, 180))
    cut = products[0].cutout.resize((100, 100))
    base.paste(cut, (110, 40), cut)
    box = (110.0, 40.0, 210.0, 140.0)
    bad = degrade(base, kind, rng, [list(box)])
    assert np.abs(np.asarray(bad, np.float32) - np.asarray(base, np.float32)).mean() > 1
    if kind in ("blur", "dark"):
        q0 = video.region_quality(np.asarray(base.convert("L"), np.float32) / 255, box, base.size)
        q1 = video.region_quality(np.asarray(bad.convert("L"), np.float32) / 255, box, bad.size)
        assert q1[0] * q1[1] < 0.5 * q0[0] * q0[1]


# --- tracking and voting (real embeddings are unit vectors; these are built to be) ------------------------

def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def _view(frame: int, box, emb, score=0.9, sharp=1.0, expo=1.0, category="drinks", cat_score=0.9) -> video.View:
    f = videoframes.Frame(frame, b"", (640, 360), np.zeros((2, 2), np.float32))
    obj = DetectedObject(tuple(map(float, box)), score, "bottle", category, cat_score, _unit(emb), False, True, 0)
    return video.View(f, obj, sharp, expo)


def _two_product_views(n=10, seed=0):
    rng = np.random.default_rng(seed)
    a, b = _unit(rng.normal(size=64)), _unit(rng.normal(size=64))
    frames = []
    for k in range(n):
        views = [_view(k, (10 + 5 * k, 10, 110 + 5 * k, 110), a + 0.3 * rng.normal(size=64) / 8),
                 _view(k, (400 - 5 * k, 50, 500 - 5 * k, 150), b + 0.3 * rng.normal(size=64) / 8)]
        frames.append(views[::-1] if k % 2 else views)
    return frames


def test_two_products_give_two_tracks_each_whole():
    tracks = video.build_tracks(_two_product_views())
    assert len(tracks) == 2 and all(len(t.frames) == 10 for t in tracks)
    assert {t.views[0].obj.box[0] for t in tracks} == {10.0, 400.0}
    for t in tracks:
        xs = [v.obj.box[0] for v in t.views]
        assert xs == sorted(xs) or xs == sorted(xs, reverse=True)  # each track holds one product's path


def test_a_product_that_leaves_and_returns_is_one_track():
    rng = np.random.default_rng(1)
    a = _unit(rng.normal(size=64))
    frames = [[_view(k, (10, 10, 100, 100) if k < 4 else (500, 200, 600, 300), a + rng.normal(size=64) / 30)] if k not in (4, 5) else []
              for k in range(10)]
    tracks = video.build_tracks(frames)
    assert len(tracks) == 1 and sorted(tracks[0].frames) == [0, 1, 2, 3, 6, 7, 8, 9]


def test_min_support_needs_a_share_of_the_frames():
    assert [video.min_support(n) for n in (1, 3, 4, 10, 25, 40, 100)] == [1, 1, 2, 2, 2, 4, 8]


def test_votes_follow_the_sharp_views_over_the_blurred_majority():
    """6 views: 2 sharp and well exposed see product P clearly; 4 blurred or dark ones lean to Q by a hair.
    The vote (similarity x detection score x view quality) picks P; a plain majority of top-1s would pick Q."""
    emb = np.ones(8)
    views = [_view(k, (0, 0, 50, 50), emb, sharp=1.0) for k in range(2)]
    views += [_view(k, (0, 0, 50, 50), emb, sharp=0.05, expo=0.5) for k in range(2, 6)]
    track = video.Track(views)
    for k, v in enumerate(views):
        v.hits = [Hit("P", "p.jpg", 0.9, "", {}), Hit("Q", "q.jpg", 0.7, "", {})] if k < 2 else \
                 [Hit("Q", "q.jpg", 0.62, "", {}), Hit("P", "p.jpg", 0.6, "", {})]
    video.set_quality(track)
    assert [round(v.quality, 3) for v in views[:2]] == [1.0, 1.0] and all(v.quality < 0.5 for v in views[2:])
    res = video.vote(track, top_k=2)
    assert [r["product_id"] for r in res] == ["P", "Q"]
    assert res[0]["score"] == 0.9 and res[0]["path"] == "p.jpg" and 0.5 < res[0]["votes"] < 1 and sum(r["votes"] for r in res) == pytest.approx(1, abs=1e-3)
    assert video.best_view(track, "P").frame.index in (0, 1)


def test_tracks_with_the_same_winner_never_seen_together_merge():
    a = video.Track([_view(0, (0, 0, 9, 9), np.ones(4)), _view(1, (0, 0, 9, 9), np.ones(4))])
    b = video.Track([_view(3, (0, 0, 9, 9), -np.ones(4)), _view(4, (0, 0, 9, 9), -np.ones(4))])
    c = video.Track([_view(4, (50, 0, 59, 9), np.ones(4))])
    merged = video.merge_tracks([a, b, c], lambda x, y: True)
    assert sorted(sorted(t.frames) for t in merged) == [[0, 1, 3, 4], [4]]


# --- end to end: a real tritonserver and the embedded Qdrant engine ----------------------------------------

@pytest.fixture(scope="module")
def catalog(client, demo, tmp_path_factory):
    """The demo catalog indexed into its own store; its path."""
    from client.catalog import index_folder
    from client.store import QdrantStore

    path = tmp_path_factory.mktemp("qdrant_video")
    with QdrantStore(path=path) as store:
        report = index_folder(demo / "catalog", client, store, category_from_folders=True)
    assert report.indexed > 0 and not report.skipped
    return path


@pytest.fixture(scope="module")
def demo_products():
    """The products of the demo catalog (export.demo_data with no photoset: the quick profile's drawn products)."""
    from export.build import PROFILES
    from export.dataset import DataConfig, load_sources

    return load_sources(DataConfig(synthetic_per_class=PROFILES["quick"][0]["synthetic_per_class"], photoset=None)).products


def _clip_of(products, path: Path, seed: int, **kw):
    args = dict(size=(480, 270), seconds=3, fps=10, degraded_share=0.3) | kw
    return make_clip(path, products, Backgrounds([]), np.random.default_rng(seed), **args)


def _top1(obj) -> str | None:
    return obj["results"][0]["product_id"] if obj["results"] else None


@pytest.mark.integration
def test_a_clip_of_a_catalog_product_finds_it_at_top1(client, catalog, demo_products, tmp_path):
    from client.store import QdrantStore

    product = demo_products[len(demo_products) // 3]
    truth = _clip_of([product], tmp_path / "one.mp4", seed=11)
    images: dict = {}
    with QdrantStore(path=catalog) as store:
        rep = video.search_video(tmp_path / "one.mp4", client, store, frames=10, top_k=3, images=images)
        folder = store.get_product(product.product_id)[0]["category"]
        forced = video.search_video(tmp_path / "one.mp4", client, store, frames=10, top_k=3, category=folder)
    assert rep["kind"] == "video" and rep["frame_count"] == 30 and 2 <= len(rep["frames_used"]) <= 10
    first = rep["objects"][0]
    # folder categories hold none of the classifier's names, so nothing is narrowed; a category asked for is searched
    assert all(o["searched_in"] is None for o in rep["objects"])
    assert all(o["searched_in"] == folder for o in forced["objects"]) and _top1(forced["objects"][0]) == product.product_id
    assert _top1(first) == product.product_id, json.dumps(rep, indent=1)
    assert [_top1(o) for o in rep["objects"]].count(product.product_id) == 1
    assert first["frame"] in first["frames"] and set(first["frames"]) <= set(rep["frames_used"])
    assert first["support"] >= video.min_support(len(rep["frames_used"]))
    box = truth.objects[0].boxes[first["frame"]]
    assert imaging.box_iou(first["box"], box)[0, 0] >= 0.5  # its box, in its best frame's pixels
    assert set(first["results"][0]) == {"product_id", "path", "score", "votes"} and 0 < first["results"][0]["votes"] <= 1
    assert set(rep["timing"]) >= {"decode", "inference", "search", "voting", "total"}
    assert set(images) == {f"frame:{o['frame']}" for o in rep["objects"]} and images[f"frame:{first['frame']}"].size == (480, 270)


@pytest.mark.integration
def test_a_two_product_clip_reports_both_each_once(client, catalog, demo_products, tmp_path):
    from client.store import QdrantStore

    a, b = demo_products[2], demo_products[-3]
    assert a.category != b.category
    _clip_of([a, b], tmp_path / "two.mp4", seed=5)
    with QdrantStore(path=catalog) as store:
        rep = video.search_video((tmp_path / "two.mp4").read_bytes(), client, store, frames=10)  # bytes, as a web upload
    named = [_top1(o) for o in rep["objects"]]
    assert named.count(a.product_id) == 1 and named.count(b.product_id) == 1, json.dumps(rep, indent=1)
    assert rep["image"] == "<bytes>"


@pytest.mark.integration
def test_a_clip_with_nothing_to_detect_falls_back_to_whole_frames(client, catalog, tmp_path):
    from client.store import QdrantStore

    path = tmp_path / "plain.mp4"
    write_mp4(path, [Image.new("RGB", (160, 96), (90 + 12 * k, 90 + 12 * k, 100)) for k in range(10)], fps=10, size=(160, 96))
    with QdrantStore(path=catalog) as store:
        rep = video.search_video(path, client, store, frames=10)
    assert len(rep["objects"]) == 1 and rep["objects"][0]["whole_image"]
    assert rep["objects"][0]["frames"] == rep["frames_used"] and len(rep["frames_used"]) >= 4


@pytest.mark.integration
def test_photos_of_one_scene_are_voted_together(client, catalog, demo_products, tmp_path):
    from client.store import QdrantStore

    product = demo_products[len(demo_products) // 2]
    _clip_of([product], tmp_path / "c.mp4", seed=3, degraded_share=0.0)
    frames = [imaging.decode(f.data) for f in videoframes.iter_frames(tmp_path / "c.mp4", 3)]
    with QdrantStore(path=catalog) as store:
        rep = video.search_frames([np.asarray(f) for f in frames], client, store, name="three photos")
    assert rep["frame_count"] == 3 and rep["frames_used"] == [0, 1, 2]
    assert _top1(rep["objects"][0]) == product.product_id, json.dumps(rep, indent=1)


def _cli(args, triton, catalog):
    env = dict(os.environ, TRITON_URL=triton.grpc_url, QDRANT_PATH=str(catalog))
    return subprocess.run([sys.executable, "-m", "client.search", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.mark.integration
def test_search_cli_detects_a_video_and_writes_json_and_a_gallery(triton, catalog, demo_products, tmp_path):
    product = demo_products[1]
    _clip_of([product], tmp_path / "clip.bin", seed=2)  # no video suffix: told by content
    page = tmp_path / "v.html"
    out = _cli([tmp_path / "clip.bin", "--json", "--frames", "8", "--top-k", "3", "--html", page], triton, catalog)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["kind"] == "video" and rep["frame_count"] == 30 and len(rep["frames_used"]) <= 8
    assert _top1(rep["objects"][0]) == product.product_id
    for o in rep["objects"]:
        assert {"box", "score", "category", "searched_in", "frame", "frames", "results"} <= set(o) and 1 <= len(o["results"]) <= 3
    html = page.read_text()
    n_results = sum(len(o["results"]) for o in rep["objects"])
    n_frames = len({o["frame"] for o in rep["objects"]})
    assert html.count("data:image/jpeg;base64,") == n_frames + n_results and product.product_id in html
    text = _cli([tmp_path / "clip.bin", "--frames", "8"], triton, catalog)
    assert text.returncode == 0 and "votes" in text.stdout and product.product_id in text.stdout


@pytest.mark.integration
def test_search_cli_bad_video_is_named_and_the_batch_goes_on(triton, catalog, demo, tmp_path):
    empty, broken = tmp_path / "empty.mp4", tmp_path / "broken.mov"
    empty.write_bytes(b"")
    broken.write_bytes(b"\x00\x00\x00\x18ftypqt  " + os.urandom(500))
    photo = demo / "queries" / "scene_0.jpg"
    out = _cli([empty, photo, broken, "--json"], triton, catalog)
    assert out.returncode == 2
    assert f"error: {empty}: cannot read video: empty file" in out.stderr and f"error: {broken}: cannot read video" in out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["image"] == str(photo)  # the photo between them was searched


@pytest.mark.integration
def test_search_cli_as_one_votes_over_photos(triton, catalog, demo_products, tmp_path):
    product = demo_products[4]
    _clip_of([product], tmp_path / "c.mp4", seed=8, degraded_share=0.0)
    paths = []
    for f in videoframes.iter_frames(tmp_path / "c.mp4", 3):
        paths.append(tmp_path / f"p{f.index}.jpg")
        paths[-1].write_bytes(f.data)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    out = _cli([*paths, bad, "--as-one", "--json"], triton, catalog)
    assert out.returncode == 2 and f"{bad}: cannot decode" in out.stderr
    rep = json.loads(out.stdout)
    assert rep["inputs"][:3] == [str(p) for p in paths] and rep["frames_used"] == [0, 1, 2]
    assert _top1(rep["objects"][0]) == product.product_id
    mixed = _cli([paths[0], tmp_path / "c.mp4", "--as-one"], triton, catalog)
    assert mixed.returncode == 2 and "is a video" in mixed.stderr


def test_a_piece_of_an_object_is_part_of_it_a_neighbour_is_not():
    big = video.Track([_view(k, (100, 100, 300, 300), np.ones(4)) for k in range(4)])
    piece = video.Track([_view(k, (120, 150, 200, 260), np.ones(4)) for k in range(1, 3)])
    neighbour = video.Track([_view(k, (320, 100, 500, 300), np.ones(4)) for k in range(4)])
    later = video.Track([_view(k, (120, 150, 200, 260), np.ones(4)) for k in range(5, 7)])
    assert video.is_part_of(piece, big) and not video.is_part_of(neighbour, big) and not video.is_part_of(later, big)
    assert video.is_part_of(big, piece)  # a box around the piece: the same object either way round


def test_degraded_views_in_a_products_path_continue_its_track():
    """A product's occluded views (an embedding unlike its clear views') in the frames its track misses, where its
    box is in the neighbouring frames: one path. Views elsewhere in the frame, or in frames it was seen in, are not."""
    clear = video.Track([_view(k, (100 + 10 * k, 100, 200 + 10 * k, 200), np.ones(4)) for k in (0, 1, 3, 4, 6)])
    occluded = video.Track([_view(k, (105 + 10 * k, 110, 195 + 10 * k, 210), -np.ones(4)) for k in (2, 5)])
    elsewhere = video.Track([_view(k, (400, 100, 500, 200), -np.ones(4)) for k in (2, 5)])
    together = video.Track([_view(k, (105 + 10 * k, 110, 195 + 10 * k, 210), -np.ones(4)) for k in (1, 2)])
    assert video.continues(occluded, clear) and video.continues(clear, occluded)
    assert not video.continues(elsewhere, clear) and not video.continues(together, clear)


def test_a_product_shown_after_another_at_the_same_place_is_not_its_continuation():
    """A seller swaps products in the hand: the second one's track follows the first's in time at the same place,
    but not inside its gaps, so it stays an object of its own."""
    first = video.Track([_view(k, (100, 100, 200, 200), np.ones(4)) for k in range(0, 5)])
    second = video.Track([_view(k, (102, 100, 202, 200), -np.ones(4)) for k in range(5, 9)])
    assert not video.continues(first, second) and not video.continues(second, first)


def test_view_statistics_split_views_by_product_frame_and_degradation():
    """bench.video_views (the statistics behind the tracking constants): cosines within a product, to its clear
    views by kind of degraded frame, across products, and box IoUs one sampled frame apart."""
    from bench.video_views import clip_stats, summary

    e = np.eye(4, dtype=np.float32)
    box = lambda x: np.array([x, 0, x + 10, 10], np.float32)  # noqa: E731
    views = [{"frame": 0, "product": "a", "box": box(0), "emb": e[0], "kind": ""},
             {"frame": 1, "product": "a", "box": box(5), "emb": e[0], "kind": ""},
             {"frame": 2, "product": "a", "box": box(5), "emb": e[1], "kind": "blur"},
             {"frame": 0, "product": "b", "box": box(50), "emb": e[2], "kind": ""},
             {"frame": 1, "product": None, "box": box(80), "emb": e[3], "kind": ""}]
    acc = {k: [] for k in ("same product, two frames", "same product, two clear frames", "views of two products, one frame",
                           "view to another product's or clutter's mean", "box IoU, same product, next sampled frame",
                           "box IoU, another object, next sampled frame")}
    clip_stats(views, acc)
    assert sorted(acc["same product, two frames"]) == [0.0, 0.0, 1.0]
    assert acc["same product, two clear frames"] == [1.0]
    assert acc["clear view to its product's other clear views"] == [1.0, 1.0]
    assert acc["blur view to its product's clear views"] == [0.0]
    assert acc["views of two products, one frame"] == [0.0, 0.0]  # a-b in frame 0, both ways
    assert acc["box IoU, same product, next sampled frame"] == pytest.approx([5 / 15, 1.0])
    s = summary(acc)
    assert s["same product, two frames"]["n"] == 3 and s["same product, two frames"]["median"] == 0.0
