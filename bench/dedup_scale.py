"""Dedup at scale: python -m bench.dedup_scale [--n 100000] [--methods phash,dhash] [--cnn-sample 400].

1. Generates N small images (128-192 px) under data/bench/dedup/scale_<N>/: the real photos of the
   photoset plus synthetic ones (gradients, shapes, noise) as distinct bases, and mild copies of a
   random half of the bases (resize, JPEG q20-50, brightness, 92 % crop, blur) - truth.json says which.
2. Hash methods run end to end on all N files (python -m client.dedup's library: read + sha256, hash,
   embedded index, multi-index-hashing self-join, union-find), each in its own process so its peak
   RSS is its own.
3. cnn: encoding 100k images through the Triton ensemble at ~5-6 images/s would take ~5 h here, so the
   encoding rate is measured on a sample (--cnn-sample real files through Triton) and the search is run
   on N vectors BUILT FROM the sample's real embeddings: each base = a real embedding plus a random
   direction (so bases are distinct), each copy = its base plus small noise. That measures the Qdrant
   (qdrant-edge) upsert, HNSW build, k-NN self-join and grouping at N, not cnn accuracy.
Results: data/bench/dedup/scale_<N>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from client import spec
from client.imaging import encode_jpeg

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench" / "dedup"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synthetic(rng: np.random.Generator, side: int) -> Image.Image:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, side)[:, None, None]
    grad = (c0 * (1 - t) + c1 * t).astype(np.uint8).repeat(side, axis=1)
    if rng.random() < 0.5:
        grad = grad.transpose(1, 0, 2)
    img = Image.fromarray(np.ascontiguousarray(grad))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(0, side, 2)
        w, h = rng.integers(side // 8, side // 2, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            d.ellipse((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=fill)
        elif kind == 1:
            d.rectangle((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=fill)
        else:
            d.polygon([tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(3)], fill=fill)
    noise = rng.normal(0, 12, (side, side, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def _copy(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int]:
    kind = int(rng.integers(0, 5))
    q = 90
    if kind == 0:
        f = rng.uniform(0.5, 0.8)
        img = img.resize((max(16, int(img.width * f)), max(16, int(img.height * f))), Image.LANCZOS)
    elif kind == 1:
        q = int(rng.integers(20, 51))
    elif kind == 2:
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.25))
    elif kind == 3:
        w, h = img.size
        img = img.crop((int(w * 0.04), int(h * 0.04), int(w * 0.96), int(h * 0.96)))
    else:
        img = img.filter(ImageFilter.GaussianBlur(1.0))
    return img, q


def _write_part(args) -> list[tuple[str, int]]:
    folder, photos, start, stop, n_bases, seed = args
    rng = np.random.default_rng(seed + start)
    cache: dict[int, Image.Image] = {}
    out = []

    def base(b: int) -> Image.Image:
        if b not in cache:
            r = np.random.default_rng(seed * 1_000_003 + b)
            side = int(r.integers(128, 193))
            if b < len(photos):
                im = Image.open(photos[b]).convert("RGB")
                im.thumbnail((side, side), Image.LANCZOS)
            else:
                im = _synthetic(r, side)
            cache.clear() if len(cache) > 2000 else None
            cache[b] = im
        return cache[b]

    for k in range(start, stop):
        if k < n_bases:
            b, img, q = k, base(k), 90
        else:
            b = int(rng.integers(0, n_bases // 2)) * 2  # copies of the even-numbered half of the bases
            img, q = _copy(base(b), rng)
        name = f"{k // 1000:03d}/{k:06d}.jpg"
        (folder / name).write_bytes(encode_jpeg(img, q))
        out.append((name, b))
    return out


def generate(folder: Path, n: int, photos_dir: Path | None, seed: int = 0) -> dict[str, int]:
    truth_file = folder / "truth.json"
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())
        if len(truth) == n:
            return truth
    shutil.rmtree(folder, ignore_errors=True)
    for k in range(0, n, 1000):
        (folder / f"{k // 1000:03d}").mkdir(parents=True, exist_ok=True)
    photos = sorted(str(p) for p in photos_dir.iterdir() if spec.is_image_file(p)) if photos_dir and photos_dir.is_dir() else []
    n_bases = n // 2
    step = 2000
    parts = [(folder, photos, s, min(n, s + step), n_bases, seed) for s in range(0, n, step)]
    from tqdm import tqdm

    truth = {}
    with Pool(os.cpu_count() or 2) as pool:
        for res in tqdm(pool.imap_unordered(_write_part, parts), total=len(parts), desc="generating", unit="2k img"):
            truth.update(res)
    truth_file.write_text(json.dumps(truth))
    return truth


def quality(groups: list[list[str]], truth: dict[str, int], root: Path) -> dict:
    """How the groups match the generated truth: pairs inside groups that share a base (precision) and
    copies linked to their base's group (recall)."""
    from collections import Counter

    tp = fp = 0
    for g in groups:
        c = Counter(truth[str(Path(p).relative_to(root))] for p in g)
        same = sum(v * (v - 1) // 2 for v in c.values())
        tp += same
        fp += len(g) * (len(g) - 1) // 2 - same
    sizes = Counter(truth.values())
    true_pairs = sum(v * (v - 1) // 2 for v in sizes.values())
    return {"pair_precision": tp / max(tp + fp, 1), "pair_recall": tp / max(true_pairs, 1), "true_pairs": true_pairs}


def run_hash(folder: Path, method: str, threshold: float | None, truth_file: Path) -> dict:
    from client.dedup import dedup, get_method

    thr = get_method(method).resolve(threshold)
    store = Path(os.environ.get("TMPDIR", "/tmp")) / f"dedup_scale_{os.getpid()}"
    t = time.perf_counter()
    res = dedup(folder, method, thr, name="scale", store_path=store, concurrency=1, show_progress=True)
    wall = time.perf_counter() - t
    shutil.rmtree(store, ignore_errors=True)
    q = quality([g.images for g in res.groups], json.loads(truth_file.read_text()), folder)
    return {"method": method, "threshold": thr, "images": res.scanned, "groups": len(res.groups), "wall_s": wall,
            "encode_s": res.seconds_encode, "search_s": res.seconds_search,
            "read_index_s": wall - res.seconds_encode - res.seconds_search, "peak_rss_mb": _peak_mb(), **q}


def run_cnn(folder: Path, truth: dict[str, int], sample: int, url: str | None, n: int) -> dict:
    from client.dedup import Plan, get_method
    from client.dedup.groups import UnionFind
    from client.store import dedup_point_id
    from client.triton import RetrievalClient

    rng = np.random.default_rng(1)
    names = sorted(truth)
    pick = [names[int(i)] for i in rng.choice(len(names), size=min(sample, len(names)), replace=False)]
    items = [(p, (folder / p).read_bytes()) for p in pick]
    server = None
    if not url:
        import tempfile

        from deploy.local import LocalTriton, free_port

        server = LocalTriton(Path(tempfile.mkdtemp(prefix="triton_scale_")), ROOT / "model_repository")
        url = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=300).grpc_url
    try:
        with RetrievalClient(url) as client:
            method = get_method("cnn", client, concurrency=4)
            client.infer(items[0][1])
            t = time.perf_counter()
            feats, errors = method.encode(items)
            enc_s = time.perf_counter() - t
    finally:
        if server is not None:
            server.down()
    real = np.stack([feats[p] for p in pick if p in feats])
    rule = method.rule()
    thr = rule.threshold
    store_t = rule.candidate if rule.candidate is not None else rule.threshold
    # N vectors built from the real ones (see the module docstring): bases sharing a real vector have
    # cosine ~0.3; copies are their base plus noise of norm 0.1..1.0 (cosine ~0.99..0.7)
    bases = n // 2
    d = real.shape[1]
    base_vecs = real[np.arange(bases) % len(real)] + 1.5 * rng.normal(size=(bases, d)).astype(np.float32) / np.sqrt(d)
    base_vecs /= np.linalg.norm(base_vecs, axis=1, keepdims=True)
    of = rng.integers(0, bases // 2, size=n - bases) * 2
    scale = rng.uniform(0.1, 1.0, size=(n - bases, 1)).astype(np.float32)
    copies = base_vecs[of] + scale * rng.normal(size=(n - bases, d)).astype(np.float32) / np.sqrt(d)
    vecs = np.concatenate([base_vecs, copies / np.linalg.norm(copies, axis=1, keepdims=True)]).astype(np.float32)
    label = np.concatenate([np.arange(bases), of])
    store_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"dedup_scale_cnn_{os.getpid()}"
    out = {"method": "cnn", "threshold": thr, "images": n, "encode_sample": len(real), "encode_images_per_s": len(real) / enc_s,
           "encode_s_extrapolated": n / (len(real) / enc_s)}
    try:
        with method.open_store("scale", store_dir) as store:
            ids = [dedup_point_id(f"v{i}") for i in range(n)]
            t = time.perf_counter()
            store.upsert(ids, vecs, [{"path": f"v{i}"} for i in range(n)])
            out["upsert_s"] = time.perf_counter() - t
            t = time.perf_counter()
            store.optimize()
            out["hnsw_build_s"] = time.perf_counter() - t
            t = time.perf_counter()
            band = set()

            def accept(i: int, j: int, score: float) -> bool:
                if score >= thr:
                    return True
                band.add((min(i, j), max(i, j)))  # would get the geometric check (needs real files)
                return False
            uf = UnionFind(n)
            for i, j in method.candidate_pairs(Plan(store_t, {"threshold": thr}, accept), ids, vecs, store):
                uf.union(i, j)
            groups = uf.groups()
            out["search_group_s"] = time.perf_counter() - t
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    tp = fp = 0
    from collections import Counter

    for g in groups:
        c = Counter(label[g].tolist())
        same = sum(v * (v - 1) // 2 for v in c.values())
        tp, fp = tp + same, fp + len(g) * (len(g) - 1) // 2 - same
    true_pairs = sum(v * (v - 1) // 2 for v in Counter(label.tolist()).values())
    out.update({"candidate_threshold": store_t, "band_pairs_to_verify": len(band), "groups": len(groups), "pair_precision_synthetic": tp / max(tp + fp, 1), "pair_recall_synthetic": tp / max(true_pairs, 1),
                "peak_rss_mb": _peak_mb()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--methods", default="phash,dhash")
    ap.add_argument("--threshold", type=float, help="override the calibrated threshold (hash methods)")
    ap.add_argument("--cnn-sample", type=int, default=400, help="files encoded through Triton (0: skip cnn)")
    ap.add_argument("--triton-url", default=os.environ.get("TRITON_URL"))
    ap.add_argument("--photos", type=Path, default=Path(os.environ.get("PHOTOSET_DIR", ROOT.parent / "shared" / "datasets" / "photoset")) / "photos")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: one measurement in a child process
    args = ap.parse_args(argv)
    folder = OUT / f"scale_{args.n}"
    if args.phase:
        if args.phase == "cnn":
            res = run_cnn(folder, json.loads((folder / "truth.json").read_text()), args.cnn_sample, args.triton_url, args.n)
        else:
            res = run_hash(folder, args.phase, args.threshold, folder / "truth.json")
        print("RESULT " + json.dumps(res))
        return 0
    t = time.perf_counter()
    truth = generate(folder, args.n, args.photos)
    gen_s = time.perf_counter() - t
    print(f"{len(truth)} images in {folder} ({gen_s:.0f} s)", file=sys.stderr)
    results = []
    phases = [m for m in args.methods.split(",") if m] + (["cnn"] if args.cnn_sample else [])
    for phase in phases:
        cmd = [sys.executable, "-m", "bench.dedup_scale", "--n", str(args.n), "--phase", phase, "--cnn-sample", str(args.cnn_sample)]
        if args.threshold is not None:
            cmd += ["--threshold", str(args.threshold)]
        if args.triton_url:
            cmd += ["--triton-url", args.triton_url]
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{phase}: failed (exit {proc.returncode})", file=sys.stderr)
            continue
        results.append(json.loads(line[-1][7:]))
        print(json.dumps(results[-1]), file=sys.stderr)
    (OUT / f"scale_{args.n}.json").write_text(json.dumps({"n": args.n, "cpus": os.cpu_count(), "results": results}, indent=1))
    lines = [f"# Dedup of {args.n} images on {os.cpu_count()} CPU cores", "",
             "| method | groups | encode s | search + group s | read/index s | peak RSS MB | pair P | pair R |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["method"] == "cnn":
            lines.append(f"| cnn (search on {args.n} vectors built from {r['encode_sample']} real embeddings) | {r['groups']} | "
                         f"{r['encode_s_extrapolated']:.0f} (extrapolated: {r['encode_images_per_s']:.1f} img/s measured) | "
                         f"{r['search_group_s']:.1f} (+ upsert {r['upsert_s']:.1f}, HNSW build {r['hnsw_build_s']:.1f}; "
                         f"{r['band_pairs_to_verify']} band pairs not verified) | - | "
                         f"{r['peak_rss_mb']:.0f} | {r['pair_precision_synthetic']:.3f}* | {r['pair_recall_synthetic']:.3f}* |")
        else:
            lines.append(f"| {r['method']} (t={r['threshold']:g}) | {r['groups']} | {r['encode_s']:.1f} | {r['search_s']:.1f} | "
                         f"{r['read_index_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['pair_precision']:.3f} | {r['pair_recall']:.3f} |")
    lines += ["", "*synthetic vectors: measures the search machinery, not cnn accuracy."]
    (OUT / f"scale_{args.n}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
