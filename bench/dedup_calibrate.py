"""Calibrate and measure the dedup methods: python -m bench.dedup_calibrate [--photos DIR] [--originals N].

Builds near-duplicate sets from real photos (../shared/datasets/photoset/photos, or any folder): each
original gets the transforms below; distinct originals are the negatives. Every method encodes every
file (images/s measured), scores every (original, copy) pair and every pair of distinct sources
(pairs/s measured on the scalar compare of client.compare). A threshold is the strictest one within
RECALL_TOLERANCE of the highest recall reached with precision >= 0.99 (else the best F1). Precision,
recall and F1 (per method, and recall per transform) are 2-fold cross-validated by original: each half
is judged at the threshold fitted on the other half; the committed threshold is fitted on all pairs.
The default cnn rule (cosine, plus ORB/RANSAC verification in an uncertain band) is fitted the same way.
Writes data/bench/dedup/report.md, tradeoff.png, scores.npz and (unless --no-write) client/dedup/thresholds.json
with the id of the embedder it was calibrated on, as the server reports it (RetrievalClient.embedder_id()).
The cnn method talks to Triton: $TRITON_URL or --triton-url, else a local tritonserver is started on free
ports for the run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from client import spec
from client.dedup import METHODS, get_method
from client.dedup.thresholds import EXTRA_SETTINGS, THRESHOLDS_FILE, load_thresholds
from client.imaging import encode_jpeg

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench" / "dedup"
TARGET_PRECISION = 0.99


def _crop(keep: float):
    def f(img, rng):
        w, h = img.size
        cw, ch = int(w * keep), int(h * keep)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x, y, x + cw, y + ch))
    return f


def _rotate(deg: float):
    return lambda img, rng: img.rotate(deg * (1 if rng.random() < 0.5 else -1), resample=Image.BILINEAR, expand=False)


def _perspective(img, rng):
    w, h = img.size
    d = 0.08
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    dst = [(x + rng.uniform(-d, d) * w, y + rng.uniform(-d, d) * h) for x, y in src]
    # coefficients mapping output -> input
    a = []
    b = []
    for (x, y), (u, v) in zip(dst, src):
        a += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        b += [u, v]
    coeffs = np.linalg.solve(np.array(a, dtype=float), np.array(b, dtype=float))
    return img.transform((w, h), Image.PERSPECTIVE, tuple(coeffs), Image.BILINEAR)


def _text(img, rng):
    out = img.copy()
    d = ImageDraw.Draw(out)
    w, h = out.size
    size = max(12, h // 12)
    d.text((w * 0.05, h * 0.82), "Holiday 2024 - copy", fill=(255, 255, 0), font_size=size, stroke_width=2, stroke_fill=(0, 0, 0))
    return out


def _watermark(img, rng):
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    w, h = base.size
    d.text((w * 0.1, h * 0.4), "© SAMPLE", fill=(255, 255, 255, 110), font_size=max(16, h // 6))
    return Image.alpha_composite(base, layer).convert("RGB")


TRANSFORMS = {
    "crop90": _crop(0.90), "crop70": _crop(0.70), "crop50": _crop(0.50),
    "rotate5": _rotate(5), "rotate15": _rotate(15),
    "bright+": lambda img, rng: ImageEnhance.Brightness(img).enhance(1.4),
    "bright-": lambda img, rng: ImageEnhance.Brightness(img).enhance(0.6),
    "contrast+": lambda img, rng: ImageEnhance.Contrast(img).enhance(1.5),
    "contrast-": lambda img, rng: ImageEnhance.Contrast(img).enhance(0.6),
    "jpeg10": 10, "jpeg30": 30, "jpeg50": 50,
    "blur": lambda img, rng: img.filter(ImageFilter.GaussianBlur(2.0)),
    "flip": lambda img, rng: ImageOps.mirror(img),
    "resize50": lambda img, rng: img.resize((max(8, img.width // 2), max(8, img.height // 2)), Image.LANCZOS),
    "resize25": lambda img, rng: img.resize((max(8, img.width // 4), max(8, img.height // 4)), Image.LANCZOS),
    "perspective": _perspective,
    "text": _text, "watermark": _watermark,
}


def make_copy(img: Image.Image, transform: str, rng: np.random.Generator) -> bytes:
    """The JPEG bytes of ``img`` after one of TRANSFORMS (JPEG ones: that quality; the rest: q95)."""
    fn = TRANSFORMS[transform]
    return encode_jpeg(img, fn) if isinstance(fn, int) else encode_jpeg(fn(img, rng), 95)


def build_set(photos: Path, n: int, seed: int = 0, max_side: int = 512) -> list[dict]:
    """[{name, source, transform, data}] - originals (transform 'original') and their copies."""
    files = sorted(p for p in photos.iterdir() if spec.is_image_file(p))
    if len(files) < 4:
        raise SystemExit(f"{photos}: need at least 4 photos, found {len(files)}")
    picked = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(n, len(files))).round()]
    rng = np.random.default_rng(seed)
    items = []
    for s, path in enumerate(picked):
        img = Image.open(path).convert("RGB")
        img.thumbnail((max_side, max_side), Image.LANCZOS)
        items.append({"name": f"{s:03d}_original.jpg", "source": s, "transform": "original", "data": encode_jpeg(img, 95)})
        for t in TRANSFORMS:
            items.append({"name": f"{s:03d}_{t}.jpg", "source": s, "transform": t, "data": make_copy(img, t, rng)})
    return items


def pair_sets(items: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, positive) index arrays: every (original, copy) of the same source is positive; every pair of
    an original with an image of another source (original or copy) is negative."""
    orig = [k for k, it in enumerate(items) if it["transform"] == "original"]
    a, b, pos = [], [], []
    for o in orig:
        src = items[o]["source"]
        for k, it in enumerate(items):
            if k == o or (it["transform"] == "original" and k < o):
                continue
            a.append(o)
            b.append(k)
            pos.append(it["source"] == src)
    return np.array(a), np.array(b), np.array(pos, dtype=bool)


