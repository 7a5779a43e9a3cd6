"""Scores `python -m client.search --json` output against a query's truth.json: rank of each true product."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from client import imaging


def box_iou(a, b) -> float:
    """IoU of two boxes (x1, y1, x2, y2)."""
    return float(imaging.box_iou(a, b)[0, 0])


def ranks(result: dict, truth: dict) -> list[tuple[str, int | None]]:
    """For each true object: the rank of its product among the results of the best-overlapping object."""
    out = []
    for t in truth["objects"]:
        best = max(result["objects"], key=lambda o: box_iou(o["box"], t["box"]), default=None)
        rank = None
        if best is not None and box_iou(best["box"], t["box"]) >= 0.3:
            ids = [r["product_id"] for r in best["results"]]
            rank = ids.index(t["product_id"]) + 1 if t["product_id"] in ids else None
        out.append((t["product_id"], rank))
    return out


def main() -> int:
    """check_demo TRUTH.json RESULT.json [RESULT.json ...]: prints each true product's rank and a total."""
    truth = json.loads(Path(sys.argv[1]).read_text())
    found = total = 0
    for result_file in sys.argv[2:]:
        result = json.loads(Path(result_file).read_text())
        print(Path(result["image"]).name)
        for pid, rank in ranks(result, truth[Path(result["image"]).name]):
            ok = rank is not None and rank <= 5
            found += ok
            total += 1
            print(f"  {'FOUND' if ok else 'MISSED'} {pid}" + (f" at rank {rank}" if rank else " (no detected box overlaps it, or not in its top 5)"))
    print(f"demo: {found} of {total} products in the top 5 of their object")
    return 0


if __name__ == "__main__":
    sys.exit(main())
