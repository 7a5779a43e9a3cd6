"""python -m deploy.perf [IMG ...]: load-test the ensemble with the real perf_analyzer over gRPC.

Uses the perf_analyzer binary shipped in the tritonclient==2.51.0 wheel (installed with the serve
extra), resolving its libraries from nvidia_pytriton.libs. Sends the given encoded images (default:
the demo query photos) as the ensemble's BYTES input and prints throughput and latency per
concurrency; ``--csv`` keeps perf_analyzer's own report.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from client import spec
from deploy.local import DEFAULT_STATE, ROOT, library_path


def perf_analyzer_binary() -> Path:
    found = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    if not Path(found).exists():
        raise SystemExit("perf_analyzer not found: install the serve extra (tritonclient==2.51.0 ships it)")
    return Path(found)


def input_data(images: list[Path], out: Path) -> Path:
    """perf_analyzer takes b64 content as the serialised tensor: a BYTES element is a little-endian
    uint32 length followed by the bytes."""
    rows = []
    for p in images:
        data = p.read_bytes()
        rows.append({spec.IMAGE_BYTES.name: {"b64": base64.b64encode(struct.pack("<I", len(data)) + data).decode(), "shape": [1]}})
    out.write_text(json.dumps({"data": rows}))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="*", type=Path)
    ap.add_argument("--url", default=os.environ.get("TRITON_URL", spec.DEFAULT_TRITON_URL))
    ap.add_argument("--concurrency", default="1", help="perf_analyzer --concurrency-range, e.g. 1:4:1 (default %(default)s)")
    ap.add_argument("--model", default=spec.ENSEMBLE)
    ap.add_argument("--measurement-ms", type=int, default=5000)
    ap.add_argument("--csv", type=Path, help="write perf_analyzer's CSV report here")
    args = ap.parse_args(argv)
    images = args.images or sorted((ROOT / "data" / "demo" / "queries").glob("scene_*.jpg"))
    if not images:
        ap.error("no images given and no demo queries under data/demo/queries (run deploy/demo.sh first)")
    with tempfile.TemporaryDirectory() as tmp:
        data = input_data(images, Path(tmp) / "input.json")
        cmd = [str(perf_analyzer_binary()), "-m", args.model, "-u", args.url, "-i", "grpc", "--input-data", str(data),
               "--shape", f"{spec.IMAGE_BYTES.name}:1", "--concurrency-range", args.concurrency, "-s", "30",
               "--measurement-interval", str(args.measurement_ms), "--max-trials", "10"]
        if args.csv:
            cmd += ["-f", str(args.csv)]
        env = dict(os.environ, LD_LIBRARY_PATH=library_path(DEFAULT_STATE))
        print("$ " + " ".join(cmd), flush=True)
        return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
