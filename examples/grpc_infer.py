"""Calls the Triton ensemble ``retrieval`` over gRPC with plain grpcio: one image in, its objects out.

    python examples/grpc_infer.py photo.jpg [--url HOST:PORT]      (default: $TRITON_URL or 127.0.0.1:8001)

Needs only ``grpcio``, ``protobuf``, ``numpy`` and Triton's generated protocol modules
``service_pb2`` / ``service_pb2_grpc`` (messages and the GRPCInferenceService stub, generated from
Triton's grpc_service.proto). No project code and no ``tritonclient.grpc.InferenceServerClient``:
the request is a ``ModelInferRequest`` built by hand and sent with ``GRPCInferenceServiceStub.ModelInfer``.
Triton publishes the generated modules in the ``tritonclient`` wheel, so they are imported as
``tritonclient.grpc.service_pb2``; importing them runs that package's ``__init__`` (which also defines
the wrapper, unused here). A service that wants no tritonclient at all generates equivalent modules
from Triton's grpc_service.proto and model_config.proto with ``grpcio-tools`` and imports those instead.

Wire format (docs/triton-api.md): the input and the outputs travel as raw little-endian bytes in
``raw_input_contents`` / ``raw_output_contents``; a BYTES element is a 4-byte little-endian length
followed by its bytes; BOOL is one byte per element; outputs come back in the order of
``response.outputs``, which need not be the order asked for.

Prints one line per valid row: its index, score, box (x1, y1, x2, y2 in original pixels), category
and the first embedding values. Exit status 1 with the gRPC status code on stderr when Triton
refuses the request or cannot be reached.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

MODEL = "retrieval"
INPUT = "image_bytes"
OUTPUTS = ("boxes", "scores", "valid", "category", "embeddings", "embedder_id")
# KServe v2 datatype -> numpy dtype of its raw little-endian encoding (BYTES is decoded separately)
NUMPY = {"FP32": np.dtype("<f4"), "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "INT64": np.dtype("<i8")}


def encode_bytes(*elements: bytes) -> bytes:
    """A BYTES tensor's raw contents: every element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def decode_bytes(raw: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(raw):
        (n,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def infer_request(image: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name=INPUT, datatype="BYTES", shape=[1])  # one image: the ensemble has no batch dimension
    request.raw_input_contents.append(encode_bytes(image))
    for name in OUTPUTS:
        request.outputs.add(name=name)
    return request


def infer(stub: service_pb2_grpc.GRPCInferenceServiceStub, image: bytes, timeout: float = 60.0) -> dict[str, np.ndarray]:
    """The outputs by name: numeric tensors as numpy arrays of their shape, BYTES as arrays of bytes."""
    response = stub.ModelInfer(infer_request(image), timeout=timeout)
    result = {}
    for meta, raw in zip(response.outputs, response.raw_output_contents):
        shape = tuple(meta.shape)
        if meta.datatype == "BYTES":
            result[meta.name] = np.array(decode_bytes(raw), dtype=object).reshape(shape)
        else:
            result[meta.name] = np.frombuffer(raw, dtype=NUMPY[meta.datatype]).reshape(shape)
    return result


def report(out: dict[str, np.ndarray]) -> list[str]:
    """One line per valid row; the last row is the whole image, valid only when no detection is."""
    valid = out["valid"]
    whole = len(valid) - 1
    lines = [f"embedder_id {out['embedder_id'].reshape(-1)[0].decode()}",
             f"valid {json.dumps(valid.tolist(), separators=(',', ':'))}"]
    for i in np.flatnonzero(valid):
        box = [round(float(v), 3) for v in out["boxes"][i]]
        emb = [round(float(v), 4) for v in out["embeddings"][i][:4]]
        lines.append(f"row {i}{' (whole image)' if i == whole else ''}"
                     f" score={round(float(out['scores'][i]), 4)} box={json.dumps(box, separators=(',', ':'))}"
                     f" category={json.dumps(out['category'][i].decode(), ensure_ascii=False)}"
                     f" embedding[:4]={json.dumps(emb, separators=(',', ':'))}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", help="an image file (JPEG, PNG, WebP ...), sent as it is")
    ap.add_argument("--url", default=os.environ.get("TRITON_URL", "127.0.0.1:8001"), help="Triton gRPC host:port (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    with open(args.image, "rb") as fh:
        image = fh.read()
    with grpc.insecure_channel(args.url) as channel:
        try:
            out = infer(service_pb2_grpc.GRPCInferenceServiceStub(channel), image, args.timeout)
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print("\n".join(report(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
