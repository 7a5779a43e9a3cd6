"""Serving throughput: python -m bench.serving [--concurrency 1,2,4,8] [--variants generated,...] [--images DIR].

The same photos (default: 12 demo query scenes, real photos with products pasted on, generated with
export.demo_data into data/bench/serving/photos/ when missing) go

- **in process**: ``export.pipeline.Pipeline`` over the same ONNX files with onnxruntime's default threads
  (what the served configs ask for), one image after another (c=1) and from 2 threads (c=2): the baseline;
- **client-side chaining**: the client decodes, letterboxes and crops itself and calls the served
  ``detector``, ``query_features``, ``classifier`` and ``embedder`` over gRPC (four calls instead of one);
- **the ensemble over gRPC** with the real ``perf_analyzer`` at each concurrency, for each repository
  variant: a copy of model_repository/ whose generated configs differ (``VARIANTS``: instance counts,
  threads, dynamic batching), served by its own tritonserver on free ports.

For each run: images/s, p50/p95/p99 latency (perf_analyzer's CSV), and for each composing model the mean
queue and compute time per request and the mean batch it ran (Triton's statistics, deltas around the
run). Written to data/bench/serving/: report.md (the tables), results.json, throughput.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from client import spec

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "bench" / "serving"
HEAVY = (spec.DETECTOR.name, spec.BACKBONE.name, spec.QUERY_FEATURES.name)  # the models that hold nearly all of the compute


def _set_threads(cfg, threads: int) -> None:
    cfg.parameters["intra_op_thread_count"].string_value = str(threads)


def _instances(cfg, count: int) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    del cfg.instance_group[:]
    cfg.instance_group.add(count=count, kind=mc.ModelInstanceGroup.KIND_CPU)


def _variant_generated(name, cfg) -> None:
    """The committed configs as they are."""


def _variant_before(name, cfg) -> None:
    """The configs before this sweep: onnxruntime's default threads (every core) and Triton's default instances."""
    if cfg.backend == "onnxruntime":
        _set_threads(cfg, 0)
        del cfg.instance_group[:]


def _variant_threads1_x2(name, cfg) -> None:
    """Every ONNX model on 1 intra-op thread; the detector and the backbone with 2 instances each."""
    if cfg.backend == "onnxruntime":
        _set_threads(cfg, 1)
        if name in HEAVY:
            _instances(cfg, 2)


def _variant_threads1(name, cfg) -> None:
    """Every ONNX model on 1 intra-op thread, one instance each (requests overlap across models)."""
    if cfg.backend == "onnxruntime":
        _set_threads(cfg, 1)
        _instances(cfg, 1)


def _variant_batched(name, cfg) -> None:
    """threads1, and the backbone (``features``) batched dynamically: the rows of concurrent requests run
    as one batch (the embedder cannot be: its ``embedder_id`` output has no batch dimension). Since the search
    side's box jitter the ``retrieval`` ensemble that perf_analyzer loads runs ``query_features`` instead (two
    inputs of N and 2N rows: not batched here), so for it this variant measures what ``threads1`` does; ``features``
    still serves ``retrieval_catalog`` and ``whole_image``."""
    _variant_threads1(name, cfg)
    if name == spec.BACKBONE.name:
        cfg.max_batch_size = 4 * spec.NUM_ROWS
        for t in (*cfg.input, *cfg.output):
            del t.dims[0]  # the leading -1 becomes Triton's batch dimension
        cfg.dynamic_batching.max_queue_delay_microseconds = 2000


VARIANTS: dict[str, Callable] = {"generated": _variant_generated, "before": _variant_before, "threads1": _variant_threads1,
                                 "threads1_x2": _variant_threads1_x2, "batched": _variant_batched}


def write_variant(name: str, dest: Path, source: Path = ROOT / "model_repository") -> Path:
    """A copy of ``source`` (ONNX files hard-linked) with every config generated and then changed by the variant."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from export import repository

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(source, dest, copy_function=os.link, ignore=shutil.ignore_patterns("__pycache__"))
    for model in spec.MODELS:
        cfg = repository.model_config(model)
        VARIANTS[name](model.name, cfg)
        path = dest / model.name / "config.pbtxt"
        path.unlink()
        path.write_text(repository.HEADER + text_format.MessageToString(cfg))
    return dest


def photos(folder: Path | None) -> list[Path]:
    if folder is None:
        folder = OUT / "photos" / "queries"
        if not any(folder.glob("*.jpg")):
            from export.build import default_photoset
            from export.demo_data import write_demo

            write_demo(folder.parent, photoset=default_photoset(), queries=12, seed=7)
    found = sorted(p for p in folder.iterdir() if spec.is_image_file(p))
    if not found:
        raise SystemExit(f"{folder}: no images")
    return found


def in_process(images: list[bytes], threads: int, seconds: float, ort_threads: int = 0) -> dict:
    """Images/s of export.pipeline over the same ONNX files, ``threads`` images at a time, each onnxruntime
    session on ``ort_threads`` intra-op threads (0: onnxruntime's default, every core)."""
    from export.pipeline import Pipeline

    pipe = Pipeline(ROOT / "model_repository", threads=ort_threads)
    for data in images[:2]:
        pipe.outputs(data)  # warm up
    return _loop(lambda i: pipe.outputs(images[i % len(images)]), threads, seconds)


