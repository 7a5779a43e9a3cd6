"""The product store at catalog scale: python -m bench.store_scale [--sizes 10000,100000,1000000] [--queries 200].

Issue 10's vector-store part. For each size a synthetic but realistically shaped catalog is written through
``QdrantStore`` (the code path ``client.index`` uses: ``ensure``, batched ``upsert``, then ``optimize``) into
a temporary folder, then a fresh process reopens the folder and runs the queries:

- data: 256-d L2-normalised vectors; products of 1-3 views each, every view near its product's centre,
  products near their fine category's and category's centres (cosine ~0.84 between views of a product,
  ~0.4 within a fine category, ~0.3 within a category, ~0 across); 16 categories of skewed sizes (the
  largest holds 35 % of the points, the smallest ~1.7 %); payload as ``QdrantStore`` writes it.
- queries: held-out views (a new noisy view of a stored product: not a stored vector), filtered by that
  product's category as ``client.search`` does.
- measured per size: build (upsert, optimize = HNSW), reopen (a fresh process: open + count answered) and
  its first query, disk size, peak RSS of the build and of the query process, and p50/p95/p99 latency and
  recall@10 against exact numpy search over the same points of: plain top-10 (``engine.query``), filtered
  by category (``engine.query`` with the filter) and filtered + grouped by product (``QdrantStore.search``).
- engines: ``edge`` (qdrant-edge, the embedded default) at every size; ``edge-scan`` (only with --engines:
  the same store never optimized, as indexing without ``optimize()`` leaves it: every search scans); ``local`` (qdrant-client's local
  mode ``QdrantClient(path=...)`` through ``ServerEngine``, the old default) at --baseline-sizes only, with
  at most --baseline-queries queries (it is a pure-Python scan), as the baseline the ratios are against.

Writes data/bench/store/{report.md,results.json,latency.png}; results.json keeps the rows of earlier runs
for (engine, size) pairs this run did not measure, so ``--sizes 1000000`` after a 10k/100k run completes
the table.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench" / "store"
DIM = 256
K = 10
CATEGORIES = ("bags", "shoes", "watches", "plants", "bottles", "toys", "mugs", "lamps",
              "chairs", "books", "phones", "glasses", "hats", "tools", "clocks", "vases")
FINE_PER_CATEGORY = 3
# Every part of a vector is drawn from one anisotropic Gaussian (variance of axis i ~ i^-SPECTRUM), with
# these shares of the variance: category, fine category, product, view. Fitted to the project's own
# features: the backbone's pooled crops (data/build/features_*.npz) projected to 256-d by PCA, as the
# embedder is initialised, need 26 / 94 / 149 components for 50 / 80 / 90 % of the variance (participation
# ratio 55); this model needs 26 / 108 / 164 (55). Isotropic random vectors (no such structure) are the
# known worst case of every graph index and not what an embedder produces.
SPECTRUM = 0.6
SHARES = {"category": 0.25, "fine": 0.15, "product": 0.45, "view": 0.15}
QUERY_NOISE = 0.30  # a query is a stored view plus this much (variance) of fresh view noise: cosine ~0.88
KINDS = ("plain", "filtered", "grouped")
ENGINES = ("edge", "edge-scan", "local")
TARGET_P95_MS, TARGET_RECALL, TARGET_REOPEN_S = 50.0, 0.99, 2.0


# data -----------------------------------------------------------------------------------------------

def category_shares(n: int = len(CATEGORIES), top: float = 0.35) -> np.ndarray:
    """The largest category holds ``top``; the others share the rest as 1/rank (Zipf)."""
    rest = 1.0 / np.arange(2, n + 1)
    return np.concatenate([[top], (1 - top) * rest / rest.sum()])


def _draw(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` draws of the anisotropic Gaussian, scaled to unit expected norm."""
    sd = np.arange(1, DIM + 1, dtype=np.float32) ** (-SPECTRUM / 2)
    return rng.standard_normal((n, DIM), dtype=np.float32) * (sd / np.sqrt((sd ** 2).sum()))


