"""Soak: sustained search load against a local stack, with memory watched on both sides:
python -m bench.soak [--minutes 5] [--concurrency 8] [--sample-seconds 5].

Starts everything it needs: a tritonserver on free loopback ports (deploy.local.LocalTriton), the demo
catalog (export.demo_data, generated products) indexed into a temporary embedded store. Then
``--concurrency`` threads run ``client.search.search_image`` (one ensemble request + the store queries of
each object) on the demo's query scenes in turn, for ``--minutes``. Every ``--sample-seconds`` it samples
the resident memory (VmRSS) of tritonserver with all its child processes (the Python-backend stubs: one
process per model instance) and of this client process, and the requests and errors so far.

Prints, per side: memory at start and end, the maximum, and the slope (least squares over the samples
after the first minute, MB per minute; flat memory is a slope near 0); requests/s, p50/p95 latency and
the error count. Writes data/bench/soak.json (every sample) and data/bench/soak.png. Exit status 1 when
any request failed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench"
WARMUP_S = 60.0  # samples before this are left out of the slope (caches, allocator pools, lazy imports)


def rss_mb(pid: int) -> float:
    """VmRSS of one process in MB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_rss_mb(pid: int) -> tuple[float, int]:
    procs = descendants(pid)
    return sum(rss_mb(p) for p in procs), len(procs)


def slope_per_minute(t: list[float], y: list[float]) -> float:
    """Least-squares slope of y over t (seconds), per minute; samples before WARMUP_S left out."""
    pts = [(a, b) for a, b in zip(t, y) if a >= min(WARMUP_S, t[-1] / 2)]
    if len(pts) < 3:
        return float("nan")
    ts, ys = np.array(pts).T
    return float(np.polyfit(ts / 60.0, ys, 1)[0])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, 100 * q)) if values else float("nan")


class Load:
    """``concurrency`` threads searching the photos in turn until ``stop`` is set."""

    def __init__(self, photos: list[bytes], client, store, concurrency: int):
        from client.search import search_image

        self.search = search_image
        self.photos, self.client, self.store = photos, client, store
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.next = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)]

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                data = self.photos[self.next % len(self.photos)]
                self.next += 1
            t = time.perf_counter()
            try:
                objects = self.search(data, self.client, self.store, top_k=5)
                if not objects or not objects[0].results:
                    raise RuntimeError("a search returned no results")
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with self.lock:
                self.latencies.append(time.perf_counter() - t)

    def start(self) -> None:
        for th in self.threads:
            th.start()

    def join(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(timeout=120)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    t = [x["t"] / 60 for x in s]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    ax1.plot(t, [x["triton_mb"] for x in s], label=f"tritonserver + stubs ({s[-1]['triton_procs']} processes)")
    ax1.plot(t, [x["client_mb"] for x in s], label="client (this process)")
    ax1.set_ylabel("resident memory (MB)")
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="center right")
    ax1.set_title(f"soak: concurrency {result['concurrency']}, {result['minutes']:.1f} min, "
                  f"{result['requests']} requests, {result['errors']} errors")
    rps = [0.0] + [(b["requests"] - a["requests"]) / max(b["t"] - a["t"], 1e-9) for a, b in zip(s, s[1:])]
    ax2.plot(t, rps, color="tab:green")
    ax2.set_ylabel("searches/s (per sample)")
    ax2.set_xlabel("minutes")
    ax2.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--sample-seconds", type=float, default=5.0)
    ap.add_argument("--queries", type=int, default=8, help="distinct query scenes, searched in turn")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1 or args.sample_seconds <= 0:
        ap.error("--minutes and --sample-seconds must be > 0, --concurrency >= 1")

    from client.catalog import index_folder
    from client.store import QdrantStore
    from client.triton import RetrievalClient
    from deploy.local import LocalTriton, free_port
    from export.demo_data import write_demo

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    server = LocalTriton(work / "triton", ROOT / "model_repository")
    st = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=300)
    try:
        write_demo(work / "demo", photoset=None, queries=args.queries, seed=11)
        photos = [p.read_bytes() for p in sorted((work / "demo" / "queries").glob("*.jpg"))]
        with RetrievalClient(st.grpc_url) as client, QdrantStore(path=work / "qdrant") as store:
            report = index_folder(work / "demo" / "catalog", client, store)
            print(f"catalog: {report.indexed} images, {store.count()} points; tritonserver pid {st.pid}; "
                  f"load: concurrency {args.concurrency} for {args.minutes:g} min", flush=True)
            load = Load(photos, client, store, args.concurrency)
            samples: list[dict] = []
            t0 = time.monotonic()
            end = t0 + 60 * args.minutes
            load.start()
            while True:
                now = time.monotonic()
                triton_mb, procs = tree_rss_mb(st.pid)
                with load.lock:
                    done, errors = len(load.latencies), len(load.errors)
                samples.append({"t": round(now - t0, 2), "triton_mb": round(triton_mb, 1), "triton_procs": procs,
                                "client_mb": round(rss_mb(os.getpid()), 1), "requests": done, "errors": errors})
                print(f"  {samples[-1]['t']:7.1f} s  triton {triton_mb:7.1f} MB ({procs} processes)  "
                      f"client {samples[-1]['client_mb']:7.1f} MB  {done} searches, {errors} errors", flush=True)
                if now >= end:
                    break
                time.sleep(min(args.sample_seconds, max(end - now, 0.01)))  # the sampling period
            load.join()
            wall = time.monotonic() - t0
    finally:
        server.down()

    t = [s["t"] for s in samples]
    sides = {}
    for key in ("triton_mb", "client_mb"):
        y = [s[key] for s in samples]
        sides[key] = {"start": y[0], "end": y[-1], "max": max(y), "slope_mb_per_min": round(slope_per_minute(t, y), 3)}
    lat = load.latencies
    result = {"minutes": wall / 60, "concurrency": args.concurrency, "requests": len(lat) + len(load.errors),
              "errors": len(load.errors), "error_examples": sorted(set(load.errors))[:5],
              "searches_per_s": round(len(lat) / wall, 2),
              "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
              "p95_ms": round(1000 * percentile(lat, 0.95), 1) if lat else None,
              "memory": sides, "catalog_images": report.indexed, "samples": samples,
              "command": "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "soak.png")
    print(f"\n{result['requests']} searches in {wall / 60:.1f} min at concurrency {args.concurrency}: "
          f"{result['searches_per_s']} searches/s, p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, "
          f"{result['errors']} errors")
    print(f"{'memory (MB)':<28}{'start':>9}{'end':>9}{'max':>9}{'slope MB/min':>14}")
    for key, label in (("triton_mb", "tritonserver + stubs"), ("client_mb", "client")):
        m = sides[key]
        print(f"{label:<28}{m['start']:>9.1f}{m['end']:>9.1f}{m['max']:>9.1f}{m['slope_mb_per_min']:>14.2f}")
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    for e in result["error_examples"]:
        print(f"error: {e}", file=sys.stderr)
    return 1 if load.errors else 0


if __name__ == "__main__":
    sys.exit(main())