def _loop(one: Callable[[int], object], threads: int, seconds: float) -> dict:
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    counter = iter(range(10**9))

    def worker():
        while time.perf_counter() < stop:
            t = time.perf_counter()
            one(next(counter))
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(worker) for _ in range(threads)]:
            f.result()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"images_per_s": len(lat) / wall, "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "n": len(lat)}


def client_chain(url: str, images: list[bytes], threads: int, seconds: float) -> dict:
    """The client chains the search ensemble's steps itself: decode + letterbox + crop graph here, four model calls
    to Triton (the backbone through ``query_features``, with the crop graph's jitter crops)."""
    import onnxruntime as ort

    from client import imaging
    from client.triton import RetrievalClient
    from export.crop_graph import build_crop_model

    crop = ort.InferenceSession(build_crop_model().SerializeToString(), providers=["CPUExecutionProvider"])
    client = RetrievalClient(url)

    def one(i: int):
        det_image, src, size = imaging.letterbox(imaging.decode(images[i % len(images)]))
        det = client.call(spec.DETECTOR.name, {spec.DET_IMAGE.name: det_image, spec.DET_SOURCE.name: src}, [spec.DET_BOXES.name, spec.DET_SCORES.name])
        cut = dict(zip((t.name for t in spec.CROP.outputs), crop.run(None, {spec.CROP_SOURCE.name: src, spec.IMAGE_SIZE.name: size, **det})))
        crops = cut[spec.CROPS.name]
        feats = client.call(spec.QUERY_FEATURES.name, {spec.CROPS.name: crops, spec.JITTER_CROPS.name: cut[spec.JITTER_CROPS.name]},
                            [spec.FEATURES.name])
        client.call(spec.CLASSIFIER.name, feats, [t.name for t in spec.CLASSIFIER.outputs])
        client.call(spec.EMBEDDER.name, {**feats, spec.CROPS.name: crops}, [t.name for t in spec.EMBEDDER.outputs])

    one(0)
    try:
        return _loop(one, threads, seconds)
    finally:
        client.close()


def model_stats(url: str) -> dict[str, dict]:
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)
    try:
        stats = c.get_inference_statistics(as_json=True)["model_stats"]
    finally:
        c.close()
    out = {}
    for m in stats:
        inf = m.get("inference_stats", {})
        out[m["name"]] = {"requests": int(inf.get("success", {}).get("count", 0)),
                          "executions": int(m.get("execution_count", 0)),
                          "queue_ns": int(inf.get("queue", {}).get("ns", 0)),
                          "compute_ns": int(inf.get("compute_infer", {}).get("ns", 0))}
    return out


def stats_delta(before: dict, after: dict) -> dict[str, dict]:
    out = {}
    for name, a in after.items():
        b = before.get(name, {k: 0 for k in a})
        req = a["requests"] - b["requests"]
        if req <= 0:
            continue
        ex = max(a["executions"] - b["executions"], 1)
        out[name] = {"requests": req, "queue_ms": (a["queue_ns"] - b["queue_ns"]) / req / 1e6,
                     "compute_ms": (a["compute_ns"] - b["compute_ns"]) / req / 1e6, "requests_per_execution": req / ex}
    return out


def run_perf(url: str, data: Path, concurrency: int, measurement_ms: int, csv_path: Path) -> dict:
    from deploy.local import DEFAULT_STATE, library_path
    from deploy.perf import perf_analyzer_binary

    cmd = [str(perf_analyzer_binary()), "-m", spec.ENSEMBLE, "-u", url, "-i", "grpc", "--input-data", str(data),
           "--shape", f"{spec.IMAGE_BYTES.name}:1", "--concurrency-range", str(concurrency), "-s", "30",
           "--measurement-interval", str(measurement_ms), "--max-trials", "6", "-f", str(csv_path)]
    env = dict(os.environ, LD_LIBRARY_PATH=library_path(DEFAULT_STATE))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not csv_path.exists():
        raise RuntimeError(f"perf_analyzer failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    row = next(csv.DictReader(csv_path.open()))
    return {"images_per_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1000,
            "p95_ms": float(row["p95 latency"]) / 1000, "p99_ms": float(row["p99 latency"]) / 1000,
            "stable": "Failed to obtain stable measurement" not in proc.stdout + proc.stderr}


def serve_variant(name: str, paths: list[Path], images: list[bytes], levels: list[int], measurement_ms: int, work: Path,
                  chain_seconds: float) -> dict:
    from deploy.local import LocalTriton, free_port
    from deploy.perf import input_data

    repo = write_variant(name, work / f"repo_{name}")
    server = LocalTriton(work / f"state_{name}", repo)
    st = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=300)
    result: dict = {"levels": {}}
    try:
        data = input_data(paths, work / "input.json")  # deploy.perf's encoding of the BYTES input
        for c in levels:
            before = model_stats(st.grpc_url)
            r = run_perf(st.grpc_url, data, c, measurement_ms, work / f"{name}_c{c}.csv")
            r["models"] = stats_delta(before, model_stats(st.grpc_url))
            result["levels"][c] = r
            print(f"  {name:12s} c={c}: {r['images_per_s']:.2f} img/s, p95 {r['p95_ms']:.0f} ms", flush=True)
        if chain_seconds:
            result["client_chain"] = {c: client_chain(st.grpc_url, images, c, chain_seconds) for c in (1, 2)}
            for c, r in result["client_chain"].items():
                print(f"  {name:12s} client-side chain c={c}: {r['images_per_s']:.2f} img/s", flush=True)
    finally:
        server.down()
    return result


