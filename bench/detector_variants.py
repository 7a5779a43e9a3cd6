"""Where the served detector's boxes come from, measured: python -m bench.detector_variants [--set hard] [--scenes 300]
[--seed 555] [--variants shipped,no-last-step,...] [--heads data/build/heads_quick.pt].

The served detector (export/models.py: Detector) and variants of its test-time steps, with the same trained head
and refiner, on held-out products pasted on held-out backgrounds, each photo saved as JPEG (quality 90) and read
back as a user's file, then the client's ``letterbox``. ``--set``: ``eval`` (export.evaluate's scenes, every
held-out product), ``hard`` or ``pairs`` (bench.photo_search's settings, real cutouts only). Per variant: AP@0.5,
recall / precision at the threshold, the products the client's rows (``client.search.select_rows``) box at
IoU >= 0.5 and >= 0.7, objects per photo, boxes by object size, and the time. ``shipped`` and ``no-last-step``
are checked against ``Detector.forward`` on the first photo. Prints one JSON line per variant (docs/measurements.md, "A last
refinement on the second scale"). A benchmark that prints numbers, not a test.

Variants: shipped (flip test, second scale, refiner twice on each scale, the merged boxes refined once more on the
second scale's maps), no-last-step (without that last refinement), last-twice (two last steps), last-on-320 (the last step
on the photo's own maps), all-on-second (every box refined on the second scale's maps, no last step), last-at-512 /
last-at-640 (the last step on a third backbone pass at that side, upsampled).
"""
from __future__ import annotations

import argparse
import io
import json
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.photo_search import BOXED_IOU, CHECKS, TIGHT_IOU
from client import imaging, spec
from client.search import select_rows
from export import repository
from export.build import ROOT
from export.checkpoint import Heads
from export.evaluate import load_setup
from export.models import decode_peaks, merge_boxes
from export.scenes import Backgrounds, make_scene
from export.train import detection_metrics

VARIANTS = ("shipped", "no-last-step", "last-twice", "last-on-320", "all-on-second", "last-at-512", "last-at-640")


def scenes(kind, n, seed):
    """``n`` photos of held-out products: (detector inputs (det_image, crop_source), image size, true boxes, each
    object's scale)."""
    setup = load_setup(SimpleNamespace(repository=repository.REPOSITORY, no_photoset=False, synthetic_per_class=None))
    src = setup.sources
    bgs = Backgrounds(src.eval_backgrounds)
    rng = np.random.default_rng(seed)
    if kind == "eval":
        prods, kw = src.held_out, {}
    else:
        prods, kw = [p for p in src.held_out if "__" in p.product_id], CHECKS[kind]
    out = []
    for _ in range(n):
        s = make_scene(prods, bgs, rng, **kw)
        img = Image.open(io.BytesIO(imaging.encode_jpeg(s.image, 90))).convert("RGB")
        det, src, size = imaging.letterbox(img)
        gt = np.array([o.box for o in s.objects], np.float32).reshape(-1, 4)
        sides = np.array([o.transform["scale"] for o in s.objects])
        out.append(((det, src), size, gt, sides))
    return out


class Variant:
    """The served detector (export.models.Detector: its ``scales`` and per-scale ``_boxes``; it needs the second
    scale and the refiner on, as served) with the step after the merge of the two scales changed; ``shipped`` is
    the served one. ``main`` checks ``shipped`` and ``no-last-step`` against Detector itself."""

    def __init__(self, det, name):
        self.d, self.name = det, name

    def refine(self, maps, boxes, steps, members=None):
        """``members``: the second scale's (Detector.second_members: its maps hold only the first trunks)."""
        for _ in range(steps):
            boxes = self.d.refiner(maps[0], maps[1], boxes, maps[5], members)
        return boxes

    @torch.no_grad()
    def __call__(self, x, src):
        d, v = self.d, self.name
        assert d.second_scale and d.refiner is not None, "the served detector's settings"
        first, second = d.scales(x, src)
        if v == "all-on-second":  # every box refined on the second scale's maps, no last step
            b1, s1 = decode_peaks(*first[2:5], d.k)
            b1 = self.refine(second, b1, d.refine_steps, d.second_members)
        else:
            b1, s1 = d._boxes(*first)
        b2, s2 = d._boxes(*second, members=d.second_members)
        boxes, scores = merge_boxes(b1, s1, b2, s2 * d.second_weight, d.k)
        if v in ("no-last-step", "all-on-second"):
            return boxes, scores
        if v in ("shipped", "last-twice"):  # on the second scale's maps
            return self.refine(second, boxes, d.merged_refine_steps if v == "shipped" else 2, d.second_members), scores
        if v == "last-on-320":
            return self.refine(first, boxes, 1), scores
        if v.startswith("last-at-"):  # a third backbone pass at that side, used only for the last step
            z = int(v[len("last-at-"):])
            z8, z16, z32 = d.backbone.detector_maps(F.interpolate(x.float(), size=(z, z), mode="bilinear", align_corners=False),
                                                    d.stride8)
            return self.refine((z16, z32, None, None, None, z8), boxes, 1), scores
        raise ValueError(v)


