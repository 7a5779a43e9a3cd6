"""export/eval_misses.py: detector recall by object size and background, and the picture of misses."""
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from client import spec
from export.eval_misses import BUSY_GRADIENT, background_clutter, detector_misses, misses_png


@dataclass
class Q:
    scene: int
    product_id: str
    gt_box: tuple
    transform: dict
    background: str
    clutter: float


@dataclass
class S:
    boxes: np.ndarray
    scores: np.ndarray
    valid: np.ndarray
    gt: np.ndarray
    first: int

    def outputs(self):
        return {spec.BOXES.name: self.boxes, spec.SCORES.name: self.scores, spec.VALID.name: self.valid}


def _scene(first, gt, found_box, score):
    boxes = np.zeros((spec.NUM_ROWS, 4), np.float32)
    boxes[-1] = [0, 0, 200, 200]
    scores = np.zeros(spec.NUM_ROWS, np.float32)
    boxes[0], scores[0] = found_box, score
    valid = scores >= spec.SCORE_THRESHOLD
    return S(boxes, scores, valid, np.array([gt], np.float32), first)


def test_clutter_separates_plain_from_busy_backgrounds():
    plain = Image.new("RGB", (200, 200), (120, 130, 140))
    busy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    box = (80, 80, 120, 120)
    assert background_clutter(plain, box, [box]) < 1.0
    assert background_clutter(busy, box, [box]) > BUSY_GRADIENT
    # the object itself does not count: a busy object on a plain background stays plain
    obj = plain.copy()
    obj.paste(busy.crop(box), box[:2])
    assert background_clutter(obj, box, [box]) < 1.0


def test_recall_per_bin_and_misses_picture(tmp_path):
    gt = (50.0, 50.0, 150.0, 150.0)
    scenes = [_scene(0, gt, gt, 0.9),  # found, tight
              _scene(1, gt, (50, 50, 150, 190), 0.2),  # a loose box below the threshold: a miss of the valid rows
              _scene(2, gt, (0, 0, 10, 10), 0.9)]  # a wrong box: a miss everywhere
    queries = [Q(0, "cutouts__a__x", gt, {"scale": 0.2}, "photo", 10.0),
               Q(1, "drawn_1", gt, {"scale": 0.5}, "photo", 1.0),
               Q(2, "drawn_2", gt, {"scale": 0.5}, "procedural", 1.0)]
    m = detector_misses(queries, scenes)
    size = m["object size (scale)"]
    assert size["small <0.3"]["recall valid"] == 1.0 and size["small <0.3"]["IoU>=0.7 valid"] == 1.0
    assert size["large >=0.45"]["recall valid"] == 0.0 and size["large >=0.45"]["share of misses"] == 1.0
    assert size["large >=0.45"]["recall any of K rows"] == 0.5  # the loose row overlaps (IoU 0.71), the wrong one not
    assert m["background clutter"]["busy"]["n"] == 1 and m["background clutter"]["plain"]["n"] == 2
    assert m["product"]["photo cutout"]["recall valid"] == 1.0
    thumbs = [Image.new("RGB", (200, 200), "grey") for _ in scenes]
    for t in thumbs:
        ImageDraw.Draw(t).rectangle(gt, fill="blue")
    path = tmp_path / "misses.png"
    assert misses_png(path, queries, scenes, thumbs)
    with Image.open(path) as im:
        assert im.width == 4 * 260 and im.height > 0
    assert not misses_png(tmp_path / "none.png", queries[:1], scenes[:1], thumbs[:1])
    assert not (tmp_path / "none.png").exists()