def report(results: dict) -> str:
    base = results["in_process"]
    best_base = max(r["images_per_s"] for r in base.values())
    lines = ["# Serving throughput", "", f"Photos: {results['photos']} ({results['n_images']} images), "
             f"{results['cpus']} CPU cores, {results['date']}. Command: `python -m bench.serving`.", "",
             "## In process (export.pipeline, the same ONNX files and photos)", "",
             "| images at a time, onnxruntime threads per session | images/s | p50 ms | p95 ms |", "|---|---|---|---|"]
    lines += [f"| {c} | {r['images_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} |" for c, r in base.items()]
    lines += ["", "## The ensemble over gRPC (perf_analyzer)", "",
              "| variant | concurrency | images/s | vs best in-process | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    for name, v in results["variants"].items():
        for c, r in v["levels"].items():
            lines.append(f"| {name} | {c} | {r['images_per_s']:.2f} | {r['images_per_s'] / best_base:.2f}x | {r['p50_ms']:.0f} | "
                         f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} |")
    lines += ["", "## Per composing model (mean per request; batch = requests per execution)", ""]
    for name, v in results["variants"].items():
        top = max(v["levels"])
        lines += [f"{name}, concurrency {top}:", "", "| model | queue ms | compute ms | batch |", "|---|---|---|---|"]
        lines += [f"| {m} | {s['queue_ms']:.1f} | {s['compute_ms']:.1f} | {s['requests_per_execution']:.2f} |"
                  for m, s in sorted(v["levels"][top]["models"].items())]
        lines.append("")
    chains = {n: v["client_chain"] for n, v in results["variants"].items() if v.get("client_chain")}
    if chains:
        lines += ["## Client-side chaining (decode, letterbox, crop in the client; 4 model calls) vs one ensemble call", "",
                  "| variant | threads | client chain images/s | ensemble images/s (same concurrency) |", "|---|---|---|---|"]
        for n, ch in chains.items():
            for c, r in ch.items():
                ens = results["variants"][n]["levels"].get(c, {}).get("images_per_s", float("nan"))
                lines.append(f"| {n} | {c} | {r['images_per_s']:.2f} | {ens:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, v in results["variants"].items():
        cs = sorted(v["levels"])
        ax[0].plot(cs, [v["levels"][c]["images_per_s"] for c in cs], marker="o", label=f"ensemble: {name}")
        ax[1].plot(cs, [v["levels"][c]["p95_ms"] for c in cs], marker="o", label=name)
    for c, r in results["in_process"].items():
        ax[0].axhline(r["images_per_s"], ls="--", lw=1, label=f"in process, {c}")
    ax[0].set(xlabel="concurrency", ylabel="images/s", title="throughput")
    ax[1].set(xlabel="concurrency", ylabel="ms", title="p95 latency")
    ax[0].legend(fontsize=8)
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--images", type=Path, help="folder of photos (default: the demo query scenes)")
    ap.add_argument("--measurement-ms", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each in-process / client-chain run")
    ap.add_argument("--no-chain", action="store_true", help="skip the client-side chaining runs")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.out = args.out.resolve()  # the servers it starts run in another working directory  # a killed run still stops the servers it started (finally)
    levels = [int(c) for c in args.concurrency.split(",")]
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    paths = photos(args.images)
    images = [p.read_bytes() for p in paths]
    results: dict = {"photos": str(paths[0].parent), "n_images": len(images), "cpus": os.cpu_count(),
                     "date": time.strftime("%Y-%m-%d %H:%M"), "in_process": {}, "variants": {}}
    from export.repository import CPU_THREADS

    for ort_threads in (0, CPU_THREADS):  # onnxruntime's default, and the served configs' threads
        for c in (1, 2):
            key = f"{c} image(s) at a time, onnxruntime threads {ort_threads or 'default'}"
            results["in_process"][key] = r = in_process(images, c, args.seconds, ort_threads)
            print(f"in process, {key}: {r['images_per_s']:.2f} img/s, p95 {r['p95_ms']:.0f} ms", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for i, name in enumerate(names):
            chain = 0.0 if args.no_chain or i else args.seconds  # the client chain once, on the first variant
            results["variants"][name] = serve_variant(name, paths, images, levels, args.measurement_ms, Path(tmp), chain)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    (args.out / "report.md").write_text(text)
    plot(results, args.out / "throughput.png")
    print(text)
    print(f"written: {args.out}/report.md, results.json, throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
