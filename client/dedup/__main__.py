"""python -m client.dedup DIR: groups of duplicate and near-duplicate images, with the number of copies.

Exact copies by sha256; near-duplicates by ``--method`` (default cnn: Triton must be up) at its calibrated
threshold (client/dedup/thresholds.json) unless ``--threshold`` is given. ``--check IMG`` tests new
images against the indexed folder without adding them. The library is client.dedup; this only parses
arguments and prints. Exit status: 0 done, 3 done but some files were skipped (listed on stderr),
1 nothing could be done.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from client.cli import add_triton_url, error
from client.dedup import DEFAULT_METHOD, METHODS, output
from client.dedup.thresholds import StaleCalibration, load_thresholds
from client.store import StoreError


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m client.dedup", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS),
                    help="near-duplicate measure (default %(default)s); exact copies are always found by sha256")
    ap.add_argument("--threshold", type=float, help="default: the calibrated one in client/dedup/thresholds.json "
                    "(Hamming bits for hashes, RMS grey difference for pixel_euclid, similarity otherwise)")
    ap.add_argument("--transitive", action="store_true", help="groups = connected components (A~B and B~C put A, C "
                    "together); default: each group is the kept image and its direct near-duplicates")
    ap.add_argument("--name", help="dedup collection name (default: from the folder's path)")
    ap.add_argument("--store-path", type=Path, help="embedded index folder (default $DEDUP_PATH or data/dedup)")
    ap.add_argument("--check", type=Path, nargs="+", metavar="IMG", help="only report which of these new images "
                    "have copies in FOLDER (indexed first, reusing stored features); they are not added")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help='one object: {"groups": [{"images": [...], "count": n, ...}]}')
    fmt.add_argument("--csv", action="store_true")
    ap.add_argument("--html", type=Path, metavar="FILE", help="also write a page with each group's thumbnails")
    ap.add_argument("--move-to", type=Path, metavar="DIR", help="plan moving every copy but the kept one to DIR")
    ap.add_argument("--delete", action="store_true", help="plan deleting every copy but the kept one")
    ap.add_argument("--apply", action="store_true", help="carry out --move-to/--delete (default: a dry run)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight to Triton (default %(default)s)")
    add_triton_url(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    err = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if args.move_to and args.delete:
        ap.error("give --move-to or --delete, not both")
    if args.apply and not (args.move_to or args.delete):
        ap.error("--apply needs --move-to or --delete")
    cls = METHODS[args.method]
    try:
        thresholds = load_thresholds() if args.threshold is None else None
        if thresholds is not None:
            thresholds.get(cls.name)  # fails early, before any work
    except ValueError as exc:
        error(str(exc))
        return 1
    client = None
    try:
        if cls.needs_server:
            from client.triton import RetrievalClient

            client = RetrievalClient(args.triton_url)
        method = cls(client, concurrency=args.concurrency)
        if thresholds is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", StaleCalibration)
                method.calibration_matches(thresholds)
            for w in caught:
                err(f"warning: {w.message}")
        common = dict(name=args.name, store_path=args.store_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StaleCalibration)  # said above, once
            result = method.dedup(args.folder, args.threshold, show_progress=not args.quiet, transitive=args.transitive, **common)
            if args.check:
                found, bad = method.check(args.check, args.folder, args.threshold, **common)
    except (NotADirectoryError, ValueError, StoreError, RuntimeError) as exc:
        error(str(exc))
        return 1
    finally:
        if client is not None:
            client.close()
    for path, reason in result.errors:
        err(f"skipped {path}: {reason}")
    if args.check:
        for path, reason in bad:
            err(f"skipped {path}: {reason}")
        if args.json:
            print(output.check_json(found))
        else:
            print(output.check_text(found), end="")
        return 3 if bad or result.errors else 0
    if args.json:
        print(output.to_json(result))
    elif args.csv:
        print(output.to_csv(result), end="")
    else:
        print(output.table(result))
        print(output.summary(result))
    if args.html:
        args.html.write_text(output.to_html(result))
        err(f"wrote {args.html}")
    if args.move_to or args.delete:
        actions = output.plan(result, move_to=args.move_to, delete=args.delete, root=args.folder)
        failed = output.apply(actions, dry_run=not args.apply, log=err)
        if not args.apply and actions:
            err(f"dry run: nothing was changed; add --apply to {'delete' if args.delete else 'move'} {len(actions)} file(s)")
        for p, reason in failed:
            err(f"failed {p}: {reason}")
        if failed:
            return 1
    return 3 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
