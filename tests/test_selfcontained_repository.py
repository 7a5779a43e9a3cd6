"""model_repository/ serves with no project code reachable: a copy of it, a server started from
another folder with no PYTHONPATH to the checkout, and a PYTHONPATH whose ``client``/``export``
packages raise on import (the venv's editable install would otherwise still resolve them)."""
from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from client import imaging, spec
from client.triton import RetrievalClient
from deploy.local import LocalTriton, free_port
from export import repository

pytestmark = pytest.mark.integration


def test_a_copy_of_the_repository_serves_without_the_project(built, tmp_path):
    repo = tmp_path / "repo"
    repository.write(repo)
    for m in spec.ONNX_MODELS:
        shutil.copy2(spec.onnx_file(built, m.name), spec.onnx_file(repo, m.name))
    poison = tmp_path / "poison"
    for pkg in ("client", "export", "deploy"):
        (poison / pkg).mkdir(parents=True)
        (poison / pkg / "__init__.py").write_text(f"raise ImportError('the served repository imported the project package {pkg}')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(poison)
    server = LocalTriton(tmp_path / "state", repo)
    st = server.up(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), timeout=240, env=env)
    try:
        with RetrievalClient(st.grpc_url) as client:
            result = client.infer(imaging.encode_jpeg(Image.new("RGB", (200, 120), (30, 160, 90))), "green.jpg")
        assert result.objects and result.image_embedding.shape == (spec.EMBED_DIM,)
        assert result.embedder_id.startswith(f"v{spec.EMBEDDER_VERSION}-")
    finally:
        server.down()
    log = (tmp_path / "state" / "tritonserver.log").read_text()
    assert "the served repository imported" not in log