def prf(similar: np.ndarray, positive: np.ndarray) -> tuple[float, float, float]:
    tp = int((similar & positive).sum())
    fp = int((similar & ~positive).sum())
    fn = int((~similar & positive).sum())
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


RECALL_TOLERANCE = 0.005  # among rules within this much recall of the best one, the most conservative is kept


def fit_threshold(scores: np.ndarray, positive: np.ndarray, lower_is_similar: bool) -> float:
    """The strictest threshold whose recall is within RECALL_TOLERANCE of the highest recall reached with
    precision >= TARGET_PRECISION; if none reaches that precision, the best F1."""
    s = -scores if lower_is_similar else scores
    cands = np.unique(s)
    feasible, best_f = [], (-1.0, cands[-1])
    for t in cands:
        p, r, f = prf(s >= t, positive)
        if p >= TARGET_PRECISION:
            feasible.append((r, t))
        best_f = max(best_f, (f, t))
    if feasible:
        top = max(r for r, _ in feasible)
        best = max(t for r, t in feasible if r >= top - RECALL_TOLERANCE)
    else:
        best = best_f[1]
    return float(-best if lower_is_similar else best)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    photoset = Path(os.environ.get("PHOTOSET_DIR", ROOT.parent / "shared" / "datasets" / "photoset"))
    ap.add_argument("--photos", type=Path, default=photoset / "photos")
    ap.add_argument("--originals", type=int, default=60)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--triton-url", default=os.environ.get("TRITON_URL"))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true", help="do not update client/dedup/thresholds.json")
    ap.add_argument("--reuse-cnn", action="store_true", help="reuse the cnn features of the last run when the embedder is the same")
    args = ap.parse_args(argv)
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    methods = [get_method(n) for n in names]
    args.out.mkdir(parents=True, exist_ok=True)

    items = build_set(args.photos, args.originals)
    print(f"{len(items)} images from {args.originals} originals x {len(TRANSFORMS)} transforms", file=sys.stderr)
    feats, speed, embedder = encode_all(names, items, args.triton_url, args.out / "features_cnn.npz", args.reuse_cnn)
    a, b, positive = pair_sets(items)
    tr = np.array([items[k]["transform"] for k in b])
    fold = np.array([items[k]["source"] % 2 for k in a])  # 2-fold cross-validation by original
    scores, results = {}, {}
    for m in methods:
        fs = feats[m.name]
        t = time.perf_counter()
        n_time = min(3000, len(a))
        for i in range(n_time):
            m.score(fs[a[i]], fs[b[i]])
        speed[m.name]["pairs_per_s"] = n_time / (time.perf_counter() - t)
        sc = np.array([m.score(fs[i], fs[j]) for i, j in zip(a, b)], dtype=np.float64)
        scores[m.name] = sc
        decide = lambda thr: (sc <= thr) if m.lower_is_similar else (sc >= thr)  # noqa: E731
        sim = np.zeros(len(sc), dtype=bool)  # out-of-fold decisions: each half judged by the other half's threshold
        for f in (0, 1):
            sim[fold != f] = decide(fit_threshold(sc[fold == f], positive[fold == f], m.lower_is_similar))[fold != f]
        thr = fit_threshold(sc, positive, m.lower_is_similar)  # the committed threshold: fitted on everything
        results[m.name] = summarize(sim, positive, tr) | {"threshold": thr, **speed[m.name]}
        print(f"{m.name}: t={thr:.4g} " + "P={precision:.4f} R={recall:.4f} F1={f1:.4f}".format(**results[m.name]), file=sys.stderr)
    inliers = None
    if "cnn" in results:  # the default rule: embedding + geometric check in the uncertain band
        results["cnn_plain"] = results.pop("cnn")
        rule, inliers = fit_cnn_rule(items, a, b, scores["cnn"], positive, fold, tr)
        results = {"cnn": rule | {k: results["cnn_plain"][k] for k in ("images_per_s", "pairs_per_s")}, **results}
    np.savez_compressed(args.out / "scores.npz", a=a, b=b, positive=positive, transform=tr, fold=fold,
                        **({"inliers": inliers} if inliers is not None else {}), **{f"score_{k}": v for k, v in scores.items()})
    write_report(args.out, results, len(items), args.originals, int(positive.sum()), int((~positive).sum()), args.photos, embedder,
                 args.triton_url)
    plot(args.out / "tradeoff.png", scores, positive, np.ones(len(a), dtype=bool), results, methods)
    if not args.no_write:
        write_thresholds(THRESHOLDS_FILE, results, args.photos, len(items), embedder)
        print(f"wrote {THRESHOLDS_FILE}", file=sys.stderr)
    print(f"report: {args.out / 'report.md'}", file=sys.stderr)
    return 0