def _normalise(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Catalog:
    """``n`` points; the points of one product are consecutive."""
    vectors: np.ndarray  # (n, DIM) float32, L2-normalised
    product: np.ndarray  # (n,) int64
    category: np.ndarray  # (n,) int16
    fine: np.ndarray  # (n,) int16, global fine-category index (category * FINE_PER_CATEGORY + j)
    view: np.ndarray  # (n,) int8

    def __len__(self) -> int:
        return len(self.product)


def make_catalog(n: int, seed: int = 0, chunk: int = 100_000) -> Catalog:
    rng = np.random.default_rng([seed, 0])
    views = rng.integers(1, 4, size=n)  # 1-3 views per product
    views = views[: int(np.searchsorted(np.cumsum(views), n)) + 1]
    views[-1] -= views.sum() - n
    n_products = len(views)
    product = np.repeat(np.arange(n_products), views)
    view = (np.arange(n) - np.repeat(np.cumsum(views) - views, views)).astype(np.int8)
    pcat = rng.choice(len(CATEGORIES), size=n_products, p=category_shares())
    pfine = pcat * FINE_PER_CATEGORY + rng.integers(0, FINE_PER_CATEGORY, size=n_products)
    cat = Catalog(np.empty((n, DIM), np.float32), product, pcat[product].astype(np.int16),
                  pfine[product].astype(np.int16), view)
    w = {k: np.float32(np.sqrt(v)) for k, v in SHARES.items()}
    centres = _draw(rng, len(CATEGORIES)), _draw(rng, len(CATEGORIES) * FINE_PER_CATEGORY)
    pvec = np.empty((n_products, DIM), np.float32)
    for c, s in enumerate(range(0, n_products, chunk)):  # chunked: 1M points never hold more than a chunk of noise
        e = min(n_products, s + chunk)
        pvec[s:e] = w["category"] * centres[0][pcat[s:e]] + w["fine"] * centres[1][pfine[s:e]] \
            + w["product"] * _draw(np.random.default_rng([seed, 1, c]), e - s)
    for c, s in enumerate(range(0, n, chunk)):
        e = min(n, s + chunk)
        cat.vectors[s:e] = _normalise(pvec[product[s:e]] + w["view"] * _draw(np.random.default_rng([seed, 2, c]), e - s))
    return cat


def make_queries(cat: Catalog, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` held-out views of stored products (a stored view plus fresh view noise; never a stored vector):
    (vectors, category of each)."""
    rng = np.random.default_rng([seed, 9])
    src = rng.choice(len(cat), size=n, replace=False)
    noise = _normalise(_draw(rng, n))
    return _normalise(cat.vectors[src] + np.float32(np.sqrt(QUERY_NOISE)) * noise), cat.category[src].astype(int)


def product_id(p: int) -> str:
    return f"p{p:07d}"


def parse_path(path: str) -> tuple[str, int, int]:
    """(category, product number, view) of a point's payload path."""
    category, name = path.removeprefix("/catalog/").removesuffix(".jpg").split("/")
    pid, view = name.split("_")
    return category, int(pid[1:]), int(view)


def catalog_points(cat: Catalog, start: int, stop: int) -> list:
    """The ``CatalogPoint`` of each row, with the payload ``client.index`` writes."""
    from client.store import CatalogPoint

    pts = []
    for i in range(start, stop):
        c, pid = CATEGORIES[cat.category[i]], product_id(int(cat.product[i]))
        path = f"/catalog/{c}/{pid}_{int(cat.view[i])}.jpg"
        pts.append(CatalogPoint(vector=cat.vectors[i], product_id=pid, category=c,
                                fine_category=f"{c}_{cat.fine[i] % FINE_PER_CATEGORY}", path=path,
                                sha256=hashlib.sha256(path.encode()).hexdigest(), box=(12.0, 8.0, 610.5, 598.0),
                                object_index=0, view=path.removeprefix("/catalog/")))
    return pts


# exact search ---------------------------------------------------------------------------------------

def exact(cat: Catalog, queries: np.ndarray, qcat: np.ndarray, fetch: int = 100, chunk: int = 200_000) -> dict:
    """Exact answers by brute force: point rows of plain/filtered top-10, product numbers of grouped top-10."""
    nq = len(queries)
    best = {kind: (np.full((nq, 0), -np.inf, np.float32), np.zeros((nq, 0), np.int64)) for kind in ("plain", "filtered")}
    for s in range(0, len(cat), chunk):
        sims = queries @ cat.vectors[s:s + chunk].T  # (nq, rows)
        for kind in best:
            if kind == "filtered":
                sims = np.where(cat.category[s:s + chunk][None, :] == qcat[:, None], sims, -np.inf)
            take = min(fetch, sims.shape[1])
            idx = np.argpartition(-sims, take - 1, axis=1)[:, :take]
            scores = np.concatenate([best[kind][0], np.take_along_axis(sims, idx, 1)], axis=1)
            rows = np.concatenate([best[kind][1], idx + s], axis=1)
            keep = np.argsort(-scores, axis=1, kind="stable")[:, :fetch]
            best[kind] = (np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1))
    out = {kind: best[kind][1][:, :K] for kind in best}
    grouped = []
    for q in range(nq):
        seen: list[int] = []
        for r, sc in zip(best["filtered"][1][q], best["filtered"][0][q]):
            p = int(cat.product[r])
            if np.isfinite(sc) and p not in seen:
                seen.append(p)
        grouped.append(seen[:K])
    out["grouped"] = grouped
    return out


# the two worker processes ---------------------------------------------------------------------------

def open_store(engine: str, folder: Path):
    from client.store import QdrantStore

    if engine.startswith("edge"):
        return QdrantStore(path=folder)
    from qdrant_client import QdrantClient

    from client.store.server import ServerEngine
    return QdrantStore(engine=ServerEngine(QdrantClient(path=str(folder)), where=str(folder)))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def disk_mb(folder: Path) -> float:
    return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file()) / 2**20


def work_build(engine: str, size: int, folder: Path, seed: int, batch: int, bulk: bool = False) -> dict:
    """Writes the catalog through ``QdrantStore.upsert``; ``bulk`` (the local-mode baseline above
    --baseline-bulk-above only): through ``engine.upsert`` with SQLite's fsync off, the same stored points
    in the same format, because the real path is quadratic there (each upsert's delete-by-filter scans
    every point in Python, and every point is committed alone: ~50 points/s at 10k, ~10 at 30k)."""
    from tqdm import tqdm

    cat = make_catalog(size, seed)
    rss_data = peak_rss_mb()
    t_upsert = 0.0
    with open_store(engine, folder) as store:
        store.ensure(DIM)
        if bulk:
            local = store.engine.client._client.collections[store.collection]  # qdrant-client's LocalCollection
            local.storage.storage.execute("PRAGMA synchronous=OFF")
        with tqdm(total=size, desc=f"{engine} {size:,}: upsert", unit="pt", file=sys.stderr, mininterval=2) as bar:
            for s in range(0, size, batch):
                pts = catalog_points(cat, s, min(size, s + batch))
                t0 = time.perf_counter()
                if bulk:
                    store.engine.upsert(store.collection, [p.id for p in pts], np.stack([p.vector for p in pts]),
                                        [p.payload() for p in pts])
                else:
                    store.upsert(pts)
                t_upsert += time.perf_counter() - t0
                bar.update(len(pts))
        t0 = time.perf_counter()
        if engine != "edge-scan":  # edge-scan: the store as indexing leaves it without optimize(): exact scans
            store.optimize()
        t_optimize = time.perf_counter() - t0
        t0 = time.perf_counter()
    t_close = time.perf_counter() - t0
    return {"upsert_s": t_upsert, "optimize_s": t_optimize, "close_s": t_close, "bulk": bulk,
            "build_s": t_upsert + t_optimize + t_close, "build_rss_mb": peak_rss_mb(), "data_rss_mb": rss_data,
            "disk_mb": disk_mb(folder)}


def work_query(engine: str, folder: Path, queries_file: Path, limit: int) -> dict:
    from client.store import Where

    data = np.load(queries_file)
    queries, qcat = data["queries"][:limit], data["qcat"][:limit]
    t0 = time.perf_counter()
    store = open_store(engine, folder)
    count = store.count()
    t_reopen = time.perf_counter() - t0
    with store:
        eng, coll = store.engine, store.collection
        # answers are payload paths (they name product, view and category), checked against exact search
        run = {"plain": lambda v, c: [h.payload["path"] for h in eng.query(coll, v, limit=K)],
               "filtered": lambda v, c: [h.payload["path"] for h in eng.query(coll, v, limit=K, where=Where(must={"category": [c]}))],
               "grouped": lambda v, c: [h.path for h in store.search(v, category=c, top_k=K)]}
        t0 = time.perf_counter()
        run["grouped"](queries[0], CATEGORIES[qcat[0]])
        first = time.perf_counter() - t0
        out = {"reopen_s": t_reopen, "count": count, "first_query_ms": first * 1000, "answers": {}, "ms": {}}
        for kind, fn in run.items():
            answers, ms = [], []
            for v, c in zip(queries, qcat):
                t0 = time.perf_counter()
                answers.append(fn(v, CATEGORIES[c]))
                ms.append((time.perf_counter() - t0) * 1000)
            out["answers"][kind], out["ms"][kind] = answers, ms
    out["query_rss_mb"] = peak_rss_mb()
    return out


def run_worker(mode: str, engine: str, folder: Path, **kw) -> dict:
    """One worker in a fresh process (so reopen and memory are those of a new process); its JSON answer."""
    result = folder.parent / f"{folder.name}.{mode}.json"
    args = [sys.executable, "-m", "bench.store_scale", "--worker", mode, "--engine", engine, "--folder", str(folder),
            "--result", str(result)] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("QDRANT_URL", "QDRANT_PATH", "QDRANT_API_KEY")}
    t0 = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=env, check=True)
    out = json.loads(result.read_text())
    out["process_s"] = time.perf_counter() - t0
    return out


# one (engine, size) ---------------------------------------------------------------------------------

def pct(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "n": len(a)}


def measure(engine: str, size: int, cat: Catalog, truth: dict, queries_file: Path, work: Path, *, seed: int,
            batch: int, n_queries: int, keep: bool, bulk: bool = False) -> dict:
    folder = work / f"{engine}_{size}"
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.time()
    build = run_worker("build", engine, folder, size=size, seed=seed, batch=batch, bulk=int(bulk))
    query = run_worker("query", engine, folder, limit=n_queries)
    row = {"engine": engine, "size": size, "dim": DIM, "queries": n_queries, **build,
           **{k: query[k] for k in ("reopen_s", "first_query_ms", "query_rss_mb", "count")}}
    row["reopen_process_s"] = query["process_s"]
    starts = np.searchsorted(cat.product, np.arange(int(cat.product[-1]) + 1))
    qcat = np.load(queries_file)["qcat"]
    for kind in KINDS:
        rec, wrong = [], 0
        for q, paths in enumerate(query["answers"][kind]):
            found = [parse_path(p) for p in paths]  # (category, product, view)
            wrong += kind != "plain" and any(c != CATEGORIES[qcat[q]] for c, _, _ in found)
            if kind == "grouped":
                want, have = set(truth[kind][q]), {p for _, p, _ in found}
                wrong += len(have) < len(found)  # two hits of one product
            else:
                want, have = {int(r) for r in truth[kind][q]}, {int(starts[p]) + v for _, p, v in found}
            rec.append(len(want & have) / max(1, len(want)))
        row[kind] = {**pct(query["ms"][kind]), "recall": float(np.mean(rec)), "recall_min": float(np.min(rec)),
                     "wrong": int(wrong)}
    row["wall_s"] = time.time() - t0
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return row


# report ---------------------------------------------------------------------------------------------

def table(rows: list[dict]) -> str:
    head = ("| engine | points | build s (upsert + HNSW) | reopen s | disk MB | RSS MB build / query "
            "| plain p50/p95/p99 ms | filtered p50/p95/p99 ms | filtered+grouped p50/p95/p99 ms "
            "| recall@10 plain / filtered / grouped |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: (r["size"], ENGINES.index(r["engine"]))):
        lat = [f"{r[k]['p50']:.1f} / {r[k]['p95']:.1f} / {r[k]['p99']:.1f}" for k in KINDS]
        build = "bulk-loaded¹" if r.get("bulk") else f"{r['build_s']:.0f} ({r['upsert_s']:.0f} + {r['optimize_s']:.0f})"
        lines.append(f"| {r['engine']} | {r['size']:,} | {build} "
                     f"| {r['reopen_s']:.2f} | {r['disk_mb']:.0f} | {r['build_rss_mb']:.0f} / {r['query_rss_mb']:.0f} "
                     f"| {lat[0]} | {lat[1]} | {lat[2]} | "
                     + " / ".join(f"{r[k]['recall']:.3f}" for k in KINDS) + " |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> list[str]:
    """Each other engine's latency, reopen and build time over the edge engine's, at each size both ran."""
    by = {(r["engine"], r["size"]): r for r in rows}
    out = []
    for (engine, size), base in sorted(by.items(), key=lambda x: x[0][1]):
        edge = by.get(("edge", size))
        if engine == "edge" or edge is None:
            continue
        parts = [f"{k} p50 {base[k]['p50'] / edge[k]['p50']:.1f}×, p95 {base[k]['p95'] / edge[k]['p95']:.1f}×" for k in KINDS]
        build = "" if base.get("bulk") else f"; build {base['build_s'] / edge['build_s']:.2f}×"
        name = "local mode" if engine == "local" else "qdrant-edge never optimized (exact scans)"
        out.append(f"- {size:,} points, {name} / qdrant-edge: " + "; ".join(parts)
                   + f"; reopen {base['reopen_s'] / edge['reopen_s']:.0f}×{build}")
    return out


def verdict(rows: list[dict]) -> list[str]:
    out = []
    for r in sorted((r for r in rows if r["engine"] == "edge"), key=lambda r: r["size"]):
        g = r["grouped"]
        checks = [(g["p95"] < TARGET_P95_MS, f"grouped p95 {g['p95']:.1f} ms (< {TARGET_P95_MS:.0f})"),
                  (min(r[k]["recall"] for k in KINDS) >= TARGET_RECALL,
                   f"lowest recall@10 {min(r[k]['recall'] for k in KINDS):.4f} (≥ {TARGET_RECALL})"),
                  (r["reopen_s"] < TARGET_REOPEN_S, f"reopen {r['reopen_s']:.2f} s (< {TARGET_REOPEN_S:.0f})"),
                  (sum(r[k]["wrong"] for k in KINDS) == 0, "every filtered hit in the query's category, one per product")]
        out.append(f"- edge at {r['size']:,}: " + "; ".join(("met: " if ok else "MISSED: ") + text for ok, text in checks))
    return out


def plot(rows: list[dict], file: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colours = dict(zip(KINDS, ("tab:blue", "tab:orange", "tab:green")))
    for engine, style in (("edge", "-o"), ("edge-scan", ":^"), ("local", "--s")):
        rs = sorted((r for r in rows if r["engine"] == engine), key=lambda r: r["size"])
        if not rs:
            continue
        sizes = [r["size"] for r in rs]
        for kind in KINDS:
            axes[0].plot(sizes, [r[kind]["p95"] for r in rs], style, color=colours[kind], label=f"{engine} {kind} p95")
            axes[0].plot(sizes, [r[kind]["p50"] for r in rs], style, color=colours[kind], alpha=0.35)
            axes[1].plot(sizes, [r[kind]["recall"] for r in rs], style, color=colours[kind], label=f"{engine} {kind}")
        axes[2].plot(sizes, [r["reopen_s"] for r in rs], style, color="tab:purple", label=f"{engine} reopen")
        real = [r for r in rs if not r.get("bulk")]  # a bulk-loaded baseline's build time is not its real one
        axes[2].plot([r["size"] for r in real], [r["build_s"] for r in real], style, color="tab:gray", label=f"{engine} build")
    axes[0].axhline(TARGET_P95_MS, color="red", lw=0.8, ls=":", label="target p95")
    axes[1].axhline(TARGET_RECALL, color="red", lw=0.8, ls=":", label="target")
    axes[2].axhline(TARGET_REOPEN_S, color="red", lw=0.8, ls=":", label="reopen target")
    for ax, title, ylabel in zip(axes, ("query latency (p95; faint: p50)", "recall@10 vs exact", "build and reopen"),
                                 ("ms", "recall@10", "s")):
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("points")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    fig.suptitle(f"product store, {DIM}-d cosine, filtered by category + grouped by product")
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], meta: dict) -> str:
    runs: dict[tuple, list[str]] = {}
    for r in sorted(rows, key=lambda r: (r["size"], r["engine"])):
        runs.setdefault((r.get("command", "?"), r.get("measured", "?"), r.get("load", "?")), []).append(
            f"{r['engine']} {r['size']:,}")
    text = "\n".join([
        "# Product store at catalog scale", "",
        f"{os.cpu_count()} CPU cores shared with other jobs (load average at each run's start below: latencies "
        f"are upper bounds); {DIM}-d cosine, {len(CATEGORIES)} categories (largest 35 %), 1-3 views per product; "
        f"queries are held-out views filtered by their product's category; recall@10 against exact numpy search "
        "(grouped: the 10 best products). Build = upsert through `QdrantStore` (batches of "
        f"{meta['batch']}) + `optimize()`; reopen = a fresh process opening the folder until `count()` answers.", "",
        table(rows), "",
        *(f"- {', '.join(which)}: `{cmd}`, {date}, load average {load}" for (cmd, date, load), which in runs.items()), "",
        "¹ the local-mode store above 10k is bulk-loaded (engine.upsert, SQLite fsync off: same points, same files) "
        "because its real indexing path is quadratic: ~50 points/s at 10k and ~10 at 30k here (each upsert's "
        "delete-by-filter scans every point in Python; every point is its own SQLite commit), ~2 h for 100k.", "",
        "Targets (issue 10, edge engine):", *verdict(rows), "",
        "Ratios against qdrant-edge at the same size (local mode ran in the same run as the edge rows it is compared with):", *(ratios(rows) or ["- (no baseline in these rows)"]), "",
        "First query after reopen (ms): " + ", ".join(f"{r['engine']} {r['size']:,}: {r['first_query_ms']:.0f}"
                                                     for r in sorted(rows, key=lambda r: (r["size"], r["engine"]))), "",
        "![latency](latency.png)", ""])
    return text


def load_rows(results_file: Path) -> list[dict]:
    """The rows written so far (read again before each write: another run may have added some)."""
    return json.loads(results_file.read_text())["rows"] if results_file.exists() else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated point counts")
    ap.add_argument("--queries", type=int, default=200, help="queries per size (edge engine)")
    ap.add_argument("--engines", default="edge,local", help=f"of {','.join(ENGINES)}")
    ap.add_argument("--baseline-sizes", default="10000,100000", help="sizes at which the local-mode baseline runs")
    ap.add_argument("--baseline-queries", type=int, default=20, help="query cap of the local-mode baseline")
    ap.add_argument("--baseline-bulk-above", type=int, default=10000,
                    help="larger local-mode stores are bulk-loaded (their build time is not the real path's)")
    ap.add_argument("--batch", type=int, default=1000, help="points per QdrantStore.upsert call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="where the stores are built (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the built stores")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true", help="rewrite report.md and latency.png from results.json")
    # the worker processes
    ap.add_argument("--worker", choices=("build", "query"), help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bulk", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        out = (work_build(args.engine, args.size, args.folder, args.seed, args.batch, bool(args.bulk)) if args.worker == "build"
               else work_query(args.engine, args.folder, args.folder.parent / "queries.npz", args.limit))
        args.result.write_text(json.dumps(out))
        return 0

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        base_sizes = {int(s) for s in args.baseline_sizes.split(",") if s}
    except ValueError:
        ap.error(f"--sizes/--baseline-sizes: comma-separated integers, got {args.sizes!r} / {args.baseline_sizes!r}")
    engines = [e for e in args.engines.split(",") if e]
    if bad := [e for e in engines if e not in ENGINES]:
        ap.error(f"--engines: unknown {bad}; expected some of {list(ENGINES)}")
    if any(s < 20 * K for s in sizes) or args.queries < 1:
        ap.error("--sizes: at least 200 points each; --queries: at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    rows = load_rows(results_file)
    meta = {"command": "python -m bench.store_scale " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "batch": args.batch}
    if args.report_only:
        sizes = []
    work = args.workdir or Path(tempfile.mkdtemp(prefix="store_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for size in sizes:
            t0 = time.perf_counter()
            cat = make_catalog(size, args.seed)
            queries, qcat = make_queries(cat, min(args.queries, size // 2), args.seed)
            truth = exact(cat, queries, qcat)
            print(f"{size:,} points: data + exact answers in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for engine in engines:
                if engine == "local" and size not in base_sizes:
                    continue
                n_q = len(queries) if engine == "edge" else min(len(queries), args.baseline_queries)
                folder_q = work / "queries.npz"
                np.savez(folder_q, queries=queries, qcat=qcat)
                row = measure(engine, size, cat, truth, folder_q, work, seed=args.seed, batch=args.batch,
                              n_queries=n_q, keep=args.keep, bulk=engine == "local" and size > args.baseline_bulk_above)
                row.update(measured=meta["date"], command=meta["command"], load=meta["load"])
                rows = [r for r in load_rows(results_file) if (r["engine"], r["size"]) != (engine, size)] + [row]
                print(table([row]).splitlines()[-1], file=sys.stderr)
                results_file.write_text(json.dumps({"rows": rows, "last_run": meta}, indent=1))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    plot(rows, args.out / "latency.png")
    report = write_report(rows, meta)
    (args.out / "report.md").write_text(report)
    print(report)
    print(f"wrote {args.out}/report.md, results.json, latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
