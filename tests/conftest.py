from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPO = ROOT / "model_repository"


def models_built() -> bool:
    from client import spec

    return all(spec.onnx_file(REPO, m.name).exists() for m in spec.ONNX_MODELS)


@pytest.fixture(scope="session")
def built():
    if not models_built():
        if os.environ.get("CI"):
            pytest.fail("models are not built: tests/run.sh builds them before pytest")
        pytest.skip("models not built (run python -m export.build)")
    return REPO


@pytest.fixture(scope="session")
def triton(built, tmp_path_factory):
    """A real tritonserver on free loopback ports, stopped at the end of the session."""
    from deploy.local import LocalTriton, free_port

    server = LocalTriton(tmp_path_factory.mktemp("triton"), built)
    st = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=240)
    yield st
    server.down()


@pytest.fixture(scope="session")
def client(triton):
    from client.triton import RetrievalClient

    with RetrievalClient(triton.grpc_url) as c:
        yield c


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """Generated catalog (drawn products only: no external files) and query scenes with truth."""
    from export.demo_data import write_demo

    out = tmp_path_factory.mktemp("demo")
    write_demo(out, photoset=None, queries=6, seed=7, products_per_query=3)
    return out