def encode_all(names: list[str], items: list[dict], url: str | None, cache: Path, reuse_cnn: bool) -> tuple[dict, dict, str | None]:
    """({method: features in item order}, {method: {"images_per_s": ...}}, id of the served embedder or None).

    Methods that need the server talk to ``url``, else to a tritonserver started here on free ports. With
    ``reuse_cnn``, the cnn features of the last run are reused when the same embedder answers now.
    """
    blobs = [(it["name"], it["data"]) for it in items]
    server = client = embedder = None
    if any(METHODS[n].needs_server for n in names):
        from client.triton import RetrievalClient

        if not url:
            from deploy.local import LocalTriton, free_port

            server = LocalTriton(Path(tempfile.mkdtemp(prefix="triton_cal_")), ROOT / "model_repository")
            url = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=300).grpc_url
        client = RetrievalClient(url)
        embedder = client.embedder_id()
    try:
        feats, speed = {}, {}
        for name in names:
            m = get_method(name, client, concurrency=4)
            if m.needs_server and reuse_cnn and cache.exists():
                z = np.load(cache)
                if "embedder_id" in z.files and str(z["embedder_id"]) == embedder and len(z["cnn"]) == len(blobs):
                    feats[name], speed[name] = list(z["cnn"]), {"images_per_s": float(z["images_per_s"])}
                    print(f"cnn features reused from {cache}", file=sys.stderr)
                    continue
            if m.needs_server:
                client.infer(blobs[0][1])  # warm-up
            t = time.perf_counter()
            f, errors = m.encode(blobs)
            speed[name] = {"images_per_s": len(blobs) / (time.perf_counter() - t)}
            if errors:
                raise SystemExit(f"{name}: {errors[:3]}")
            feats[name] = [f[n] for n, _ in blobs]
            print(f"{name}: {speed[name]['images_per_s']:.1f} img/s", file=sys.stderr)
            if m.needs_server:
                if client.infer(blobs[0][1]).embedder_id != embedder:
                    raise SystemExit("the served embedder changed while calibrating (a reload?): re-run when it is stable")
                np.savez_compressed(cache, cnn=np.stack(feats[name]), embedder_id=embedder, images_per_s=speed[name]["images_per_s"])
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.down()
    return feats, speed, embedder


