"""python -m client.compare A B: how similar two images are, by every dedup measure, with timings.

For each method: the score (Hamming bits for hashes, RMS grey difference for pixel_euclid, similarity
otherwise), the time to encode both images and to compare them, and the verdict against the calibrated
threshold of client/dedup/thresholds.json. ``cnn`` needs Triton ($TRITON_URL); without it that line
says why and the other measures still run. Exit status: 0 done, 1 an image cannot be read.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from client.cli import add_triton_url
from client.dedup import METHODS, get_method
from client.dedup.thresholds import load_thresholds
from client.imaging import ImageDecodeError, decode


@dataclass
class Measure:
    method: str
    score: float | None
    threshold: float | None
    duplicate: bool | None
    encode_ms: float
    compare_ms: float
    lower_is_similar: bool
    note: str = ""


def compare(a: bytes, b: bytes, *, client=None, methods: list[str] | None = None, names=("A", "B")) -> tuple[bool, list[Measure]]:
    """(exact copy?, one Measure per method). Raises ImageDecodeError naming the image that fails."""
    imgs = []
    for name, data in zip(names, (a, b)):
        try:
            imgs.append(decode(data))
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{name}: {exc}") from exc
    exact = hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    thresholds = load_thresholds()
    out = []
    for name in methods or list(METHODS):
        m = get_method(name, client)
        thr = thresholds.values.get(name)
        missing = m.unavailable()
        if missing:
            out.append(Measure(name, None, thr, None, 0.0, 0.0, m.lower_is_similar, missing))
            continue
        stale = "" if m.calibration_matches(thresholds) else "threshold calibrated on another embedder"
        t = time.perf_counter()
        fa, fb = m.pair_features((a, b), tuple(imgs), tuple(names))
        t_enc = time.perf_counter() - t
        t = time.perf_counter()
        score = m.score(fa, fb)
        verdict, note = m.judge(score, thresholds, imgs)
        t_cmp = time.perf_counter() - t
        out.append(Measure(name, score, thr, verdict, 1000 * t_enc, 1000 * t_cmp, m.lower_is_similar,
                           "; ".join(n for n in (stale, note) if n)))
    return exact, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--json", action="store_true")
    add_triton_url(ap)
    args = ap.parse_args(argv)
    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    try:
        a, b = args.a.read_bytes(), args.b.read_bytes()
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    client = None
    if any(METHODS[m].needs_server for m in methods):
        from client.triton import RetrievalClient, TritonError

        try:
            client = RetrievalClient(args.triton_url)
        except TritonError as exc:
            print(f"warning: cnn skipped: {exc}", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exact, measures = compare(a, b, client=client, methods=methods, names=(str(args.a), str(args.b)))
    except ImageDecodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()
    if args.json:
        print(json.dumps({"a": str(args.a), "b": str(args.b), "exact": exact, "measures": [asdict(m) for m in measures]}, indent=1))
        return 0
    print(f"{args.a}  vs  {args.b}: {'identical bytes (exact copy)' if exact else 'different bytes'}")
    print(f"{'method':<13} {'score':>9} {'threshold':>11} {'verdict':<15} {'encode ms':>9} {'compare ms':>10}")
    for m in measures:
        if m.score is None:
            print(f"{m.method:<13} {'-':>9} {'':>11} {m.note}")
            continue
        rel = "<=" if m.lower_is_similar else ">="
        thr = f"{rel} {m.threshold:.4g}" if m.threshold is not None else "uncalibrated"
        verdict = "-" if m.duplicate is None else ("duplicate" if m.duplicate else "different")
        print(f"{m.method:<13} {m.score:>9.4g} {thr:>11} {verdict:<15} {m.encode_ms:>9.1f} {m.compare_ms:>10.3f}"
              + (f"  ({m.note})" if m.note else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
