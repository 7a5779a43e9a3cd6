"""Measure a flip test for the detector (not served): python -m bench.detector_flip --out DIR.

Copies a model repository to DIR and replaces its detector with one that averages the heatmap, box sizes
and sub-cell offsets of the photo and of its mirror image (one batch of 2: twice the detector's compute).
Then measure it on the same held-out set as the served one:

    python -m export.evaluate --repository DIR --out data/eval_flip

The 2026-12-04 result and why it is not served are in the README ("Flip test for the detector").
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from client import spec
from export import repository
from export.build import ROOT, export_detector
from export.checkpoint import Heads
from export.models import Detector, decode_topk


class FlipDetector(torch.nn.Module):
    """``det`` run on the image and its mirror; the mirror's maps are flipped back and averaged (heatmap
    logits, sizes, offsets; a mirrored x offset o is 1 - o), so its boxes on a mirrored photo are exactly the
    mirrored boxes. It averages the heatmap head alone: the box refiner of the served detector (export/models.py:
    BoxRefiner) is not applied, so compare it with a detector built with ``det_refine_epochs = 0``."""

    def __init__(self, det: Detector) -> None:
        super().__init__()
        self.det = det

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        f16, f32, _ = self.det.backbone(torch.cat([x, x.flip(3)], 0))
        maps = self.det.head(f16, f32)
        heat, size, off = (t[:n] for t in maps)
        mheat, msize, moff = (t[n:].flip(3) for t in maps)
        offset = torch.stack([(off[:, 0] + 1 - moff[:, 0]) / 2, (off[:, 1] + moff[:, 1]) / 2], 1)
        return decode_topk((heat + mheat) / 2, (size + msize) / 2, offset, self.det.k)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the repository copy to write (replaced if present)")
    ap.add_argument("--repository", type=Path, default=repository.REPOSITORY)
    ap.add_argument("--heads", type=Path, default=ROOT / "data" / "build" / "heads_quick.pt")
    args = ap.parse_args(argv)
    if args.out.resolve() == args.repository.resolve():
        ap.error("--out must not be the served repository")
    heads = Heads.load(args.heads)
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.repository, args.out)
    det = FlipDetector(heads.detector_model()).eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        worst = export_detector(det, spec.onnx_file(args.out, spec.DETECTOR.name),
                                lambda n, s: rng.integers(0, 256, (n, 3, s, s), dtype=np.uint8))
    print(f"wrote {args.out} (flip-test detector, parity with torch {worst:.1e}); now: "
          f"python -m export.evaluate --repository {args.out} --out data/eval_flip", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
