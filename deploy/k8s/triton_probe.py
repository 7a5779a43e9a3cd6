"""Liveness of a tritonserver that also checks its models answer: python3 triton_probe.py [--url URL] [--model M]
[--requests N] [--timeout S]. Exit 0: live; 1: not live (the reason on stderr).

Triton's /v2/health/live and /v2/health/ready stay 200 when a Python-backend stub process has died: that
model instance then fails every request it is given, for good, and this Triton (2.51) does not restart it
(triton-inference-server/server#8604; reproduced in tests/test_faults.py). A liveness probe on the health
endpoints alone therefore never replaces such a pod. This probe asks /v2/health/live, then sends ``N``
inferences of a small generated image at once to ``M`` (the ``retrieval`` ensemble: every model of the
pipeline), so that each of a model's instances is likely to get one, and checks each answer.

Verdicts, chosen so that a busy server is never killed for being busy:
- live endpoint not 200, or the connection refused: not live;
- an inference answered with an error (HTTP 400/500, e.g. "Stub process ... is not healthy"): not live;
- an inference that times out, or 503/429 (queue full, not ready yet): live (busy), said on stderr;
- every inference answered with the ensemble's outputs: live.

Standard library only: it runs inside the NGC tritonserver image as the Kubernetes exec livenessProbe
(deploy/k8s/triton.yaml, mounted from the ConfigMap triton-probe).
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import threading
import urllib.error
import urllib.request
import zlib

BUSY_CODES = (429, 503)
OUTPUTS = ("scores", "embedder_id")  # one output of the detector's step and one of the embedder's


def probe_png(side: int = 96) -> bytes:
    """A small RGB gradient as a PNG, made here (no imaging library in the probe)."""
    rows = b"".join(b"\x00" + bytes(v for x in range(side) for v in (x * 255 // side, y * 255 // side, 128))
                    for y in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def infer_request(image: bytes) -> tuple[bytes, int]:
    """The body of a KServe v2 HTTP inference with the image as a binary BYTES tensor (Triton's binary tensor
    extension: a JSON header, then the tensor), and the header's length."""
    tensor = struct.pack("<I", len(image)) + image
    header = json.dumps({
        "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(tensor)}}],
        "outputs": [{"name": name, "parameters": {"binary_data": False}} for name in OUTPUTS],
    }).encode()
    return header + tensor, len(header)


def check_live(url: str, timeout: float) -> str | None:
    """None when /v2/health/live answers 200, else why not."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/live", timeout=timeout) as resp:
            return None if resp.status == 200 else f"/v2/health/live answered {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"/v2/health/live answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"/v2/health/live: {getattr(exc, 'reason', exc)}"


def infer_once(url: str, model: str, timeout: float) -> tuple[str, str]:
    """("ok" | "busy" | "error", detail) of one inference."""
    body, header_length = infer_request(probe_png())
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=body, method="POST",
                                 headers={"Content-Type": "application/octet-stream",
                                          "Inference-Header-Content-Length": str(header_length)})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")[:300]
        return ("busy" if exc.code in BUSY_CODES else "error"), f"HTTP {exc.code}: {text}"
    except TimeoutError:
        return "busy", f"no answer within {timeout:g} s"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return "busy", f"no answer within {timeout:g} s"
        return "error", str(exc.reason)
    except (OSError, ValueError) as exc:
        return "error", f"{type(exc).__name__}: {exc}"
    names = {o.get("name") for o in answer.get("outputs", [])}
    missing = [n for n in OUTPUTS if n not in names]
    return ("error", f"the answer lacks {missing}") if missing else ("ok", "")


def probe(url: str, model: str = "retrieval", requests: int = 2, timeout: float = 20.0) -> tuple[bool, str]:
    """(live, what was seen)."""
    url = url.rstrip("/")
    why = check_live(url, min(timeout, 5.0))
    if why:
        return False, why
    results: list[tuple[str, str]] = []
    threads = [threading.Thread(target=lambda: results.append(infer_once(url, model, timeout))) for _ in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [d for v, d in results if v == "error"]
    if errors:
        return False, f"{len(errors)} of {requests} inferences of {model} failed: {errors[0]}"
    busy = [d for v, d in results if v == "busy"]
    if busy:
        return True, f"live but busy: {len(busy)} of {requests} inferences of {model} unanswered ({busy[0]})"
    return True, f"live: {requests} inferences of {model} answered"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="Triton's HTTP endpoint")
    ap.add_argument("--model", default="retrieval")
    ap.add_argument("--requests", type=int, default=2, help="inferences sent at once (one per model instance)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds an inference may take before it counts as busy")
    args = ap.parse_args(argv)
    live, detail = probe(args.url, args.model, args.requests, args.timeout)
    print(detail, file=sys.stderr)
    return 0 if live else 1


if __name__ == "__main__":
    sys.exit(main())