def summarize(sim: np.ndarray, positive: np.ndarray, tr: np.ndarray) -> dict:
    p, r, f1 = prf(sim, positive)
    return {"precision": p, "recall": r, "f1": f1, "false_positives": int((sim & ~positive).sum()),
            "per_transform_recall": {t_: float(sim[positive & (tr == t_)].mean()) for t_ in TRANSFORMS}}


CANDIDATES = (0.40, 0.45, 0.50, 0.55)
# at least 6: the calibration's transforms of one photo have no look-alike products, so nothing here stops the fit
# from loosening the check; with 5, two different multimeters and number/letter blocks passed as copies in
# bench.dedup_speed's photos (2026-12-03)
MIN_INLIERS = (6, 7, 8, 9, 10, 12, 15)


def _fit_rule(cos, inliers, positive) -> tuple[float, float, int]:
    """Like fit_threshold: of the rules within RECALL_TOLERANCE of the best recall at the target precision,
    the one with the fewest false positives on the pairs it is fitted on, then the one that trusts the
    embedding alone least (highest t_hi), then verifies strictest (k, t_lo)."""
    his = np.unique(np.round(cos[positive | (cos >= 0.5)], 3))
    his = his[(his >= 0.55) & (his <= 0.95)]
    feasible, best_f = [], None
    for lo in CANDIDATES:
        for k in MIN_INLIERS:
            verified = (cos >= lo) & (inliers >= k)
            for hi in his:
                similar = (cos >= hi) | verified
                p, r, f = prf(similar, positive)
                if p >= TARGET_PRECISION:
                    feasible.append((r, int((similar & ~positive).sum()), (float(hi), lo, k)))
                if best_f is None or f > best_f[0]:
                    best_f = (f, (float(hi), lo, k))
    if not feasible:
        return best_f[1]
    top = max(r for r, _, _ in feasible)
    near = [(fp, rule) for r, fp, rule in feasible if r >= top - RECALL_TOLERANCE]
    return max(near, key=lambda x: (-x[0], x[1][0], x[1][2], x[1][1]))[1]


