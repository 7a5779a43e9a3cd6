"""export/eval_misses.py: detector recall by object size and background, its false positives, and the pictures."""
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from client import spec
from export.eval_misses import (BUSY_GRADIENT, FP_KINDS, background_clutter, detector_misses, false_positive_kind,
                                false_positives, false_positives_png, misses_png, unmatched_valid_rows)
from export.eval_report import false_positives_section
from export.train import detection_metrics


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
    match: dict | None = None  # as export.eval_scenes.SceneRows: no catalog cosines (weak rows by score)

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


def _rows(gt, found):
    """A scene with true boxes ``gt`` and detection rows ``found`` ((box, score), best first)."""
    boxes = np.zeros((spec.NUM_ROWS, 4), np.float32)
    scores = np.zeros(spec.NUM_ROWS, np.float32)
    boxes[-1] = [0, 0, 400, 400]
    for r, (b, sc) in enumerate(found):
        boxes[r], scores[r] = b, sc
    return S(boxes, scores, scores >= spec.SCORE_THRESHOLD, np.array(gt, np.float32).reshape(-1, 4), 0)


def test_false_positive_kinds():
    gt = np.array([[100, 100, 200, 200]], np.float32)
    assert false_positive_kind((300, 300, 350, 350), gt) == FP_KINDS[0]  # nothing of a product
    assert false_positive_kind((110, 110, 150, 150), gt) == FP_KINDS[1]  # inside the product
    assert false_positive_kind((150, 150, 260, 260), gt) == FP_KINDS[2]  # half on it
    assert false_positive_kind((0, 0, 10, 10), np.zeros((0, 4), np.float32)) == FP_KINDS[0]


def test_false_positives_by_background_agree_with_detection_precision(tmp_path):
    a, b = (100, 100, 200, 200), (250, 250, 350, 350)
    scenes = [_rows([a, b], [(a, 0.9), ((110, 110, 150, 150), 0.8), ((300, 10, 390, 90), 0.5), (b, 0.2)]),
              _rows([a], [((102, 100, 200, 198), 0.7), ((101, 101, 199, 199), 0.6)]),  # a repeat: the second is false
              _rows([b], [(b, 0.95), ((200, 200, 330, 330), 0.4)])]
    for i, sc in enumerate(scenes):
        sc.first = i
    queries = [Q(0, "p", a, {}, "photo", 0.0), Q(0, "p", b, {}, "photo", 0.0), Q(1, "p", a, {}, "photo", 0.0),
               Q(2, "p", b, {}, "procedural", 0.0)]
    assert unmatched_valid_rows(scenes[0]) == [1, 2] and unmatched_valid_rows(scenes[1]) == [1]
    fp = false_positives(queries, scenes)
    photo, proc, every = fp["photo"], fp["procedural"], fp["all"]
    assert photo["products"] == 3 and photo["valid rows"] == 5 and photo["precision"] == 0.4 and photo["recall"] == round(2 / 3, 4)
    assert photo[FP_KINDS[0]] == 1 and photo[FP_KINDS[1]] == 2 and photo[FP_KINDS[2]] == 0
    assert proc["valid rows"] == 2 and proc["precision"] == 0.5 and proc[FP_KINDS[2]] == 1
    ref = detection_metrics([sc.boxes[:spec.MAX_OBJECTS] for sc in scenes], [sc.scores[:spec.MAX_OBJECTS] for sc in scenes],
                            [sc.gt for sc in scenes])
    assert every["precision"] == ref["precision_at_threshold"] and every["recall"] == ref["recall_at_threshold"]
    text = "\n".join(false_positives_section(fp))
    assert "| photo | 3 | 5 | 0.400 |" in text and "false_positives.png" in text
    thumbs = [Image.new("RGB", (400, 400), "grey") for _ in scenes]
    assert false_positives_png(tmp_path / "fp.png", scenes, thumbs)
    with Image.open(tmp_path / "fp.png") as im:
        assert im.width == 4 * 260
    clean = [_rows([a], [(a, 0.9)])]
    assert not false_positives_png(tmp_path / "none.png", clean, thumbs[:1]) and not (tmp_path / "none.png").exists()