def measure(rows, name):
    """The detector's figures over ``rows`` of (scene, (boxes, scores))."""
    boxes_all, scores_all, gts = [], [], []
    boxed = tight = total = reported = 0
    bins = {}
    for (det, size, gt, sides), (b, s) in rows:
        m = float(max(size))
        boxes_all.append(b); scores_all.append(s); gts.append(gt / m)
        px = np.concatenate([b * m, np.zeros((1, 4), np.float32)])
        sc = np.concatenate([s, [0.0]]).astype(np.float32)
        valid = np.concatenate([s >= spec.SCORE_THRESHOLD, [True]])
        sel = select_rows({spec.BOXES.name: px, spec.SCORES.name: sc, spec.VALID.name: valid})
        reported += len(sel)
        best = imaging.box_iou(gt, px[sel]).max(1) if len(sel) else np.zeros(len(gt))
        live = b[s > 0] * m  # the merge scores the rows it suppressed 0
        anyk = imaging.box_iou(gt, live).max(1) if len(live) else np.zeros(len(gt))
        for j in range(len(gt)):
            key = "<0.15" if sides[j] < 0.15 else "0.15-0.2" if sides[j] < 0.2 else "0.2-0.3" if sides[j] < 0.3 else ">=0.3"
            t = bins.setdefault(key, [0, 0, 0])
            t[0] += 1; t[1] += best[j] >= BOXED_IOU; t[2] += anyk[j] >= BOXED_IOU
        boxed += int((best >= BOXED_IOU).sum()); tight += int((best >= TIGHT_IOU).sum()); total += len(gt)
    dm = detection_metrics(boxes_all, scores_all, gts)
    r = {"variant": name, "ap50": dm["ap50"], "recall": dm["recall_at_threshold"], "precision": dm["precision_at_threshold"],
         "boxed": round(boxed / total, 4), "tight": round(tight / total, 4), "objects_per_photo": round(reported / len(rows), 3),
         "bins": {k: f"{v[1] / v[0]:.3f} (any {v[2] / v[0]:.3f}, n {v[0]})" for k, v in sorted(bins.items())}}
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("eval", "hard", "pairs"), default="hard")
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=555)
    ap.add_argument("--variants", default="shipped,no-last-step", help=f"comma-separated, of {','.join(VARIANTS)}")
    ap.add_argument("--heads", default=str(ROOT / "data" / "build" / "heads_quick.pt"))
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        ap.error(f"--variants: unknown {sorted(set(variants) - set(VARIANTS))}; known: {','.join(VARIANTS)}")
    torch.set_num_threads(2)
    det = Heads.load(args.heads).detector_model()
    data = scenes(args.set, args.scenes, args.seed)
    x = tuple(torch.from_numpy(a) for a in data[0][0])
    last = det.merged_refine_steps
    try:
        with torch.no_grad():
            for name, steps in (("shipped", last), ("no-last-step", 0)):
                det.merged_refine_steps = steps
                if any(float((a - b).abs().max()) > 1e-5 for a, b in zip(det(*x), Variant(det, name)(*x))):
                    raise SystemExit(f"error: the {name!r} variant no longer matches export.models.Detector; update this benchmark")
    finally:
        det.merged_refine_steps = last
    for v in variants:
        var = Variant(det, v)
        t = time.time()
        rows = [(s, tuple(a[0].numpy() for a in var(*map(torch.from_numpy, s[0])))) for s in data]
        r = measure(rows, v)
        r["seconds"] = round(time.time() - t, 1)  # the detector on every photo, and the metrics
        r["set"] = f"{args.set}, {args.scenes} scenes, seed {args.seed}"
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