def fit_cnn_rule(items, a, b, cos, positive, fold, tr) -> tuple[dict, np.ndarray]:
    """cosine >= t_hi, or cosine >= t_lo and >= k ORB/RANSAC inliers: (t_hi, t_lo, k) fitted like the other
    thresholds (2-fold out-of-fold numbers; the committed rule fitted on everything)."""
    from tqdm import tqdm

    from client.dedup.cnn import orb_features, verify
    from client.imaging import decode

    band = np.nonzero(cos >= min(CANDIDATES))[0]
    band = band[cos[band] < 0.95]
    geo: dict[int, object] = {}
    inliers = np.zeros(len(cos), dtype=np.int64)
    t = time.perf_counter()
    t_feat = 0.0
    for i in tqdm(band, desc="geometric check of the uncertain band", unit="pair"):
        for k in (a[i], b[i]):
            if k not in geo:
                t0 = time.perf_counter()
                geo[k] = orb_features(decode(items[k]["data"]))
                t_feat += time.perf_counter() - t0
        inliers[i] = verify(geo[a[i]], geo[b[i]])
    verify_ms = 1000 * (time.perf_counter() - t - t_feat) / max(len(band), 1)
    feat_ms = 1000 * t_feat / max(len(geo), 1)
    rule = lambda hi, lo, k: (cos >= hi) | ((cos >= lo) & (inliers >= k))  # noqa: E731
    sim = np.zeros(len(cos), dtype=bool)
    folds = []
    for f in (0, 1):
        hi, lo, k = _fit_rule(cos[fold == f], inliers[fold == f], positive[fold == f])
        folds.append({"threshold": hi, "candidate": lo, "min_inliers": k})
        sim[fold != f] = rule(hi, lo, k)[fold != f]
    hi, lo, k = _fit_rule(cos, inliers, positive)
    out = summarize(sim, positive, tr)
    checked = int(((cos >= lo) & (cos < hi)).sum())
    print(f"cnn rule: cos>={hi:.3f} or (cos>={lo} and inliers>={k}): " + "P={precision:.4f} R={recall:.4f} F1={f1:.4f}".format(**out)
          + f"; {checked} of {len(cos)} pairs checked geometrically ({verify_ms:.1f} ms/pair + {feat_ms:.1f} ms/image ORB)", file=sys.stderr)
    neg_in = inliers[~positive & (cos >= lo)]
    return out | {"threshold": hi, "candidate": lo, "min_inliers": k, "folds": folds, "verify_ms_per_pair": verify_ms,
                  "orb_ms_per_image": feat_ms, "checked_fraction": checked / len(cos),
                  "max_negative_inliers": int(neg_in.max()) if neg_in.size else 0}, inliers


def same_thresholds(a: dict, b: dict) -> bool:
    """Whether two thresholds files' methods have the same thresholds and extra settings (not counting the
    measured precision and recall)."""
    keys = ("threshold", *EXTRA_SETTINGS)
    pick = lambda m: {k: {n: v[n] for n in keys if n in v} for k, v in m.items()}  # noqa: E731
    return pick(a) == pick(b)


def write_thresholds(path: Path, results: dict, photos: Path, n_images: int, embedder: str | None) -> None:
    """Writes the calibration. When the file there has exactly these thresholds, the run's embedder joins its
    ``embedder_ids`` (another build of the same recipe; its precision and recall stay the first run's) and the
    rest of the file is kept; otherwise the file is replaced, with this embedder alone."""
    methods = {k: {"threshold": round(v["threshold"], 6), "precision": round(v["precision"], 4), "recall": round(v["recall"], 4),
                   **({"candidate": v["candidate"], "min_inliers": v["min_inliers"]} if "candidate" in v else {})}
               for k, v in results.items()}
    try:
        old = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        old = None
    if old and embedder and old.get("embedder_id") and same_thresholds(old.get("methods", {}), methods):
        ids = list(load_thresholds(path).embedder_ids)  # the file's own reading of its ids
        if embedder not in ids:
            ids.append(embedder)
            old.setdefault("also_calibrated", {})[embedder] = time.strftime("%Y-%m-%d")
        old["embedder_ids"] = ids
        path.write_text(json.dumps(old, indent=1) + "\n")
        return
    data = {"embedder_id": embedder,
            "calibrated": time.strftime("%Y-%m-%d"),
            "by": "python -m bench.dedup_calibrate",
            "data": f"{photos.name}: {n_images} images (originals + {len(TRANSFORMS)} transforms each)",
            "target": f"strictest threshold within {RECALL_TOLERANCE} recall of the best at precision >= {TARGET_PRECISION}; "
                      "precision/recall are 2-fold out-of-fold",
            "methods": methods}
    path.write_text(json.dumps(data, indent=1) + "\n")


