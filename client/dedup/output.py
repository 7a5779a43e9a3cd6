"""What ``python -m client.dedup`` prints and does with its groups: table, CSV, JSON, an HTML page, the
answer of ``--check``, and the opt-in ``--move-to`` / ``--delete`` plan (a dry run unless ``--apply``;
the kept image of a group is never touched)."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from client.gallery import dedup_report_html


def table(result) -> str:
    lines = [f"{len(result.groups)} group(s) of copies among {result.scanned} images (method {result.method}, "
             + ", ".join(f"{k} {v:g}" for k, v in (result.settings or {"threshold": result.threshold}).items()) + ")"]
    for n, g in enumerate(result.groups, 1):
        kind = "exact" if g.exact else "near"
        lines.append(f"\ngroup {n}: {g.count} copies ({kind})")
        for k, p in enumerate(g.images):
            lines.append(f"  {'keep ' if k == 0 else '     '} {p}")
    return "\n".join(lines)


def summary(result) -> str:
    copies = sum(g.count - 1 for g in result.groups)
    split = result.seconds_split
    checked = result.stats.get("pairs_checked")
    detail = (f" (k-NN {split['search']:.1f} s, verification {split['verify']:.1f} s"
              + (f" of {checked} pair(s) geometrically" if checked is not None else "") + ")") if split else ""
    return (f"\n{copies} redundant copies; encoded {result.encoded} new image(s) in {result.seconds_encode:.1f} s, "
            f"search + grouping {result.seconds_search:.1f} s{detail}")


def to_csv(result) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "count", "path", "keep", "exact"])
    for n, g in enumerate(result.groups, 1):
        for k, p in enumerate(g.images):
            w.writerow([n, g.count, p, int(k == 0), int(g.exact)])
    return buf.getvalue()


def to_json(result) -> str:
    return json.dumps(result.to_json(), indent=1)


def check_json(found: dict[str, list[tuple[str, float]]]) -> str:
    return json.dumps({"checked": [{"image": k, "copies": [{"path": p, "score": s} for p, s in v]} for k, v in found.items()]},
                      indent=1)


def check_text(found: dict[str, list[tuple[str, float]]]) -> str:
    return "".join(f"{k}: " + (", ".join(f"{p} ({s:.3g})" for p, s in v) if v else "no copy in the collection") + "\n"
                   for k, v in found.items())


def to_html(result, side: int = 160) -> str:
    """The page of the groups, drawn by the renderer the web page uses (client/gallery.py)."""
    return dedup_report_html(result.to_json(), thumb_side=side)


def plan(result, *, move_to: Path | None, delete: bool, root: Path) -> list[tuple[str, str | None]]:
    """(path, destination or None for delete) for every copy but the kept one of each group."""
    if move_to and delete:
        raise ValueError("give --move-to or --delete, not both")
    actions = []
    for g in result.groups:
        for p in g.images[1:]:
            if delete:
                actions.append((p, None))
            elif move_to:
                try:
                    rel = Path(p).resolve().relative_to(root.resolve())
                except ValueError:
                    rel = Path(Path(p).name)
                actions.append((p, str(move_to / rel)))
    return actions


def apply(actions: list[tuple[str, str | None]], *, dry_run: bool, log) -> list[tuple[str, str]]:
    """Carries out (or, in a dry run, only prints) the plan; returns (path, reason) of what failed."""
    failed = []
    for src, dst in actions:
        what = f"delete {src}" if dst is None else f"move {src} -> {dst}"
        if dry_run:
            log(f"[dry run] would {what}")
            continue
        try:
            if dst is None:
                Path(src).unlink()
            else:
                if Path(dst).exists():
                    raise FileExistsError(f"{dst} exists")
                Path(dst).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(src, dst)
            log(what)
        except OSError as exc:
            failed.append((src, str(exc)))
    return failed
