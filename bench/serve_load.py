"""/search of the web service under load, next to the same photos through `python -m client.search` processes:
python -m bench.serve_load [--concurrency 1,2,4,8] [--requests 32] [--cli-requests 8].

Starts everything it needs: a tritonserver on free loopback ports (deploy.local.LocalTriton), the demo catalog
(export.demo_data, generated products) indexed into a temporary embedded store, then `python -m client.serve`
as its own process on a free port. At each concurrency, ``--requests`` photo searches (the demo's query scenes
in turn, multipart uploads) from that many client threads; then the service is stopped and the same photos go
through one `python -m client.search --json` process each, that many at a time (each concurrent process on its
own copy of the store: the embedded engine is locked per process). Prints a table (requests/s, p50, p95 of the
latency), writes data/bench/serve_load.json and serve_load.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench"


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(latencies: list[float], wall: float, errors: int) -> dict:
    return {"requests": len(latencies) + errors, "errors": errors, "wall_s": round(wall, 3),
            "rps": round(len(latencies) / wall, 3) if wall else 0.0,
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None}


def wait_health(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"client.serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"client.serve at {url} not healthy after {timeout} s")


def load_service(url: str, photos: list[Path], concurrency: int, n: int) -> dict:
    import httpx

    datas = [(p.name, p.read_bytes()) for p in photos]
    with httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=concurrency)) as http:
        http.post("/search", files={"image": (datas[0][0], datas[0][1], "image/jpeg")})  # warm-up, not counted

        def one(i: int) -> float | None:
            name, data = datas[i % len(datas)]
            t = time.perf_counter()
            r = http.post("/search", files={"image": (name, data, "image/jpeg")})
            return time.perf_counter() - t if r.status_code == 200 else None

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            got = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    ok = [g for g in got if g is not None]
    return summary(ok, wall, len(got) - len(ok))


def load_cli(photos: list[Path], stores: list[Path], triton_url: str, concurrency: int, n: int) -> dict:
    def one(i: int) -> float | None:
        env = dict(os.environ, TRITON_URL=triton_url, QDRANT_PATH=str(stores[i % concurrency]))
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "client.search", str(photos[i % len(photos)]), "--json"],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        return time.perf_counter() - t if r.returncode == 0 else None

    # one worker per slot, each running its requests (i = slot, slot + c, ...) one after another on its own store
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        got = list(pool.map(lambda slot: [one(i) for i in range(slot, n, concurrency)], range(concurrency)))
    wall = time.perf_counter() - t0
    flat = [g for slot in got for g in slot]
    ok = [g for g in flat if g is not None]
    return summary(ok, wall, len(flat) - len(ok))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for label, rows in (("service POST /search", results["service"]), ("client.search processes", results["cli"])):
        cs = [r["concurrency"] for r in rows]
        a.plot(cs, [r["rps"] for r in rows], "o-", label=label)
        b.plot(cs, [r["p95_ms"] / 1000 if r["p95_ms"] else float("nan") for r in rows], "o-", label=label)
    a.set(xlabel="concurrency", ylabel="photos / s", title="throughput", xticks=cs)
    b.set(xlabel="concurrency", ylabel="p95 latency (s)", title="p95 latency", xticks=cs)
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"search of a photo: long-running service vs a process per photo ({results['catalog_images']} catalog images)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels (default %(default)s)")
    ap.add_argument("--requests", type=int, default=32, help="service requests per level (default %(default)s)")
    ap.add_argument("--cli-requests", type=int, default=8, help="client.search processes per level (default %(default)s)")
    ap.add_argument("--queries", type=int, default=8, help="distinct query photos (default %(default)s)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if min(levels) < 1 or args.requests < 1 or args.cli_requests < 0:
        ap.error("concurrency levels and --requests must be >= 1")

    from tqdm import tqdm

    from client.catalog import index_folder
    from client.store import QdrantStore
    from client.triton import RetrievalClient
    from deploy.local import LocalTriton, free_port
    from export.demo_data import write_demo

    work = Path(tempfile.mkdtemp(prefix="serve_load_"))
    server = LocalTriton(work / "triton", ROOT / "model_repository")
    proc = None
    try:
        print("starting tritonserver ...", file=sys.stderr)
        triton_url = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=300).grpc_url
        write_demo(work / "demo", photoset=None, queries=args.queries, seed=11)
        catalog = work / "demo" / "catalog"
        photos = sorted((work / "demo" / "queries").glob("*.jpg"))
        n_catalog = len(list(catalog.rglob("*.jpg")))
        with RetrievalClient(triton_url) as client, QdrantStore(path=work / "qdrant") as store, \
                tqdm(total=n_catalog, desc="indexing", unit="img") as bar:
            index_folder(catalog, client, store, category_from_folders=True, progress=bar.update)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "client.serve", "--port", str(port), "--triton-url", triton_url,
                                 "--qdrant-path", str(work / "qdrant"), "--upload-dir", str(work / "uploads")],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"))
        wait_health(url, proc)
        results: dict = {"catalog_images": n_catalog, "query_photos": len(photos), "cpu_count": os.cpu_count(),
                         "load_average_at_start": [round(v, 1) for v in os.getloadavg()], "service": [], "cli": []}
        for c in tqdm(levels, desc="service load", unit="level"):
            results["service"].append({"concurrency": c, **load_service(url, photos, c, args.requests)})
        proc.terminate()
        proc.wait(30)
        proc = None
        stores = [work / "qdrant"] + [work / f"qdrant_{k}" for k in range(1, max(levels))]
        for s in stores[1:]:
            shutil.copytree(work / "qdrant", s)
        if args.cli_requests:
            for c in tqdm(levels, desc="client.search processes", unit="level"):
                results["cli"].append({"concurrency": c, **load_cli(photos, stores, triton_url, c, max(args.cli_requests, c))})
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        server.down()
        shutil.rmtree(work, ignore_errors=True)

    lines = [f"search of one photo ({n_catalog} catalog images, {len(photos)} query photos, {os.cpu_count()} CPU cores)",
             f"{'concurrency':>11} | {'service req/s':>13} {'p50 ms':>8} {'p95 ms':>8} | {'CLI photos/s':>12} {'p50 ms':>8} {'p95 ms':>8}"]
    cli = {r["concurrency"]: r for r in results["cli"]}
    for r in results["service"]:
        c = cli.get(r["concurrency"], {})
        lines.append(f"{r['concurrency']:>11} | {r['rps']:>13.2f} {r['p50_ms']:>8} {r['p95_ms']:>8} | "
                     f"{c.get('rps', float('nan')):>12.2f} {c.get('p50_ms', '-'):>8} {c.get('p95_ms', '-'):>8}"
                     + (f"  ({r['errors']} service errors)" if r["errors"] else "") + (f"  ({c['errors']} CLI errors)" if c.get("errors") else ""))
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "serve_load.png")
    print(f"wrote {args.out / 'serve_load.json'} and {args.out / 'serve_load.png'}", file=sys.stderr)
    return 1 if any(r["errors"] for r in results["service"] + results["cli"]) else 0


if __name__ == "__main__":
    sys.exit(main())