def write_report(out: Path, results: dict, n_images: int, n_orig: int, n_pos: int, n_neg: int, photos: Path,
                 embedder: str | None, url: str | None) -> None:
    embedder_note = f" Embedder `{embedder}` (served by {url or 'a tritonserver started for the run'})." if embedder else ""
    lines = [f"# Dedup calibration ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores)", "",
             f"{n_images} images: {n_orig} originals from `{photos}` x {len(TRANSFORMS)} transforms; {n_pos} positive pairs "
             f"(original, copy) and {n_neg} negative pairs (an original with any image of another original). Threshold = "
             f"the strictest one within {RECALL_TOLERANCE} of the highest recall reached with precision >= {TARGET_PRECISION}. Precision/recall/F1 are 2-fold cross-validated by original "
             "(each half judged at the threshold fitted on the other half); the threshold shown (and committed) is fitted on "
             f"all pairs.{embedder_note}", "",
             "| method | threshold | precision | recall | F1 | false pos. | images/s | pairs/s |", "|---|---|---|---|---|---|---|---|"]
    for k, v in results.items():
        lines.append(f"| {k} | {v['threshold']:.4g} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                     f"{v['false_positives']} | {v['images_per_s']:.1f} | {v['pairs_per_s']:.0f} |")
    if "cnn" in results and "candidate" in results["cnn"]:
        c = results["cnn"]
        lines += ["", f"cnn (the default) = cosine >= {c['threshold']:.3f}, or cosine >= {c['candidate']} and >= {c['min_inliers']} "
                  f"ORB/RANSAC inliers (mirror included); per fold: {c['folds']}. The geometric check ran on "
                  f"{100 * c['checked_fraction']:.2f} % of the pairs at {c['verify_ms_per_pair']:.1f} ms/pair plus "
                  f"{c['orb_ms_per_image']:.0f} ms/image for ORB features; the most inliers of a negative pair in the band: "
                  f"{c['max_negative_inliers']}. cnn_plain = the embedding alone. images/s of cnn = encoding through Triton "
                  "(CNN.encode: the whole-image steps, 4 requests in flight; with --reuse-cnn, the rate of the run that encoded)."]
    lines += ["", "Recall per transform (out-of-fold):", "",
              "| transform | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for t in TRANSFORMS:
        lines.append(f"| {t} | " + " | ".join(f"{v['per_transform_recall'][t]:.2f}" for v in results.values()) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def plot(path: Path, scores: dict, positive: np.ndarray, ev: np.ndarray, results: dict, methods) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for m in methods:
        name = "cnn_plain" if m.name == "cnn" and "cnn_plain" in results else m.name
        s = scores[m.name][ev]
        s = -s if m.lower_is_similar else s
        ts = np.unique(np.quantile(s, np.linspace(0, 1, 400)))
        pr = np.array([prf(s >= t, positive[ev])[:2] for t in ts])
        ax1.plot(pr[:, 1], pr[:, 0], label=name)
        r = results[name]
        ax1.scatter([r["recall"]], [r["precision"]], s=18)
        ax2.scatter([r["images_per_s"]], [r["f1"]], s=30)
        ax2.annotate(name, (r["images_per_s"], r["f1"]), fontsize=8)
    if "cnn_plain" in results:
        r = results["cnn"]
        ax1.scatter([r["recall"]], [r["precision"]], s=60, marker="*", color="k", label="cnn + geometric check (default)")
        ax2.scatter([r["images_per_s"]], [r["f1"]], s=60, marker="*", color="k")
        ax2.annotate("cnn (default)", (r["images_per_s"], r["f1"]), fontsize=8)
    ax1.set(xlabel="recall", ylabel="precision", title="precision/recall over all pairs; dots = out-of-fold result", ylim=(0.5, 1.005))
    ax1.axhline(TARGET_PRECISION, color="grey", lw=0.5)
    ax1.legend(fontsize=8)
    ax2.set(xscale="log", xlabel="images/s to encode (log)", ylabel="F1 at the calibrated threshold", title="speed / accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
