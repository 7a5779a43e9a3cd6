"""Scores `python -m client.search --json` output against a query's truth.json: rank of each true product."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda z: (z[2] - z[0]) * (z[3] - z[1])  # noqa: E731
    return inter / max(area(a) + area(b) - inter, 1e-9)


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
    result_file, truth_file, name = sys.argv[1], sys.argv[2], sys.argv[3]
    result = json.loads(Path(result_file).read_text())
    truth = json.loads(Path(truth_file).read_text())[name]
    ok = True
    for pid, rank in ranks(result, truth):
        found = rank is not None and rank <= 5
        ok &= found
        print(f"  {'FOUND' if found else 'MISSED'} {pid}" + (f" at rank {rank}" if rank else " (not in top 5 of a matching box)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
